"""``/ws/console/``: the console's live channel for doctors, pharmacists, regulators and
administrators. Each signed-in account joins its own group; the domain apps push queue
changes to it after their transactions commit (consultations, prescriptions)."""

from __future__ import annotations

import json
from typing import Any

from channels.generic.websocket import AsyncWebsocketConsumer

from backend.identity.services import CONSOLE_ROLES
from backend.ws_auth import CLOSE_FORBIDDEN, CLOSE_NOT_AUTHENTICATED

MAX_FRAME_BYTES = 64 * 1024


def account_group(user_id: Any) -> str:
    return f"console.user.{user_id}"


class ConsoleConsumer(AsyncWebsocketConsumer):
    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_NOT_AUTHENTICATED)
            return
        if user.role not in CONSOLE_ROLES:
            await self.close(code=CLOSE_FORBIDDEN)
            return
        self.group = account_group(user.pk)
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        await self.send_json({"type": "hello", "user": str(user.pk), "role": user.role})

    async def disconnect(self, code: int) -> None:
        group = getattr(self, "group", None)
        if group:
            await self.channel_layer.group_discard(group, self.channel_name)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if text_data is None or len(text_data.encode()) > MAX_FRAME_BYTES:
            await self.send_json(
                {
                    "type": "error",
                    "code": "frame_invalid",
                    "detail": "Send JSON text frames of at most 64 KiB.",
                }
            )
            return
        try:
            frame = json.loads(text_data)
        except json.JSONDecodeError:
            frame = None
        if not isinstance(frame, dict) or not isinstance(frame.get("type"), str):
            await self.send_json(
                {
                    "type": "error",
                    "code": "frame_invalid",
                    "detail": "A frame is a JSON object with a string 'type'.",
                }
            )
            return
        if frame["type"] == "ping":
            await self.send_json({"type": "pong"})
            return
        await self.send_json(
            {
                "type": "error",
                "code": "unknown_type",
                "detail": f"Unknown frame type {frame['type']!r}.",
            }
        )

    async def console_event(self, event: dict[str, Any]) -> None:
        """A push from a domain app: ``{"type": "console.event", "frame": {...}}``."""
        await self.send_json(event["frame"])

    async def send_json(self, content: dict[str, Any]) -> None:
        await self.send(text_data=json.dumps(content, ensure_ascii=False))
