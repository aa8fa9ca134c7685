"""``/ws/consultations/{id}/?after_seq=N``: the chat of one consultation (CONTRACT
section 3).

Delivery guarantee: every stored message with ``seq > after_seq`` reaches the client
exactly once and in ``seq`` order. The consumer joins the consultation's group *before*
reading the backlog, remembers the highest seq it has delivered, drops pushes it has
already sent, and fills any gap in the pushes from the database — so a push lost by
the channel layer, or one that raced the backlog read, changes nothing. See
docs/chat.md.
"""

from __future__ import annotations

import functools
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from django.conf import settings
from django.db import connection

from backend.api.problems import DomainError
from backend.audit.services import READ_AUDITED_ROLES, RequestMeta, audit_access
from backend.notifications.services import presence_enter, presence_heartbeat, presence_leave
from backend.ws_auth import CLOSE_FORBIDDEN, CLOSE_NOT_AUTHENTICATED, CLOSE_NOT_FOUND
from backend.ws_base import JsonConsumer
from consultations import messaging
from consultations.models import Consultation
from consultations.push import consultation_group
from consultations.selectors import consultation_participant_ids, messages_after
from consultations.serializers import consultation_state


def _open_sync(consultation_id: str, user_id: str) -> tuple[int, dict[str, Any] | None]:
    consultation = (
        Consultation.objects.select_related("profile", "department", "doctor__user")
        .filter(pk=consultation_id)
        .first()
    )
    if consultation is None:
        return CLOSE_NOT_FOUND, None
    if user_id not in consultation_participant_ids(consultation=consultation):
        return CLOSE_FORBIDDEN, None
    return 0, consultation_state(consultation)


def _backlog_sync(consultation_id: str, after_seq: int) -> list[dict[str, Any]]:
    consultation = Consultation(pk=consultation_id)
    payloads: list[dict[str, Any]] = []
    while True:
        batch = messages_after(consultation=consultation, after_seq=after_seq, limit=1000)
        payloads.extend(messaging.message_payload(m) for m in batch)
        if len(batch) < 1000:
            return payloads
        after_seq = batch[-1].seq


@functools.cache
def _message_writer() -> Any:
    """Message writes of different consultations run in parallel on PostgreSQL (the row
    lock orders those of one consultation, and this socket awaits each in turn). SQLite
    allows one writer at a time anyway, so there they stay on the single database thread."""
    if connection.vendor == "sqlite":
        return database_sync_to_async(messaging.message_send)
    return database_sync_to_async(
        _message_send_keeping_connection, thread_sensitive=False, executor=CHAT_DB_EXECUTOR
    )


def _message_send_keeping_connection(**kwargs: Any) -> messaging.Sent:
    try:
        return messaging.message_send(**kwargs)
    finally:
        connection.close_at = None


_open = database_sync_to_async(_open_sync)
_backlog = database_sync_to_async(_backlog_sync)


#: Threads for message writes: each mostly waits on the database's commit, so more
#: threads than cores keep the database busy (it groups concurrent commits).
CHAT_DB_EXECUTOR = ThreadPoolExecutor(
    max_workers=settings.CHAT_DB_THREADS, thread_name_prefix="chat-db"
)

#: Presence heartbeats are written at most this often (clients ping more often).
HEARTBEAT_EVERY_SECONDS = 20


def _int(value: Any, default: int = 0) -> int:
    try:
        return max(0, int(value))
    except (TypeError, ValueError):
        return default


class ConsultationConsumer(JsonConsumer):
    __slots__ = ("consultation_id", "delivered_seq", "group", "heartbeat_at", "user_id")
    consultation_id: str
    delivered_seq: int
    group: str
    heartbeat_at: float
    user_id: str

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.refuse(CLOSE_NOT_AUTHENTICATED)
            return
        self.consultation_id = str(self.scope["url_route"]["kwargs"]["consultation_id"])
        self.user_id = str(user.pk)
        try:
            uuid.UUID(self.consultation_id)
        except ValueError:
            await self.refuse(CLOSE_NOT_FOUND)
            return
        code, state = await _open(self.consultation_id, self.user_id)
        if code:
            await self.refuse(code)
            return
        query = parse_qs(self.scope.get("query_string", b"").decode())
        after_seq = _int(query.get("after_seq", ["0"])[0])
        self.group = consultation_group(self.consultation_id)
        # Join first, then read: a message committed in between is either in the backlog
        # or arrives as a push (and is dropped if it was in both).
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        await database_sync_to_async(presence_enter)(
            channel_name=self.channel_name, user=user, topic=f"consultation:{self.consultation_id}"
        )
        self.heartbeat_at = time.monotonic()
        backlog = await _backlog(self.consultation_id, after_seq)
        if user.role in READ_AUDITED_ROLES:  # the chat as read by staff (DOMAIN rule 12)
            await database_sync_to_async(audit_access)(
                actor=user,
                object_type="consultation",
                object_id=self.consultation_id,
                what="messages_viewed",
                after={"after_seq": after_seq, "messages": len(backlog), "via": "websocket"},
                meta=RequestMeta.from_scope(self.scope),
            )
        self.delivered_seq = backlog[-1]["seq"] if backlog else after_seq
        await self.send_json({"type": "sync", "consultation": state, "messages": backlog})

    async def disconnect(self, code: int) -> None:
        group = getattr(self, "group", None)
        if group:
            await self.channel_layer.group_discard(group, self.channel_name)
            await database_sync_to_async(presence_leave)(channel_name=self.channel_name)

    async def on_ping(self) -> None:
        if time.monotonic() - self.heartbeat_at > HEARTBEAT_EVERY_SECONDS:
            self.heartbeat_at = time.monotonic()
            await database_sync_to_async(presence_heartbeat)(channel_name=self.channel_name)

    # --- frames from the client -------------------------------------------------------------

    async def on_frame(self, frame: dict[str, Any]) -> None:
        handler = {
            "message.send": self.on_message_send,
            "read": self.on_read,
            "typing": self.on_typing,
            "call.signal": self.on_call_signal,
        }.get(frame["type"])
        if handler is None:
            await self.send_error("unknown_type", f"Unknown frame type {frame['type']!r}.")
            return
        await handler(frame)

    async def on_message_send(self, frame: dict[str, Any]) -> None:
        raw_id = frame.get("client_msg_id")
        try:
            client_msg_id = uuid.UUID(str(raw_id))
        except ValueError:
            await self.send_error("malformed_frame", "client_msg_id must be a UUID.", raw_id)
            return
        text = frame.get("text", "")
        if not isinstance(text, str):
            await self.send_error("malformed_frame", "text must be a string.", raw_id)
            return
        try:
            sent = await _message_writer()(
                consultation_id=self.consultation_id,
                sender=self.scope["user"],
                client_msg_id=client_msg_id,
                kind=str(frame.get("kind", "text")),
                text=text,
                attachment_id=frame.get("attachment_id"),
                publish=False,
            )
        except DomainError as error:
            await self.send_error(error.code, error.detail, raw_id)
            return
        # Stored: the ack first (CONTRACT section 3), then the group is rung from this
        # loop (no hop back from the writer's thread).
        await self.send_json(
            {"type": "message.ack", "client_msg_id": raw_id, "seq": sent.message.seq}
        )
        if sent.event is not None:
            await self.channel_layer.group_send(self.group, sent.event)

    async def on_read(self, frame: dict[str, Any]) -> None:
        up_to = frame.get("up_to_seq")
        if not isinstance(up_to, int) or up_to < 0:
            await self.send_error("malformed_frame", "up_to_seq must be a non-negative integer.")
            return
        try:
            await database_sync_to_async(messaging.read_mark)(
                consultation_id=self.consultation_id, user=self.scope["user"], up_to_seq=up_to
            )
        except DomainError as error:
            await self.send_error(error.code, error.detail)

    async def on_typing(self, frame: dict[str, Any]) -> None:
        await self.channel_layer.group_send(
            self.group,
            {
                "type": "consultation.ephemeral",
                "from_user": self.user_id,
                "frame": {"type": "typing", "user": self.user_id},
            },
        )

    async def on_call_signal(self, frame: dict[str, Any]) -> None:
        signal = frame.get("signal")
        if not isinstance(signal, dict):
            await self.send_error("malformed_frame", "signal must be an object.")
            return
        try:
            await database_sync_to_async(messaging.call_signal_seen)(
                consultation_id=self.consultation_id, actor=self.scope["user"], signal=signal
            )
        except DomainError as error:
            await self.send_error(error.code, error.detail)
            return
        await self.channel_layer.group_send(
            self.group,
            {
                "type": "consultation.ephemeral",
                "from_user": self.user_id,
                "frame": {"type": "call.signal", "user": self.user_id, "signal": signal},
            },
        )

    # --- pushes from the channel layer ------------------------------------------------------

    async def consultation_message(self, event: dict[str, Any]) -> None:
        seq = event["message"]["seq"]
        if seq <= self.delivered_seq:
            return  # already delivered (in the backlog, or a repeated push)
        if seq == self.delivered_seq + 1:
            await self.send_json({"type": "message.new", "message": event["message"]})
            self.delivered_seq = seq
            return
        # A push went missing: fill the gap from the store, in order.
        for payload in await _backlog(self.consultation_id, self.delivered_seq):
            await self.send_json({"type": "message.new", "message": payload})
            self.delivered_seq = payload["seq"]

    async def consultation_push(self, event: dict[str, Any]) -> None:
        await self.send_json(event["frame"])

    async def consultation_ephemeral(self, event: dict[str, Any]) -> None:
        if event.get("from_user") != self.user_id:
            await self.send_json(event["frame"])
