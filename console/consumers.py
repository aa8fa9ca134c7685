"""``/ws/console/``: the console's live channel for doctors, pharmacists, regulators and
administrators. Each signed-in account joins its own group; the domain apps push queue
changes to it after their transactions commit (consultations, prescriptions)."""

from __future__ import annotations

from typing import Any

from backend.identity.services import CONSOLE_ROLES
from backend.ws_auth import CLOSE_FORBIDDEN, CLOSE_NOT_AUTHENTICATED
from backend.ws_base import JsonConsumer


def account_group(user_id: Any) -> str:
    return f"console.user.{user_id}"


class ConsoleConsumer(JsonConsumer):
    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.refuse(CLOSE_NOT_AUTHENTICATED)
            return
        if user.role not in CONSOLE_ROLES:
            await self.refuse(CLOSE_FORBIDDEN)
            return
        self.group = account_group(user.pk)
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        await self.send_json({"type": "hello", "user": str(user.pk), "role": user.role})

    async def disconnect(self, code: int) -> None:
        group = getattr(self, "group", None)
        if group:
            await self.channel_layer.group_discard(group, self.channel_name)

    async def console_event(self, event: dict[str, Any]) -> None:
        """A push from a domain app: ``{"type": "console.event", "frame": {...}}``."""
        await self.send_json(event["frame"])
