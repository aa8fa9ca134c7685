"""The baseline: the same WebSocket protocol relayed through Channels and Daphne with no
authentication, no database and no persistence. The chat bench runs it beside the real
consultation socket, in the same invocation, and prints the ratio."""

from __future__ import annotations

import json
import os
from typing import Any

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "backend.settings")
os.environ.setdefault("DEMO_MODE", "1")

import django

django.setup()

from channels.generic.websocket import AsyncWebsocketConsumer
from channels.routing import ProtocolTypeRouter, URLRouter
from django.urls import path


class RelayConsumer(AsyncWebsocketConsumer):
    async def connect(self) -> None:
        self.room = f"relay.{self.scope['url_route']['kwargs']['room']}"
        self.seq = 0
        await self.channel_layer.group_add(self.room, self.channel_name)
        await self.accept()
        await self.send(text_data=json.dumps({"type": "sync", "messages": []}))

    async def disconnect(self, code: int) -> None:
        await self.channel_layer.group_discard(self.room, self.channel_name)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        frame = json.loads(text_data or "{}")
        if frame.get("type") != "message.send":
            return
        self.seq += 1
        await self.send(
            text_data=json.dumps(
                {"type": "message.ack", "client_msg_id": frame["client_msg_id"], "seq": self.seq}
            )
        )
        await self.channel_layer.group_send(
            self.room,
            {
                "type": "relay.message",
                "sender": self.channel_name,
                "message": {"seq": self.seq, "text": frame.get("text", "")},
            },
        )

    async def relay_message(self, event: dict[str, Any]) -> None:
        await self.send(text_data=json.dumps({"type": "message.new", "message": event["message"]}))


application = ProtocolTypeRouter(
    {
        "websocket": URLRouter([path("ws/relay/<str:room>/", RelayConsumer.as_asgi())]),
    }
)
