"""HTTP requests under Daphne run their sync code on a fixed set of reused threads
(``backend.http_threads``), one request at a time per thread, not a new thread each."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import pytest
from channels.testing import HttpCommunicator
from django.core.signals import request_started

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
