"""Views both edges mount (``/api/mobile/v1/`` and ``/api/console/v1/``): the chat's
HTTP side, for any participant of a consultation."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from django.http import FileResponse
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.parsers import MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response

from backend.api.problems import DomainError
from backend.api.tickets import WsTicketOutput, ws_ticket_response
from backend.api.views import ApiView, read_recorded
from backend.audit.services import RequestMeta
from backend.identity.authentication import request_account
from consultations import messaging
from consultations.models import Attachment
from consultations.selectors import (
    consultation_participant_ids,
    consultation_visible_to,
    messages_after,
)
from consultations.serializers import AttachmentOutput, MessageOutput


def _participant(request: Request, consultation_id: UUID) -> Any:
    user = request_account(request)
    consultation = consultation_visible_to(user=user, consultation_id=consultation_id)
    if str(user.pk) not in consultation_participant_ids(consultation=consultation):
        raise DomainError("not_a_participant")
    return consultation


class MessagesPage(serializers.Serializer):  # type: ignore[type-arg]
    results = MessageOutput(many=True)
    next = serializers.CharField(allow_null=True)


class ConsultationMessagesApi(ApiView):
    @extend_schema(
        parameters=[
            OpenApiParameter("after_seq", int, description="Return messages with a higher seq"),
            OpenApiParameter("limit", int, description="At most this many (default 200, max 1000)"),
        ],
        responses={200: MessagesPage},
    )
    def get(self, request: Request, consultation_id: UUID) -> Response:
        consultation = _participant(request, consultation_id)
        try:
            after_seq = max(0, int(request.query_params.get("after_seq", 0)))
            limit = min(1000, max(1, int(request.query_params.get("limit", 200))))
        except ValueError as exc:
            raise DomainError(
                "validation_error",
                "after_seq and limit are integers.",
                errors={"after_seq": ["Must be an integer."]},
            ) from exc
        batch = messages_after(consultation=consultation, after_seq=after_seq, limit=limit)
        read_recorded(
            request,
            "consultation",
            consultation.pk,
            what="messages_viewed",
            after_seq=after_seq,
            messages=len(batch),
        )
        results = [messaging.message_payload(m) for m in batch]
        following = None
        if len(batch) == limit and batch[-1].seq < consultation.last_seq:
            following = request.build_absolute_uri(
                f"{request.path}?after_seq={batch[-1].seq}&limit={limit}"
            )
        return Response({"results": results, "next": following})


class ConsultationWsTicketApi(ApiView):
    idempotency_exempt = True  # a ticket is single-use: replaying one would be useless

    @extend_schema(request=None, responses={201: WsTicketOutput})
    def post(self, request: Request, consultation_id: UUID) -> Response:
        consultation = _participant(request, consultation_id)
        return ws_ticket_response(request, path=f"/ws/consultations/{consultation.pk}/")


class UploadInput(serializers.Serializer):  # type: ignore[type-arg]
    file = serializers.FileField()


class AttachmentUploadApi(ApiView):
    parser_classes = [MultiPartParser]

    @extend_schema(request=UploadInput, responses={201: AttachmentOutput})
    def post(self, request: Request, consultation_id: UUID) -> Response:
        data = UploadInput(data=request.data)
        data.is_valid(raise_exception=True)
        attachment = messaging.attachment_upload(
            consultation_id=consultation_id,
            user=request_account(request),
            upload=data.validated_data["file"],
            meta=RequestMeta.from_request(request),
        )
        return Response(AttachmentOutput(attachment).data, status=201)


class AttachmentDownloadApi(ApiView):
    @extend_schema(responses={(200, "application/octet-stream"): bytes})
    def get(self, request: Request, consultation_id: UUID, attachment_id: UUID) -> Any:
        consultation = _participant(request, consultation_id)
        attachment = Attachment.objects.filter(pk=attachment_id, consultation=consultation).first()
        if attachment is None:
            raise DomainError("not_found", "No such attachment.")
        read_recorded(
            request,
            "consultation",
            consultation.pk,
            what="attachment_downloaded",
            attachment=str(attachment.pk),
        )
        return FileResponse(
            attachment.file.open("rb"),
            content_type=attachment.content_type,
            filename=attachment.filename,
        )
