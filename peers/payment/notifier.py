"""The gateway's notification sender: one asyncio task on the server's event loop.

Each turn it completes the refunds whose delay is over (which queues their
``REFUND.SUCCESS``), starts a delivery for every notification that is due, then sleeps
until the next one is due (at most a second, so that it also notices rows another turn
did not know about). Deliveries run concurrently, each notification at most once at a
time, through one pooled ``httpx.AsyncClient`` (timeout 5 s). All state is in the store:
a peer restarted mid-way resumes from the rows.

Daphne does not speak the ASGI lifespan protocol, so the task is started by whoever comes
first: ``python -m peers.payment`` once the port listens, the first request, or a
lifespan ``startup`` under a server that sends one.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
import traceback
from typing import Protocol

import httpx

from peers.payment.store import Notification, Store

MAX_SLEEP_SECONDS = 1.0
DUE_BATCH = 100


class Deliverer(Protocol):
    store: Store

    def complete_due_refunds(self, now: float) -> None: ...

    async def deliver(self, note: Notification, client: httpx.AsyncClient) -> None: ...


class Notifier:
    def __init__(self, peer: Deliverer, *, timeout: float = 5.0) -> None:
        self.peer = peer
        self.timeout = timeout
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._client: httpx.AsyncClient | None = None
        self._in_flight: set[int] = set()
        self._deliveries: set[asyncio.Task[None]] = set()

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def ensure_started(self) -> None:
        """Start the sender on the running loop unless it runs already."""
        if self.running:
            return
        loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._client = httpx.AsyncClient(
            timeout=self.timeout,
            trust_env=False,
            follow_redirects=False,
            limits=httpx.Limits(max_connections=50, max_keepalive_connections=20),
            headers={"User-Agent": "payment-peer/1 (notifications)"},
        )
        self._task = loop.create_task(self._run(), name="payment-peer-notifier")

    def wake(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()
        for task in list(self._deliveries):
            task.cancel()

    async def stop(self) -> None:
        self.cancel()
        tasks = [t for t in (self._task, *self._deliveries) if t is not None]
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._client is not None:
            await self._client.aclose()
        self._task, self._client = None, None

    async def flush(self) -> int:
        """Send every held notification now, newest first, one after the other (each
        first delivery is awaited, so they arrive in that order); failures are then
        retried on the usual schedule. Answers how many there were."""
        self.ensure_started()
        held = self.peer.store.release_held(time.time())
        self._in_flight.update(note.seq for note in held)
        try:
            for note in held:
                try:
                    await self.peer.deliver(note, self._http())
                finally:
                    self._in_flight.discard(note.seq)
        finally:
            self._in_flight.difference_update(note.seq for note in held)
            self.wake()
        return len(held)

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            raise RuntimeError("the notifier is not started")
        return self._client

    async def _run(self) -> None:
        wake = self._wake
        if wake is None:
            raise RuntimeError("the notifier is not started")
        while True:
            wake.clear()
            try:
                delay = self._turn()
            except Exception:
                traceback.print_exc(file=sys.stderr)
                delay = MAX_SLEEP_SECONDS
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), timeout=delay)
            else:
                await asyncio.sleep(0)

    def _turn(self) -> float:
        now = time.time()
        self.peer.complete_due_refunds(now)
        for note in self.peer.store.due_notifications(now, DUE_BATCH):
            if note.seq in self._in_flight:
                continue
            self._in_flight.add(note.seq)
            task = asyncio.get_running_loop().create_task(self._deliver(note))
            self._deliveries.add(task)
            task.add_done_callback(self._deliveries.discard)
        upcoming = self.peer.store.next_wakeup(self._in_flight)
        if upcoming is None:
            return MAX_SLEEP_SECONDS
        return min(MAX_SLEEP_SECONDS, max(0.0, upcoming - time.time()))

    async def _deliver(self, note: Notification) -> None:
        try:
            await self.peer.deliver(note, self._http())
        except asyncio.CancelledError:
            raise
        except Exception:
            traceback.print_exc(file=sys.stderr)
        finally:
            self._in_flight.discard(note.seq)
            self.wake()
