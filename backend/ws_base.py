"""What every WebSocket consumer of the project shares: JSON frames with a size limit,
a per-connection rate limit, error frames, and refusals that reach the client as the
documented close codes (accept first, then close: a refused handshake would hide them)."""

from __future__ import annotations

import json
import re
import time
from typing import Any

from channels.consumer import get_handler_name
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings

#: A refused frame's ``client_msg_id`` (CONTRACT 3), read without parsing the frame: one
#: too large or over the rate is not parsed. A UUID's characters, near the frame's start
#: (clients write it before the text); not found, the error goes without it.
_CLIENT_MSG_ID = re.compile(r'"client_msg_id"\s*:\s*"([0-9A-Fa-f-]{32,36})"')
_CLIENT_MSG_ID_WITHIN = 4096


def _client_msg_id_of(text_data: str | None) -> str | None:
    if text_data is None:
        return None
    found = _CLIENT_MSG_ID.search(text_data, 0, _CLIENT_MSG_ID_WITHIN)
    return found.group(1) if found else None


class TokenBucket:
    __slots__ = ("capacity", "rate", "stamp", "tokens")

    def __init__(self, rate: float, capacity: float | None = None) -> None:
        self.rate = rate
        self.capacity = capacity if capacity is not None else rate
        self.tokens = self.capacity
        self.stamp = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class JsonConsumer(AsyncWebsocketConsumer):
    """Subclasses implement ``on_frame(frame)``; frames are JSON objects with ``type``.

    Every database access of these consumers goes through ``database_sync_to_async``,
    which closes stale connections before and after each call in the thread that runs
    it.

    A consumer lives as long as its socket, mostly idle, so its own state is kept small:
    attributes in ``__slots__`` (Channels' own stay in the instance dict, which then
    stays at its smallest size), no per-instance ``groups`` list (these consumers join
    their groups themselves), and the rate-limit bucket made at the first frame (it
    starts full either way)."""

    __slots__ = ("bucket",)
    bucket: TokenBucket
    groups: Any = ()

    async def dispatch(self, message: dict[str, Any]) -> None:
        """Channels (4.2+) hops to its database thread before *every* event to close old
        connections (``aclose_old_connections``): for a chat, a thread round trip per
        frame received and per push delivered, for a thread these consumers never use
        outside ``database_sync_to_async``, which does the same cleanup itself. The
        handler is called directly instead."""
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    async def refuse(self, code: int) -> None:
        await self.accept()
        await self.close(code=code)

    async def send_json(self, content: dict[str, Any]) -> None:
        await self.send(text_data=json.dumps(content, ensure_ascii=False))

    async def send_error(self, code: str, detail: str, client_msg_id: Any = None) -> None:
        frame: dict[str, Any] = {"type": "error", "code": code, "detail": detail}
        if client_msg_id is not None:
            frame["client_msg_id"] = client_msg_id
        await self.send_json(frame)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        raw = text_data if text_data is not None else bytes_data
        size = len(raw.encode() if isinstance(raw, str) else (raw or b""))
        if size > settings.CHAT_MAX_FRAME_BYTES:
            await self.send_error(
                "frame_too_large",
                f"Frames are limited to {settings.CHAT_MAX_FRAME_BYTES} bytes.",
                _client_msg_id_of(text_data),
            )
            return
        try:
            bucket = self.bucket
        except AttributeError:
            bucket = self.bucket = TokenBucket(float(settings.CHAT_MAX_FRAMES_PER_SECOND))
        if not bucket.take():
            await self.send_error(
                "rate_limited",
                f"At most {settings.CHAT_MAX_FRAMES_PER_SECOND} frames per second; this one "
                "was dropped.",
                _client_msg_id_of(text_data),
            )
            return
        if text_data is None:
            await self.send_error("malformed_frame", "Send JSON as text frames.")
            return
        try:
            frame = json.loads(text_data)
        except json.JSONDecodeError:
            frame = None
        if not isinstance(frame, dict) or not isinstance(frame.get("type"), str):
            await self.send_error(
                "malformed_frame", "A frame is a JSON object with a string 'type'."
            )
            return
        if frame["type"] == "ping":
            await self.send_json({"type": "pong"})
            await self.on_ping()
            return
        await self.on_frame(frame)

    async def on_ping(self) -> None:
        """Clients ping to keep the connection (and their presence) alive."""

    async def on_frame(self, frame: dict[str, Any]) -> None:
        await self.send_error("unknown_type", f"Unknown frame type {frame['type']!r}.")
