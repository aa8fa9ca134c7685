"""Chat messages: persisted first, with a gap-free per-consultation ``seq``, then pushed.

``seq`` comes from ``Consultation.last_seq`` incremented under the consultation's row
lock in the same transaction as the message insert, so it has no gaps and no repeats.
``client_msg_id`` makes sending idempotent: the same id from the same sender returns the
stored message (and its seq) and creates nothing. See docs/chat.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.core.files.uploadedfile import UploadedFile
from django.db import IntegrityError, transaction
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


def _append(consultation: Consultation, **fields: Any) -> Message:
    # The caller holds the consultation's row lock (on SQLite, the IMMEDIATE transaction's
    # write lock), so reading last_seq and writing it back cannot interleave.
    consultation.last_seq += 1
    Consultation.objects.filter(pk=consultation.pk).update(last_seq=consultation.last_seq)
    message = Message.objects.create(
        consultation=consultation, seq=consultation.last_seq, created_at=timezone.now(), **fields
    )
    payload = message_payload(message)
    recipients = [
        u
        for u in consultation_participant_ids(consultation=consultation)
        if u != str(message.sender_id)
    ]

    def deliver() -> None:
        _broadcast(consultation.pk, {"type": "consultation.message", "message": payload})
        # Pushes carry no health data: they pass through the phone vendors' servers.
        notify_if_away(
            topic=f"consultation:{consultation.pk}",
            user_ids=recipients,
            title="新消息",
            body="您的问诊有一条新消息",
            data={"consultation": str(consultation.pk), "seq": payload["seq"]},
        )

    transaction.on_commit(deliver)
    return message


def message_send(
    *,
    consultation_id: UUID | str,
    sender: User,
    client_msg_id: UUID,
    kind: str,
    text: str = "",
    attachment_id: UUID | str | None = None,
) -> Sent:
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
        with transaction.atomic():
            consultation = _locked_for_participant(consultation_id, sender)
            if consultation.status not in OPEN_FOR_MESSAGES or (
                sender.role == Role.DOCTOR and consultation.status != ConsultationStatus.IN_PROGRESS
            ):
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
            message = _append(
                consultation,
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
    return Sent(message, created=True)


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
