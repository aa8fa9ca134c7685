"""The channel layer of the embedded default (one process, no Redis).

Channels' ``InMemoryChannelLayer`` sweeps every channel's queue and every group's
members for expired entries before each ``receive`` and each ``group_send``: a cost
that grows with the open sockets and is paid per message. With 2,000 sockets (1,000
consultations) the sweeps cost more than the rest of a message's delivery, for the
relay and the chat alike. Here the sweep runs at most once per ``sweep_interval``
seconds; what it removes (messages older than ``expiry``, memberships older than
``group_expiry``) is removed at most that much later.

``group_expiry`` defaults to ten years instead of Channels' one day: in one process a
socket leaves its groups when it closes (``disconnect`` always runs), so there is no
crashed peer to forget, and a doctor's console left open overnight must not stop
hearing its queue after 24 hours. Everything else is Channels' layer unchanged.
Measured in docs/chat.md ("The embedded default").
"""

from __future__ import annotations

import time
from typing import Any

from channels.layers import InMemoryChannelLayer


class SweepingInMemoryChannelLayer(InMemoryChannelLayer):
    def __init__(
        self,
        *args: Any,
        sweep_interval: float = 1.0,
        group_expiry: int = 10 * 365 * 86400,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, group_expiry=group_expiry, **kwargs)
        self.sweep_interval = sweep_interval
        self._swept_at = 0.0

    def _clean_expired(self) -> None:
        now = time.monotonic()
        if now - self._swept_at < self.sweep_interval:
            return
        self._swept_at = now
        super()._clean_expired()

    async def flush(self) -> None:
        await super().flush()
        self._swept_at = 0.0
