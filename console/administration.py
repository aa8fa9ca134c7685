"""The hospital administrator's oversight in the console's API, scoped to their hospital:
the practitioners with their filing and signing-certificate status, the hospital's
regulator outbox (pending records and dead letters, and replaying a dead letter once its
cause is fixed), and the audit chain check. Reads, plus the replay and the check."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from django.db.models import QuerySet
from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from backend.api.pagination import CursorPage
from backend.api.problems import DomainError
from backend.api.views import ApiView, ListApiView
from backend.audit.services import RequestMeta, audit_chain_verify, audit_record
from backend.identity.authentication import request_account
from backend.organisations.models import Hospital, Practitioner
from backend.pki.models import SigningCertificate
from console.payments import IsHospitalAdministrator
from regulators.models import OutboxRecord, RecordStatus
from regulators.services import record_replay


def _hospital(request: Request) -> Hospital:
    return request.user.hospital_administrator.hospital  # type: ignore[union-attr]


# --- Practitioners ----------------------------------------------------------------------------


def _certificate_state(
    certificates: list[SigningCertificate], now: Any
) -> tuple[str, SigningCertificate | None]:
    """``valid``, ``expired``, ``revoked`` or ``none``: the best certificate of the holder
    in their own role (a valid one if any, else the newest)."""
    valid = [c for c in certificates if c.revoked_at is None and c.not_before <= now < c.not_after]
    if valid:
        return "valid", max(valid, key=lambda c: c.not_after)
    if not certificates:
        return "none", None
    newest = max(certificates, key=lambda c: c.created_at)
    if newest.revoked_at is not None:
        return "revoked", newest
    if newest.not_before > now:
        return "not_yet_valid", newest
    return "expired", newest


def practitioner_state(practitioner: Practitioner, now: Any) -> dict[str, Any]:
    certificates = [
        c for c in practitioner.signing_certificates.all() if c.role == practitioner.kind
    ]
    state, certificate = _certificate_state(certificates, now)
    return {
        "id": str(practitioner.pk),
        "name": practitioner.user.display_name or practitioner.user.username,
        "kind": practitioner.kind,
        "department": practitioner.department.name if practitioner.department else "",
        "title": practitioner.title,
        "practice_certificate_number": practitioner.practice_certificate_number,
        "filing_status": practitioner.filing_status,
        "filed_at": practitioner.filed_at.isoformat() if practitioner.filed_at else None,
        "licence_valid_until": practitioner.licence_valid_until.isoformat(),
        "certificate": {
            "status": state,
            "serial_number": certificate.serial_number if certificate else None,
            "not_after": certificate.not_after.isoformat() if certificate else None,
            "revoked_at": (
                certificate.revoked_at.isoformat()
                if certificate and certificate.revoked_at
                else None
            ),
        },
    }


class CertificateOutput(serializers.Serializer):  # type: ignore[type-arg]
    status = serializers.ChoiceField(
        choices=["valid", "expired", "revoked", "not_yet_valid", "none"]
    )
    serial_number = serializers.CharField(allow_null=True)
    not_after = serializers.DateTimeField(allow_null=True)
    revoked_at = serializers.DateTimeField(allow_null=True)


class PractitionerOutput(serializers.Serializer):  # type: ignore[type-arg]
    id = serializers.UUIDField()
    name = serializers.CharField()
    kind = serializers.ChoiceField(choices=["doctor", "pharmacist"])
    department = serializers.CharField(allow_blank=True)
    title = serializers.CharField()
    practice_certificate_number = serializers.CharField()
    filing_status = serializers.ChoiceField(choices=["pending", "filed", "suspended", "revoked"])
    filed_at = serializers.DateTimeField(allow_null=True)
    licence_valid_until = serializers.DateField()
    certificate = CertificateOutput()


class PractitionerSerializer(serializers.BaseSerializer):  # type: ignore[type-arg]
    def to_representation(self, instance: Practitioner) -> dict[str, Any]:
        return practitioner_state(instance, self.context["now"])


class ByCertificateNumber(CursorPage):
    ordering = ("practice_certificate_number", "id")


class PractitionersApi(ListApiView):
    """The hospital's doctors and pharmacists, their filing with the regulator and the
    status of their signing certificate."""

    permission_classes = [IsHospitalAdministrator]
    serializer_class = PractitionerSerializer
    pagination_class = ByCertificateNumber

    def get_queryset(self) -> QuerySet[Practitioner]:
        qs = (
            Practitioner.objects.filter(hospital=_hospital(self.request))
            .select_related("user", "department")
            .prefetch_related("signing_certificates")
        )
        filing = self.request.query_params.get("filing_status")
        if filing:
            qs = qs.filter(filing_status=filing)
        return qs

    def get_serializer_context(self) -> dict[str, Any]:
        return {**super().get_serializer_context(), "now": timezone.now()}

    @extend_schema(
        operation_id="console_administration_practitioners",
        parameters=[
            OpenApiParameter(
                "filing_status", str, enum=["pending", "filed", "suspended", "revoked"]
            )
        ],
        responses={200: PractitionerOutput(many=True)},
    )
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)


# --- The regulator outbox ----------------------------------------------------------------------


def outbox_state(record: OutboxRecord) -> dict[str, Any]:
    return {
        "record_id": str(record.record_id),
        "record_type": record.record_type,
        "status": record.status,
        "occurred_at": record.occurred_at.isoformat(),
        "created_at": record.created_at.isoformat(),
        "attempts": record.attempts,
        "next_attempt_at": record.next_attempt_at.isoformat(),
        "last_error": record.last_error,
        "last_status_code": record.last_status_code,
        "dead_code": record.dead_code,
        "dead_message": record.dead_message,
    }


class OutboxOutput(serializers.Serializer):  # type: ignore[type-arg]
    record_id = serializers.UUIDField()
    record_type = serializers.CharField()
    status = serializers.ChoiceField(choices=["pending", "dead"])
    occurred_at = serializers.DateTimeField()
    created_at = serializers.DateTimeField()
    attempts = serializers.IntegerField()
    next_attempt_at = serializers.DateTimeField()
    last_error = serializers.CharField(allow_blank=True)
    last_status_code = serializers.IntegerField(allow_null=True)
    dead_code = serializers.CharField(allow_blank=True)
    dead_message = serializers.CharField(allow_blank=True)


class OutboxSerializer(serializers.BaseSerializer):  # type: ignore[type-arg]
    def to_representation(self, instance: OutboxRecord) -> dict[str, Any]:
        return outbox_state(instance)


class Oldest(CursorPage):
    ordering = ("id",)


_UNDELIVERED = (RecordStatus.PENDING, RecordStatus.DEAD)


class OutboxApi(ListApiView):
    """The hospital's records not (yet) received by the platform, oldest first: pending
    ones (being sent or retried) and dead letters (refused; replay once fixed)."""

    permission_classes = [IsHospitalAdministrator]
    serializer_class = OutboxSerializer
    pagination_class = Oldest

    def get_queryset(self) -> QuerySet[OutboxRecord]:
        status = self.request.query_params.get("status")
        if status and status not in _UNDELIVERED:
            raise DomainError(
                "validation_error",
                "status is pending or dead.",
                errors={"status": ["pending or dead"]},
            )
        return OutboxRecord.objects.filter(
            hospital=_hospital(self.request),
            status__in=[status] if status else _UNDELIVERED,
        )

    @extend_schema(
        operation_id="console_administration_outbox",
        parameters=[OpenApiParameter("status", str, enum=["pending", "dead"])],
        responses={200: OutboxOutput(many=True)},
    )
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)


class ReplayApi(ApiView):
    permission_classes = [IsHospitalAdministrator]

    @extend_schema(
        operation_id="console_administration_outbox_replay",
        request=None,
        responses={200: OutboxOutput},
        description="Send a dead letter of the hospital again (its cause fixed); "
        "`not_dead_lettered` if it is not one.",
    )
    def post(self, request: Request, record_id: UUID) -> Response:
        record = OutboxRecord.objects.filter(
            hospital=_hospital(request), record_id=record_id
        ).first()
        if record is None:
            raise DomainError("not_found")
        replayed = record_replay(
            record=record, actor=request_account(request), meta=RequestMeta.from_request(request)
        )
        return Response(outbox_state(replayed))


# --- The audit chain ---------------------------------------------------------------------------


class ChainBreakOutput(serializers.Serializer):  # type: ignore[type-arg]
    seq = serializers.IntegerField()
    reason = serializers.CharField()


class AuditChainOutput(serializers.Serializer):  # type: ignore[type-arg]
    ok = serializers.BooleanField()
    checked = serializers.IntegerField()
    last_seq = serializers.IntegerField()
    first_break = ChainBreakOutput(allow_null=True)
    checked_at = serializers.DateTimeField()


class AuditChainApi(ApiView):
    permission_classes = [IsHospitalAdministrator]

    @extend_schema(
        operation_id="console_administration_audit_chain_verify",
        request=None,
        responses={200: AuditChainOutput},
        description="Recompute the audit hash chain (as `manage.py verify_audit_chain`) "
        "and report the first broken link; the check itself is audited.",
    )
    def post(self, request: Request) -> Response:
        report = audit_chain_verify()
        checked_at = timezone.now()
        result = {
            "ok": report.ok,
            "checked": report.checked,
            "last_seq": report.last_seq,
            "first_break": (
                {"seq": report.first_break.seq, "reason": report.first_break.reason}
                if report.first_break
                else None
            ),
            "checked_at": checked_at.isoformat(),
        }
        audit_record(
            action="audit.chain_checked",
            actor=request_account(request),
            object_type="audit_chain",
            after={k: v for k, v in result.items() if k != "checked_at"},
            meta=RequestMeta.from_request(request),
        )
        return Response(result)
