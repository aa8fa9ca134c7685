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
import logging
import os
import threading
from collections import deque
from typing import Any

from asgiref.sync import SyncToAsync, async_to_sync
from channels.layers import InMemoryChannelLayer, get_channel_layer

logger = logging.getLogger(__name__)

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


class _Sender:
    """Sends handed over by request threads, one after another on the server's loop, in
    the order they were handed over (``call_soon_threadsafe`` keeps it)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.pending: deque[tuple[Any, list[tuple[str, dict[str, Any]]]]] = deque()
        #: The drain while it runs (held: the loop keeps only a weak reference to a task).
        self.draining: asyncio.Task[None] | None = None

    def hand_over(self, layer: Any, sends: list[tuple[str, dict[str, Any]]]) -> None:
        """On the loop: queue the sends, and start the one drain if it is not running."""
        self.pending.append((layer, sends))
        if self.draining is None:
            self.draining = self.loop.create_task(self._drain())

    async def _drain(self) -> None:
        try:
            while self.pending:
                layer, sends = self.pending.popleft()
                try:
                    for group, message in sends:
                        await layer.group_send(group, message)
                except Exception:  # the store is the truth; clients catch up on resume
                    logger.warning("channel-layer send failed", exc_info=True)
        finally:
            self.draining = None


_senders: dict[int, _Sender] = {}


def group_send_soon(sends: list[tuple[str, dict[str, Any]]]) -> None:
    """``group_send_many`` without waiting, from a request thread of a server on a
    cross-process layer (Redis): the sends are handed to the server's event loop and go
    after the response, in the order handed over by every thread of the process, and a
    failure is logged there. Elsewhere (a worker, a command, the in-memory layer) this is
    ``group_send_many``. For doorbells whose message the store already holds."""
    layer = get_channel_layer()
    if layer is None or not sends:
        return
    if isinstance(layer, InMemoryChannelLayer) or not _server_loop_running():
        group_send_many(sends)
        return
    loop: asyncio.AbstractEventLoop = SyncToAsync.threadlocal.main_event_loop
    with _lock:
        sender = _senders.get(id(loop))
        if sender is None or sender.loop is not loop:
            sender = _senders[id(loop)] = _Sender(loop)
    try:
        loop.call_soon_threadsafe(sender.hand_over, layer, sends)
    except RuntimeError:  # the server is stopping and its loop closed: nobody to tell
        logger.warning("channel-layer send dropped: the event loop is closed")
