"""Ringing a channel-layer group from synchronous code (services, on-commit callbacks).

In a request thread of Daphne (a ``sync_to_async`` thread) ``async_to_sync`` runs the send
on the server's own event loop, where the layer's connections live: that stays as is.
Elsewhere (a Celery worker, a management command) ``async_to_sync`` would make a new
event loop for every call, and the Redis channel layer opens a new connection per loop:
a connect and a close per push. There the send goes to one event loop per process, kept
in a daemon thread, so its connections are reused. The in-memory layer only works inside
one process's loop, so it always takes the first path.
"""

from __future__ import annotations

import asyncio
import os
import threading
from typing import Any

from asgiref.sync import SyncToAsync, async_to_sync
from channels.layers import InMemoryChannelLayer, get_channel_layer

#: How long a push may take before the caller gives up waiting (the store is the truth;
#: a lost doorbell is made up by the next resume).
SEND_TIMEOUT_SECONDS = 5.0

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_loop_pid: int | None = None


def _background_loop() -> asyncio.AbstractEventLoop:
    global _loop, _loop_pid
    with _lock:
        if _loop is None or _loop_pid != os.getpid() or _loop.is_closed():
            loop = asyncio.new_event_loop()
            threading.Thread(
                target=loop.run_forever, name="channel-layer-sends", daemon=True
            ).start()
            _loop, _loop_pid = loop, os.getpid()
        return _loop


def _server_loop_running() -> bool:
    """Whether this thread was lent by a running server loop (``sync_to_async``)."""
    loop = getattr(SyncToAsync.threadlocal, "main_event_loop", None)
    pid = getattr(SyncToAsync.threadlocal, "main_event_loop_pid", None)
    return loop is not None and pid == os.getpid() and loop.is_running()


def group_send(group: str, message: dict[str, Any]) -> None:
    """Send ``message`` to ``group``; raises what the layer raises (callers log it)."""
    group_send_many([(group, message)])


def group_send_many(sends: list[tuple[str, dict[str, Any]]]) -> None:
    """Send each ``(group, message)`` in order, with one trip to the event loop for all
    of them (each trip from a request thread costs a thread hop each way)."""
    layer = get_channel_layer()
    if layer is None or not sends:
        return

    async def send_all() -> None:
        for group, message in sends:
            await layer.group_send(group, message)

    if isinstance(layer, InMemoryChannelLayer) or _server_loop_running():
        async_to_sync(send_all)()
        return
    future = asyncio.run_coroutine_threadsafe(send_all(), _background_loop())
    future.result(timeout=SEND_TIMEOUT_SECONDS)
