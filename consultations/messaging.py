"""Chat messages: persisted first, with a gap-free per-consultation ``seq``, then pushed.

``seq`` comes from ``Consultation.last_seq`` incremented under the consultation's row
lock in the same transaction as the message insert, so it has no gaps and no repeats.
``client_msg_id`` makes sending idempotent: the same id from the same sender returns the
stored message (and its seq) and creates nothing. See docs/chat.md.
"""

from __future__ import annotations

import datetime as dt
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any
from uuid import UUID, uuid4

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.core.files.uploadedfile import UploadedFile
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from backend.api.problems import DomainError
from backend.api.uploads import DOCUMENT_TYPES, IMAGE_TYPES, upload_inspect
from backend.audit.services import RequestMeta, audit_record
from backend.identity.models import Role, User
from backend.notifications.services import notify_if_away
from consultations.lifecycle import OPEN_FOR_MESSAGES
from consultations.models import (
    Attachment,
    Consultation,
    ConsultationStatus,
    Message,
    MessageKind,
    ReadMarker,
)
from consultations.push import consultation_group
from consultations.selectors import consultation_participant_ids, consultation_visible_to

SENDABLE_KINDS = frozenset({MessageKind.TEXT, MessageKind.IMAGE, MessageKind.FILE})


def message_payload(message: Message) -> dict[str, Any]:
    attachment = None
    if message.attachment_id:
        a = message.attachment
        assert a is not None  # noqa: S101 - attachment_id set
        attachment = {
            "id": str(a.pk),
            "filename": a.filename,
            "content_type": a.content_type,
            "size": a.size,
        }
    return {
        "id": str(message.pk),
        "seq": message.seq,
        "sender": str(message.sender_id) if message.sender_id else None,
        "kind": message.kind,
        "text": message.text,
        "attachment": attachment,
        "created_at": message.created_at.isoformat(),
    }


def _broadcast(consultation_id: Any, event: dict[str, Any]) -> None:
    layer = get_channel_layer()
    if layer is not None:
        async_to_sync(layer.group_send)(consultation_group(consultation_id), event)


def _locked_for_participant(consultation_id: UUID | str, user: User) -> Consultation:
    consultation = (
        Consultation.objects.select_for_update(of=("self",))
        .select_related("doctor")
        .filter(pk=consultation_id)
        .first()
    )
    if consultation is None:
        raise DomainError("not_found", "No such consultation.")
    if str(user.pk) not in consultation_participant_ids(consultation=consultation):
        raise DomainError("not_a_participant")
    return consultation


@dataclass(frozen=True)
class Sent:
    message: Message
    created: bool
    #: The ``consultation.message`` group event of a message created with
    #: ``publish=False``, for the caller to send; otherwise None.
    event: dict[str, Any] | None = None


def _after_commit(
    consultation_id: Any, message: Message, recipients: list[str], *, publish: bool
) -> dict[str, Any]:
    """Schedule what follows a stored message once it is committed: the push on the
    consultation's group (unless ``publish`` is False: the caller sends the returned
    event itself) and a notification to those of ``recipients`` without a live socket."""
    payload = message_payload(message)
    event = {"type": "consultation.message", "message": payload}

    def deliver() -> None:
        if publish:
            _broadcast(consultation_id, event)
        if not recipients:
            return
        # Pushes carry no health data: they pass through the phone vendors' servers.
        notify_if_away(
            topic=f"consultation:{consultation_id}",
            user_ids=recipients,
            title="新消息",
            body="您的问诊有一条新消息",
            data={"consultation": str(consultation_id), "seq": payload["seq"]},
        )

    transaction.on_commit(deliver)
    return event


def _append_event(
    consultation: Consultation, *, publish: bool, **fields: Any
) -> tuple[Message, dict[str, Any]]:
    # The caller holds the consultation's row lock (on SQLite, the IMMEDIATE transaction's
    # write lock), so reading last_seq and writing it back cannot interleave.
    consultation.last_seq += 1
    Consultation.objects.filter(pk=consultation.pk).update(last_seq=consultation.last_seq)
    message = Message.objects.create(
        consultation=consultation, seq=consultation.last_seq, created_at=timezone.now(), **fields
    )
    recipients = [
        u
        for u in consultation_participant_ids(consultation=consultation)
        if u != str(message.sender_id)
    ]
    return message, _after_commit(consultation.pk, message, recipients, publish=publish)


def _append(consultation: Consultation, **fields: Any) -> Message:
    return _append_event(consultation, publish=True, **fields)[0]


#: PostgreSQL: a text message in ONE statement (autocommit: one round trip, one commit).
#: The UPDATE takes the consultation's row lock and the next seq only if the sender is a
#: participant and the status accepts their messages — evaluated under the lock, so a
#: message racing a transition out of ``in_progress`` either commits before it or finds
#: no row. The INSERT of the same statement uses that seq; if it fails (the unique
#: ``client_msg_id`` of a resend) the whole statement rolls back, seq included, so seqs
#: stay gap-free. No row back: not open, not a participant or no such consultation — the
#: general path below then says which. It also answers which participants have a live
#: socket on the consultation (the test of ``notifications.services.present_users``), so
#: the usual case — both in the chat — needs no presence query after the commit.
_SEND_SQL = """
WITH c AS (
    UPDATE consultations_consultation SET last_seq = last_seq + 1
    WHERE id = %(consultation)s AND status = ANY(%(statuses)s) AND (
        account_id = %(sender)s
        OR doctor_id = (SELECT id FROM organisations_practitioner WHERE user_id = %(sender)s)
    )
    RETURNING id, last_seq, account_id, doctor_id
), m AS (
    INSERT INTO consultations_message
        (id, consultation_id, seq, sender_id, kind, text, client_msg_id, created_at)
    SELECT %(id)s, c.id, c.last_seq, %(sender)s, %(kind)s, %(text)s, %(client_msg_id)s, %(now)s
    FROM c
    RETURNING seq
)
SELECT m.seq, c.account_id, d.user_id, ARRAY(
    SELECT s.user_id FROM notifications_socketpresence s
    WHERE s.topic = %(topic)s AND s.heartbeat_at >= %(fresh_since)s
        AND s.user_id IN (c.account_id, d.user_id)
)
FROM m CROSS JOIN c LEFT JOIN organisations_practitioner d ON d.id = c.doctor_id
"""


def _open_statuses(sender: User) -> list[str]:
    """Statuses in which ``sender`` may write: the doctor once accepted, the patient also
    while waiting."""
    if sender.role == Role.DOCTOR:
        return [ConsultationStatus.IN_PROGRESS]
    return sorted(OPEN_FOR_MESSAGES)


def _store_text_postgresql(message: Message, sender: User) -> list[str] | None:
    """The one-statement path (see ``_SEND_SQL``): sets ``message.seq`` and answers the
    participants to notify (no live socket); None when it stored nothing."""
    import psycopg  # only on PostgreSQL

    consultation_id = message.consultation_id
    params: dict[str, Any] = {
        "consultation": str(consultation_id),
        "statuses": _open_statuses(sender),
        "sender": sender.pk,
        "id": message.pk,
        "kind": message.kind,
        "text": message.text,
        "client_msg_id": message.client_msg_id,
        "now": message.created_at,
        "topic": f"consultation:{consultation_id}",
        "fresh_since": message.created_at - dt.timedelta(seconds=settings.PRESENCE_TTL_SECONDS),
    }
    # Inside a caller's transaction a savepoint keeps a refused duplicate from breaking
    # it; in autocommit (the socket's case) the statement is its own transaction.
    savepoint = transaction.atomic() if connection.in_atomic_block else nullcontext()
    with savepoint:
        connection.ensure_connection()
        # A server-side-binding cursor and a prepared statement: the parameters are not
        # quoted into the text in Python, and PostgreSQL plans the statement once per
        # connection. Errors are Django's (IntegrityError) as from its own cursors.
        with connection.wrap_database_errors, psycopg.Cursor(connection.connection) as cursor:
            cursor.execute(_SEND_SQL, params, prepare=True)
            row = cursor.fetchone()
    if row is None:
        return None
    message.seq, account_id, doctor_user_id, present = row
    return [str(u) for u in (account_id, doctor_user_id) if u not in (None, sender.pk, *present)]


#: SQLite (the embedded default): the same work in three statements of one IMMEDIATE
#: transaction (SQLite has no data-modifying CTEs). The transaction holds the database's
#: write lock from BEGIN, so the seq claimed by the UPDATE cannot interleave with another
#: writer's; a refused INSERT (a resend's ``client_msg_id``) rolls the seq back with it.
#: Plain SQL built once: the ORM's compilation of the lock, the update and the insert
#: cost about three times what SQLite spends running them.
_SQLITE_CLAIM_SQL = """
UPDATE consultations_consultation SET last_seq = last_seq + 1
WHERE id = %s AND status IN ({statuses}) AND (
    account_id = %s
    OR doctor_id = (SELECT id FROM organisations_practitioner WHERE user_id = %s)
)
RETURNING last_seq, account_id,
    (SELECT user_id FROM organisations_practitioner WHERE id = doctor_id)
"""
_SQLITE_INSERT_SQL = """
INSERT INTO consultations_message
    (id, consultation_id, seq, sender_id, kind, text, client_msg_id, created_at)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
"""
_SQLITE_PRESENT_SQL = """
SELECT user_id FROM notifications_socketpresence
WHERE topic = %s AND heartbeat_at >= %s AND user_id IN (%s, %s)
"""


def _store_text_sqlite(message: Message, sender: User) -> list[str] | None:
    """The three-statement path (see ``_SQLITE_CLAIM_SQL``): sets ``message.seq`` and
    answers the participants to notify; None when it stored nothing."""
    uuid_of = Message._meta.pk.get_db_prep_value
    user_of = User._meta.pk.get_db_prep_value
    statuses = _open_statuses(sender)
    consultation_key = uuid_of(message.consultation_id, connection)
    sender_key = user_of(sender.pk, connection)
    fresh_since = message.created_at - dt.timedelta(seconds=settings.PRESENCE_TTL_SECONDS)
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            _SQLITE_CLAIM_SQL.format(statuses=", ".join(["%s"] * len(statuses))),
            [consultation_key, *statuses, sender_key, sender_key],
        )
        claimed = cursor.fetchone()
        if claimed is None:
            return None
        message.seq, account_key, doctor_user_key = claimed
        cursor.execute(
            _SQLITE_INSERT_SQL,
            [
                uuid_of(message.pk, connection),
                consultation_key,
                message.seq,
                sender_key,
                message.kind,
                message.text,
                uuid_of(message.client_msg_id, connection),
                connection.ops.adapt_datetimefield_value(message.created_at),
            ],
        )
        cursor.execute(
            _SQLITE_PRESENT_SQL,
            [
                f"consultation:{message.consultation_id}",
                connection.ops.adapt_datetimefield_value(fresh_since),
                account_key,
                doctor_user_key,
            ],
        )
        present = {row[0] for row in cursor.fetchall()}
    to_pk = User._meta.pk.to_python
    return [
        str(to_pk(key))
        for key in (account_key, doctor_user_key)
        if key is not None and key != sender_key and key not in present
    ]


#: The short paths for a text message, by database vendor (others take the general one).
_STORE_TEXT = {"postgresql": _store_text_postgresql, "sqlite": _store_text_sqlite}


def _send_text(
    *, consultation_id: UUID | str, sender: User, client_msg_id: UUID, text: str, publish: bool
) -> Sent | None:
    """A text message through its database's short path; None when that path stored
    nothing (not open, not a participant, no such consultation, or no short path)."""
    store = _STORE_TEXT.get(connection.vendor)
    if store is None:
        return None
    message = Message(
        id=uuid4(),
        consultation_id=consultation_id,
        sender=sender,
        kind=MessageKind.TEXT,
        text=text,
        client_msg_id=client_msg_id,
        created_at=timezone.now(),
    )
    away = store(message, sender)
    if away is None:
        return None
    message._state.adding = False
    message._state.db = connection.alias
    event = _after_commit(consultation_id, message, away, publish=publish)
    return Sent(message, created=True, event=None if publish else event)


def message_send(
    *,
    consultation_id: UUID | str,
    sender: User,
    client_msg_id: UUID,
    kind: str,
    text: str = "",
    attachment_id: UUID | str | None = None,
    publish: bool = True,
) -> Sent:
    """Store a chat message and acknowledge it with its seq (CONTRACT section 3).

    ``publish=False``: the caller sends ``Sent.event`` to the consultation's group itself
    once this returns (the WebSocket consumer does, from its event loop, which saves a
    thread hop); the message is committed by then unless the caller holds a transaction.
    """
    if kind not in SENDABLE_KINDS:
        raise DomainError(
            "validation_error",
            f"Unknown message kind {kind!r}.",
            errors={"kind": ["Use text, image or file."]},
        )
    if len(text) > settings.CHAT_MAX_TEXT_CHARS:
        raise DomainError(
            "validation_error",
            f"Text is limited to {settings.CHAT_MAX_TEXT_CHARS} characters.",
            errors={"text": ["Too long."]},
        )
    if attachment_id is not None:
        try:
            attachment_id = UUID(str(attachment_id))
        except ValueError as exc:
            raise DomainError(
                "validation_error",
                "attachment_id must be a UUID.",
                errors={"attachment_id": ["Must be a UUID."]},
            ) from exc
    if kind == MessageKind.TEXT and not text.strip():
        raise DomainError(
            "validation_error", "A text message needs text.", errors={"text": ["Required."]}
        )

    def stored() -> Message | None:
        return (
            Message.objects.filter(
                consultation_id=consultation_id, sender=sender, client_msg_id=client_msg_id
            )
            .select_related("attachment")
            .first()
        )

    # A repeated client_msg_id (a resend after a reconnect) is found by the unique
    # constraint on insert, which rolls the seq back; no read is spent on the usual case.
    try:
        if kind == MessageKind.TEXT:
            sent = _send_text(
                consultation_id=consultation_id,
                sender=sender,
                client_msg_id=client_msg_id,
                text=text,
                publish=publish,
            )
            if sent is not None:
                return sent
        # Attachments, and the refusals of the short paths above.
        with transaction.atomic():
            consultation = _locked_for_participant(consultation_id, sender)
            if consultation.status not in _open_statuses(sender):
                earlier = stored()
                if earlier is not None:
                    return Sent(earlier, created=False)
                raise DomainError(
                    "consultation_not_open",
                    f"The consultation is {consultation.status}: no messages are accepted.",
                )
            attachment = None
            if kind != MessageKind.TEXT:
                attachment = (
                    Attachment.objects.filter(pk=attachment_id, consultation=consultation).first()
                    if attachment_id
                    else None
                )
                if attachment is None:
                    raise DomainError(
                        "validation_error",
                        "Upload the file first and send its id.",
                        errors={"attachment_id": ["Unknown attachment."]},
                    )
                if kind == MessageKind.IMAGE and attachment.content_type not in IMAGE_TYPES:
                    raise DomainError(
                        "validation_error",
                        "That attachment is not an image.",
                        errors={"attachment_id": ["Not an image."]},
                    )
            message, event = _append_event(
                consultation,
                publish=publish,
                sender=sender,
                kind=kind,
                text=text,
                attachment=attachment,
                client_msg_id=client_msg_id,
            )
    except IntegrityError:
        existing = stored()
        if existing is None:
            raise
        return Sent(existing, created=False)
    return Sent(message, created=True, event=None if publish else event)


def message_system(*, consultation_id: UUID | str, actor: User, text: str) -> Message:
    """A system message in the chat record (``call.started``, ``call.ended``)."""
    with transaction.atomic():
        consultation = _locked_for_participant(consultation_id, actor)
        return _append(consultation, sender=actor, kind=MessageKind.SYSTEM, text=text)


def call_signal_seen(
    *, consultation_id: UUID | str, actor: User, signal: dict[str, Any]
) -> Message | None:
    """Keep the chat record of calls: the first offer starts one, a hangup ends it."""
    kind = signal.get("type")
    with transaction.atomic():
        consultation = _locked_for_participant(consultation_id, actor)
        if consultation.status != ConsultationStatus.IN_PROGRESS:
            raise DomainError(
                "consultation_not_open", "Calls are possible only while it is in progress."
            )
        if kind == "offer" and consultation.call_started_at is None:
            Consultation.objects.filter(pk=consultation.pk).update(call_started_at=timezone.now())
            return _append(consultation, sender=actor, kind=MessageKind.SYSTEM, text="call.started")
        if kind in ("hangup", "bye") and consultation.call_started_at is not None:
            Consultation.objects.filter(pk=consultation.pk).update(call_started_at=None)
            return _append(consultation, sender=actor, kind=MessageKind.SYSTEM, text="call.ended")
    return None


def call_end_with_consultation(consultation: Consultation, *, actor: User | None) -> None:
    """The consultation leaves ``in_progress`` during a call (ended, referred, refused):
    the chat record says the call ended, since no hang-up can be accepted after it.
    Called by the lifecycle transition with the row locked, before it saves the row."""
    if consultation.call_started_at is None:
        return
    consultation.call_started_at = None
    Consultation.objects.filter(pk=consultation.pk).update(call_started_at=None)
    _append(consultation, sender=actor, kind=MessageKind.SYSTEM, text="call.ended")


def read_mark(*, consultation_id: UUID | str, user: User, up_to_seq: int) -> int:
    """Record what ``user`` has read; markers only move forward. Returns the marker."""
    with transaction.atomic():
        consultation = _locked_for_participant(consultation_id, user)
        up_to_seq = max(0, min(up_to_seq, consultation.last_seq))
        marker, _ = ReadMarker.objects.select_for_update().get_or_create(
            consultation=consultation, user=user
        )
        if up_to_seq > marker.up_to_seq:
            marker.up_to_seq = up_to_seq
            marker.save(update_fields=["up_to_seq", "updated_at"])
            value = marker.up_to_seq
            transaction.on_commit(
                lambda: _broadcast(
                    consultation.pk,
                    {
                        "type": "consultation.push",
                        "frame": {"type": "read.receipt", "user": str(user.pk), "up_to_seq": value},
                    },
                )
            )
        return marker.up_to_seq


def attachment_upload(
    *,
    consultation_id: UUID | str,
    user: User,
    upload: UploadedFile,
    meta: RequestMeta | None = None,
) -> Attachment:
    consultation_visible_to(user=user, consultation_id=consultation_id)  # 404 for strangers
    inspected = upload_inspect(
        upload=upload, allowed=DOCUMENT_TYPES, max_bytes=settings.UPLOAD_MAX_BYTES
    )
    with transaction.atomic():
        consultation = _locked_for_participant(consultation_id, user)
        if consultation.status not in OPEN_FOR_MESSAGES:
            raise DomainError("consultation_not_open")
        attachment = Attachment(
            consultation=consultation,
            uploaded_by=user,
            filename=(upload.name or "upload")[:200],
            content_type=inspected.content_type,
            size=inspected.size,
            sha256=inspected.sha256,
        )
        extension = {"application/pdf": "pdf", "image/jpeg": "jpg", "image/png": "png"}
        attachment.file.save(
            f"{attachment.pk}.{extension[inspected.content_type]}", upload, save=False
        )
        attachment.save()
        audit_record(
            action="attachment.uploaded",
            actor=user,
            object_type="attachment",
            object_id=attachment.pk,
            after={
                "consultation": str(consultation.pk),
                "sha256": inspected.sha256,
                "size": inspected.size,
            },
            meta=meta,
        )
    return attachment
