"""Django's ASGI handler with the synchronous part of each HTTP request run in one go on
one of a fixed set of long-lived threads.

Django's own ``ASGIHandler`` has three costs for an application whose views and
middleware are synchronous:

- It enters a fresh ``asgiref.sync.ThreadSensitiveContext`` per request, and asgiref
  starts a new thread for each such context. Whatever a library keeps per thread is
  built again for every request (Celery's result backend with its Redis client, the
  thread's database connection wrapper). Here each request borrows one of
  ``HTTP_SYNC_THREADS`` single-thread executors for its lifetime (asgiref's
  ``ThreadSensitiveContext(executor=...)``): at most that many requests run their sync
  code at once, each on a thread that is reused.
- It runs the middleware chain in async mode, so each synchronous middleware hook and
  the view are handed to the thread and back one by one (a dozen hops per request).
  Here the chain is loaded in sync mode, as under WSGI, and the whole of
  ``get_response`` (middleware and view) runs in one call on the request's thread. An
  async view still works: Django's sync path runs it with ``async_to_sync`` on the
  server's event loop.
- It sends ``request_started`` and closes the response (``request_finished``) with a
  trip to the thread each. Here both go in that same call (a streamed response is
  closed after it is sent), so a request makes one trip, and the database connection
  goes back to the pool before the response is written.

Correctness is as with Django's handler: one request's sync code runs on one thread (a
request's database transaction never changes thread), and requests never share a thread
at the same time (an executor has one worker; a request cancelled while its sync code
still runs keeps the thread busy until that code returns, the next request queues behind
it). Connections still go back to the pool at the end of each request.
"""

from __future__ import annotations

import asyncio
import contextlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from asgiref.sync import ThreadSensitiveContext, sync_to_async
from django.core import signals
from django.core.exceptions import RequestAborted
from django.core.handlers import base
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.http import FileResponse, HttpRequest, HttpResponseBase
from django.urls import set_script_prefix


class PooledThreadsASGIHandler(ASGIHandler):
    def __init__(self, *, threads: int) -> None:
        if threads < 1:
            raise ValueError("threads must be at least 1")
        # ASGIHandler.__init__ would load the middleware in async mode; load it once, sync.
        base.BaseHandler.__init__(self)
        self.load_middleware(is_async=False)
        self._executors = [
            ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"django-sync-{n}")
            for n in range(threads)
        ]
        self._idle: asyncio.Queue[ThreadPoolExecutor] | None = None

    def _queue(self) -> asyncio.Queue[ThreadPoolExecutor]:
        # Made on first use, inside the server's event loop.
        if self._idle is None:
            self._idle = asyncio.Queue()
            for executor in self._executors:
                self._idle.put_nowait(executor)
        return self._idle

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")
        idle = self._queue()
        executor = await idle.get()
        try:
            async with ThreadSensitiveContext(executor=executor):
                await self.handle(scope, receive, send)
        finally:
            idle.put_nowait(executor)

    async def handle(self, scope: Any, receive: Any, send: Any) -> None:
        """``ASGIHandler.handle`` (Django 5.2) with one trip to the request's thread
        instead of three: ``request_started``, the middleware and the view, and, for a
        response that is not streamed, its ``close`` (``request_finished``, which gives
        the database connection back) run in one call. A streamed response is closed
        after it is sent, as Django does; so is a request cancelled by a disconnect.
        (Django's ``run_get_response``, which runs the chain in async mode, is not used.)"""
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        set_script_prefix(get_script_prefix(scope))
        request, error_response = self.create_request(scope, body_file)
        if request is None:
            assert error_response is not None  # noqa: S101 - Django returns one or the other
            await signals.request_started.asend(sender=self.__class__, scope=scope)
            body_file.close()
            await self.send_response(error_response, send)
            await sync_to_async(error_response.close)()
            return

        async def process_request() -> HttpResponseBase:
            response = await self._respond(request, scope)
            # The client may go away while it is being sent.
            with contextlib.suppress(asyncio.CancelledError):
                await self.send_response(response, send)
            return response

        # As Django: the disconnect listener first, so it cannot keep the request's task
        # from being cancelled.
        tasks: list[asyncio.Task[Any]] = [
            asyncio.create_task(self.listen_for_disconnect(receive)),
            asyncio.create_task(process_request()),
        ]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            if task.done():
                try:
                    task.result()
                except RequestAborted:
                    pass
                except AssertionError:
                    body_file.close()
                    raise
            else:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        try:
            response: HttpResponseBase = tasks[1].result()
        except asyncio.CancelledError:
            await signals.request_finished.asend(sender=self.__class__)
        else:
            if response.streaming:
                await sync_to_async(response.close)()
        body_file.close()

    async def _respond(self, request: HttpRequest, scope: Any) -> HttpResponseBase:
        def respond() -> HttpResponseBase:
            signals.request_started.send(sender=self.__class__, scope=scope)
            response = self.get_response(request)
            response._handler_class = self.__class__  # type: ignore[attr-defined]
            if not response.streaming:
                response.close()  # its body is in hand; the connection goes back now
            return response

        response = await sync_to_async(respond, thread_sensitive=True)()
        if isinstance(response, FileResponse):
            response.block_size = self.chunk_size
        return response
