"""Doctors' and pharmacists' side of prescriptions: drafts with live rule checks, the
signing act, the review queue, approve (countersign), reject, revise and cancel."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from django.db.models import Q, QuerySet
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from backend.api.pagination import CursorPage
from backend.api.problems import DomainError
from backend.api.views import ApiView, AuditedListApiView, ListApiView, read_recorded
from backend.audit.services import RequestMeta
from backend.identity.authentication import request_account
from backend.organisations.models import Practitioner, PractitionerKind
from console.permissions import IsPractitioner
from consultations.serializers import ReasonInput
from prescriptions import rules
from prescriptions.models import Drug, Prescription
from prescriptions.selectors import (
    prescription_bundle_of,
    prescription_history,
    prescription_verification,
    prescription_visible_to,
    prescriptions_of_practitioner,
    review_queue,
)
from prescriptions.serializers import (
    BundleOutput,
    ConsolePrescriptionOutput,
    OtpInput,
    PrescriptionInput,
    PrescriptionOutput,
    PrescriptionPatchInput,
    PrescriptionStateSerializer,
    event_state,
    prescription_state,
)
from prescriptions.services import (
    prescription_approve,
    prescription_cancel,
    prescription_checks_of,
    prescription_create,
    prescription_reject,
    prescription_revise,
    prescription_sign,
    prescription_update,
)


def _practitioner(request: Request) -> Practitioner:
    practitioner = (
        Practitioner.objects.select_related("hospital")
        .filter(user=request_account(request))
        .first()
    )
    if practitioner is None:
        raise DomainError("permission_denied", "Only doctors and pharmacists can do this.")
    return practitioner


def _machine(request: Request) -> bool:
    """True when an API token (software), not the person's session, made the request."""
    return isinstance(request.auth, dict) and request.auth.get("kind") == "api_token"


def _detail(
    request: Request,
    prescription_id: UUID | str,
    checks: list[rules.Check] | None = None,
    *,
    acted_on: Prescription | None = None,
) -> dict[str, Any]:
    """The console's view of a prescription. ``acted_on``: the instance a service just
    changed for this user under its row lock (who may act on it was checked there), with
    what it read on the way, so the response does not read it all again."""
    prescription = acted_on or prescription_visible_to(
        user=request_account(request), prescription_id=prescription_id
    )
    body = prescription_state(prescription)
    body["checks"] = [
        c.as_dict() for c in (checks or prescription_checks_of(prescription=prescription))
    ]
    body["history"] = [event_state(e) for e in prescription_history(prescription=prescription)]
    body["verification"] = prescription_verification(prescription=prescription)
    return body


class Newest(CursorPage):
    ordering = ("-created_at", "id")


class OldestFirst(CursorPage):
    ordering = ("created_at", "id")


_LINE_EXAMPLE = {
    "drug": "DEMO-0001",
    "dose": "5",
    "dose_unit": "mg",
    "frequency": "qd",
    "route": "口服",
    "days": 7,
    "quantity": 1,
}


class PrescriptionsApi(AuditedListApiView):
    permission_classes = [IsPractitioner]
    audit_object_type = "prescription"
    serializer_class = PrescriptionStateSerializer
    pagination_class = Newest

    def get_queryset(self) -> QuerySet[Prescription]:
        return prescriptions_of_practitioner(
            practitioner=_practitioner(self.request),
            status=self.request.query_params.get("status"),
        )

    @extend_schema(
        operation_id="console_prescriptions_list",
        parameters=[OpenApiParameter("status", str)],
        responses={200: PrescriptionOutput(many=True)},
    )
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)

    @extend_schema(
        operation_id="console_prescriptions_create",
        request=PrescriptionInput,
        responses={201: ConsolePrescriptionOutput},
        examples=[
            OpenApiExample(
                "A week of amlodipine",
                request_only=True,
                value={
                    "consultation": "3fa85f64-5717-4562-b3fc-2c963f66afa6",
                    "lines": [_LINE_EXAMPLE],
                    "validity_days": 1,
                },
            )
        ],
    )
    def post(self, request: Request) -> Response:
        data = PrescriptionInput(data=request.data)
        data.is_valid(raise_exception=True)
        v = data.validated_data
        draft = prescription_create(
            user=request_account(request),
            consultation_id=v["consultation"],
            lines=[dict(line) for line in v["lines"]],
            validity_days=v["validity_days"],
            chronic_reason=v.get("chronic_reason", ""),
            guardian=dict(v["guardian"]) if v.get("guardian") else None,
            specialist=dict(v["specialist"]) if v.get("specialist") else None,
            diagnoses=[dict(d) for d in v.get("diagnoses", [])] or None,
            meta=RequestMeta.from_request(request),
        )
        return Response(
            _detail(request, draft.prescription.pk, draft.checks, acted_on=draft.prescription),
            status=201,
        )


class PrescriptionDetailApi(ApiView):
    permission_classes = [IsPractitioner]

    @extend_schema(
        operation_id="console_prescriptions_retrieve",
        responses={200: ConsolePrescriptionOutput},
    )
    def get(self, request: Request, prescription_id: UUID) -> Response:
        body = _detail(request, prescription_id)
        read_recorded(request, "prescription", prescription_id)
        return Response(body)

    @extend_schema(
        operation_id="console_prescriptions_update",
        request=PrescriptionPatchInput,
        responses={200: ConsolePrescriptionOutput},
    )
    def patch(self, request: Request, prescription_id: UUID) -> Response:
        data = PrescriptionPatchInput(data=request.data)
        data.is_valid(raise_exception=True)
        v = data.validated_data
        draft = prescription_update(
            user=request_account(request),
            prescription_id=prescription_id,
            lines=[dict(line) for line in v["lines"]] if "lines" in v else None,
            validity_days=v.get("validity_days"),
            chronic_reason=v.get("chronic_reason"),
            guardian=dict(v["guardian"]) if v.get("guardian") else None,
            specialist=dict(v["specialist"]) if v.get("specialist") else None,
            diagnoses=[dict(d) for d in v.get("diagnoses", [])] or None,
            fields=frozenset(k for k in v if k in request.data),
            meta=RequestMeta.from_request(request),
        )
        return Response(_detail(request, prescription_id, draft.checks))


class SignApi(ApiView):
    permission_classes = [IsPractitioner]

    @extend_schema(
        operation_id="console_prescriptions_sign",
        request=OtpInput,
        responses={200: ConsolePrescriptionOutput},
    )
    def post(self, request: Request, prescription_id: UUID) -> Response:
        data = OtpInput(data=request.data)
        data.is_valid(raise_exception=True)
        signed = prescription_sign(
            user=request_account(request),
            prescription_id=prescription_id,
            otp=data.validated_data.get("otp"),
            machine_credential=_machine(request),
            meta=RequestMeta.from_request(request),
        )
        return Response(_detail(request, prescription_id, acted_on=signed))


class ReviewsApi(AuditedListApiView):
    """The pharmacist's review queue: prescriptions of their hospital waiting for
    review, oldest first."""

    permission_classes = [IsPractitioner]
    serializer_class = PrescriptionStateSerializer
    pagination_class = OldestFirst
    audit_object_type = "prescription"

    def get_queryset(self) -> QuerySet[Prescription]:
        practitioner = _practitioner(self.request)
        if practitioner.kind != PractitionerKind.PHARMACIST:
            raise DomainError("permission_denied", "The review queue is for pharmacists.")
        return review_queue(practitioner=practitioner)

    @extend_schema(
        operation_id="console_reviews_list", responses={200: PrescriptionOutput(many=True)}
    )
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)


class ApproveApi(ApiView):
    permission_classes = [IsPractitioner]

    @extend_schema(
        operation_id="console_prescriptions_approve",
        request=OtpInput,
        responses={200: ConsolePrescriptionOutput},
    )
    def post(self, request: Request, prescription_id: UUID) -> Response:
        data = OtpInput(data=request.data)
        data.is_valid(raise_exception=True)
        approved = prescription_approve(
            user=request_account(request),
            prescription_id=prescription_id,
            otp=data.validated_data.get("otp"),
            machine_credential=_machine(request),
            meta=RequestMeta.from_request(request),
        )
        return Response(_detail(request, prescription_id, acted_on=approved))


class RejectApi(ApiView):
    permission_classes = [IsPractitioner]

    @extend_schema(
        operation_id="console_prescriptions_reject",
        request=ReasonInput,
        responses={200: ConsolePrescriptionOutput},
    )
    def post(self, request: Request, prescription_id: UUID) -> Response:
        data = ReasonInput(data=request.data)
        data.is_valid(raise_exception=True)
        prescription_reject(
            user=request_account(request),
            prescription_id=prescription_id,
            reason=data.validated_data["reason"],
            meta=RequestMeta.from_request(request),
        )
        return Response(_detail(request, prescription_id))


class ReviseApi(ApiView):
    permission_classes = [IsPractitioner]

    @extend_schema(
        operation_id="console_prescriptions_revise",
        request=None,
        responses={200: ConsolePrescriptionOutput},
    )
    def post(self, request: Request, prescription_id: UUID) -> Response:
        prescription_revise(
            user=request_account(request),
            prescription_id=prescription_id,
            meta=RequestMeta.from_request(request),
        )
        return Response(_detail(request, prescription_id))


class CancelApi(ApiView):
    permission_classes = [IsPractitioner]

    @extend_schema(
        operation_id="console_prescriptions_cancel",
        request=ReasonInput,
        responses={200: ConsolePrescriptionOutput, 202: ConsolePrescriptionOutput},
        description=(
            "Cancel before a pharmacy claims it. While a pharmacy holds a claim the answer "
            "is 202: the cancel is pending, the pharmacy is told and cannot dispense, and "
            "it takes effect when the claim is released."
        ),
    )
    def post(self, request: Request, prescription_id: UUID) -> Response:
        data = ReasonInput(data=request.data)
        data.is_valid(raise_exception=True)
        outcome = prescription_cancel(
            user=request_account(request),
            prescription_id=prescription_id,
            reason=data.validated_data["reason"],
            meta=RequestMeta.from_request(request),
        )
        return Response(_detail(request, prescription_id), status=202 if outcome.pending else 200)


class BundleApi(ApiView):
    permission_classes = [IsPractitioner]

    @extend_schema(operation_id="console_prescriptions_bundle", responses={200: BundleOutput})
    def get(self, request: Request, prescription_id: UUID) -> Response:
        account = request_account(request)
        prescription = prescription_visible_to(user=account, prescription_id=prescription_id)
        read_recorded(request, "prescription", prescription.pk, part="bundle")
        return Response(prescription_bundle_of(prescription=prescription))


class DrugOutput(serializers.ModelSerializer[Drug]):
    controlled = serializers.BooleanField(source="is_controlled", read_only=True)

    class Meta:
        model = Drug
        fields = (
            "id",
            "code",
            "generic_name",
            "trade_name",
            "specification",
            "dosage_form",
            "unit",
            "route",
            "rx_class",
            "control_class",
            "controlled",
            "unit_price",
        )


class ByDrugCode(CursorPage):
    ordering = ("code", "id")


class DrugSearchApi(ListApiView):
    """The active drug catalogue searched by code prefix or by a part of the generic or
    trade name, in code order (for the prescription editor). Specially controlled drugs
    are listed and marked: the rule checks refuse them, and the refusal is recorded."""

    permission_classes = [IsPractitioner]
    serializer_class = DrugOutput
    pagination_class = ByDrugCode

    @extend_schema(
        operation_id="console_drugs_search",
        parameters=[
            OpenApiParameter(
                "q", str, required=True, description="Code prefix or a part of the name"
            )
        ],
    )
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)

    def get_queryset(self) -> QuerySet[Drug]:
        query = self.request.query_params.get("q", "").strip()[:64]
        if not query:
            return Drug.objects.none()
        return Drug.objects.filter(is_active=True).filter(
            Q(code__istartswith=query)
            | Q(generic_name__icontains=query)
            | Q(trade_name__icontains=query)
        )
