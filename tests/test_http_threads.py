"""HTTP requests under Daphne run their sync code on a fixed set of reused threads
(``backend.http_threads``), one request at a time per thread, not a new thread each."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from asgiref.testing import ApplicationCommunicator
from channels.testing import HttpCommunicator
from django.core.signals import request_finished, request_started
from django.http import HttpResponse, StreamingHttpResponse
from django.urls import path

from backend.http_threads import PooledThreadsASGIHandler

pytestmark = pytest.mark.django_db(transaction=True)


class _Threads:
    """Which thread ran each request's sync part (Django's request_started signal is
    sent there)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.idents: list[int] = []

    def started(self, **kwargs: Any) -> None:
        with self.lock:
            self.idents.append(threading.get_ident())


async def _get(application: Any, path: str) -> int:
    communicator = HttpCommunicator(application, "GET", path, headers=[(b"host", b"localhost")])
    response = await communicator.get_response(timeout=10)
    await communicator.wait(timeout=10)  # the request finishes (its connection goes back)
    status: int = response["status"]
    return status


async def test_requests_share_a_fixed_set_of_threads() -> None:
    handler = PooledThreadsASGIHandler(threads=2)
    seen = _Threads()
    request_started.connect(seen.started, weak=False)
    try:
        statuses = await asyncio.gather(*(_get(handler, "/api/no-such-thing") for _ in range(8)))
        for _ in range(4):
            statuses.append(await _get(handler, "/api/no-such-thing"))
    finally:
        request_started.disconnect(seen.started)
    assert statuses == [404] * 12
    assert len(seen.idents) == 12
    # Reused, never a thread per request; one worker each, so at most two at once.
    assert len(set(seen.idents)) <= 2
    assert threading.get_ident() not in seen.idents  # not the event loop's thread


def test_at_least_one_thread() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        PooledThreadsASGIHandler(threads=0)


async def test_an_async_view_runs_and_its_database_call_reaches_the_request_thread() -> None:
    """/healthz is an async view that calls the database thread-sensitively: under the
    sync middleware chain it runs on the event loop, its database call on the request's
    thread (no deadlock, one thread)."""
    handler = PooledThreadsASGIHandler(threads=1)
    communicator = HttpCommunicator(handler, "GET", "/healthz", headers=[(b"host", b"localhost")])
    response = await communicator.get_response(timeout=20)
    await communicator.wait(timeout=10)
    body = json.loads(response["body"])
    assert body["checks"]["database"] == "ok", body
    assert response["status"] == (200 if body["status"] == "ok" else 503)


# --- One trip to the request's thread per request ---------------------------------------------


def _plain(request: Any) -> HttpResponse:
    return HttpResponse(b"plain")


def _streamed(request: Any) -> StreamingHttpResponse:
    def chunks() -> Iterator[bytes]:
        for n in range(3):
            _EVENTS.append(("chunk", threading.get_ident()))
            yield f"part{n};".encode()

    return StreamingHttpResponse(chunks())


urlpatterns = [path("plain", _plain), path("streamed", _streamed)]
_EVENTS: list[tuple[str, int]] = []


class _CountingExecutor(ThreadPoolExecutor):
    """The request thread's executor, counting the calls handed to it."""

    def __init__(self) -> None:
        super().__init__(max_workers=1, thread_name_prefix="counted")
        self.calls = 0

    def submit(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return super().submit(*args, **kwargs)


def _signals() -> tuple[Any, Any]:
    def started(**kwargs: Any) -> None:
        _EVENTS.append(("started", threading.get_ident()))

    def finished(**kwargs: Any) -> None:
        _EVENTS.append(("finished", threading.get_ident()))

    request_started.connect(started, weak=False)
    request_finished.connect(finished, weak=False)
    return started, finished


async def _served(path: str, settings: Any) -> tuple[dict[str, Any], int]:
    settings.ROOT_URLCONF = __name__
    handler = PooledThreadsASGIHandler(threads=1)
    executor = _CountingExecutor()
    handler._executors = [executor]
    _EVENTS.clear()
    started, finished = _signals()
    try:
        communicator = ApplicationCommunicator(
            handler,
            {
                "type": "http",
                "http_version": "1.1",
                "method": "GET",
                "path": path,
                "query_string": b"",
                "headers": [(b"host", b"localhost")],
            },
        )
        await communicator.send_input({"type": "http.request", "body": b""})
        start = await communicator.receive_output(timeout=10)
        body = b""
        while True:
            message = await communicator.receive_output(timeout=10)
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        await communicator.wait(timeout=10)
        response = {"status": start["status"], "body": body}
    finally:
        request_started.disconnect(started)
        request_finished.disconnect(finished)
    return response, executor.calls


async def test_a_request_makes_one_trip_to_its_thread_with_both_signals_there(settings) -> None:
    response, calls = await _served("/plain", settings)
    assert response["status"] == 200
    assert response["body"] == b"plain"
    assert calls == 1  # request_started, middleware and view, close: one call
    assert [event for event, _ in _EVENTS] == ["started", "finished"]
    threads = {ident for _, ident in _EVENTS}
    assert len(threads) == 1
    assert threading.get_ident() not in threads  # not the event loop's thread


@pytest.mark.filterwarnings("ignore:StreamingHttpResponse must consume synchronous iterators")
async def test_a_streamed_response_is_closed_after_its_body_is_sent(settings) -> None:
    response, calls = await _served("/streamed", settings)
    assert response["status"] == 200
    assert response["body"] == b"part0;part1;part2;"
    # The view; the sync iterator drained (Django's own trip); the close, once it is sent.
    assert calls == 3
    assert [event for event, _ in _EVENTS] == ["started", "chunk", "chunk", "chunk", "finished"]
