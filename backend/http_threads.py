"""Django's ASGI handler with the synchronous part of each HTTP request run on one of a
fixed set of long-lived threads.

Django's own ``ASGIHandler`` enters a fresh ``asgiref.sync.ThreadSensitiveContext`` per
request, and asgiref starts a new thread for each such context. Sync views therefore do
run concurrently, but every request starts from an empty thread: whatever a library
keeps per thread is built again each time (Celery's result backend with its Redis
client, the thread's database connection wrapper). Here each request borrows one of
``HTTP_SYNC_THREADS`` single-thread executors for its whole lifetime (asgiref's
``ThreadSensitiveContext(executor=...)``), so at most that many sync views run at once,
each on a thread that is reused, and the per-thread state survives between requests.

Correctness is as with Django's handler: one request's sync code runs on one thread (a
request's database transaction never changes thread), and requests never share a thread
at the same time (an executor has one worker; a request cancelled while its sync code
still runs keeps the thread busy until that code returns, the next request queues behind
it). Connections still go back to the pool at the end of each request.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from asgiref.sync import ThreadSensitiveContext
from django.core.handlers.asgi import ASGIHandler


class PooledThreadsASGIHandler(ASGIHandler):
    def __init__(self, *, threads: int) -> None:
        super().__init__()
        if threads < 1:
            raise ValueError("threads must be at least 1")
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
