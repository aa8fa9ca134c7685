"""Patients' side of prescriptions: list, detail with history and the signed bundle,
the access code and its QR image once a pharmacist approved it, the choice of pick-up
or delivery, delivery tracking, cancel, and the pharmacies to choose from."""

from __future__ import annotations

import io
from typing import Any
from uuid import UUID

import segno
from django.db.models import QuerySet
from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from backend.api.pagination import CursorPage
from backend.api.params import query_uuid
from backend.api.problems import DomainError
from backend.api.views import ApiView, ListApiView
from backend.audit.services import RequestMeta, audit_record
from backend.identity.authentication import request_account
from backend.organisations.models import Pharmacy
from consultations.serializers import OptionalReasonInput
from mobile_api.permissions import IsPatient
from prescriptions.models import Prescription
from prescriptions.selectors import (
    access_code_refusal,
    prescription_bundle_or_none,
    prescription_history,
    prescription_visible_to,
    prescriptions_of_account,
)
from prescriptions.serializers import (
    BundleOutput,
    EventOutput,
    FulfilmentInput,
    PrescriptionOutput,
    PrescriptionStateSerializer,
    delivery_address,
    event_state,
    prescription_state,
)
from prescriptions.services import prescription_cancel, prescription_fulfilment_choose

#: What the QR code carries: the prescription id and the access code, nothing personal.
QR_PREFIX = "IHRX1"


def qr_payload(prescription: Prescription) -> str:
    return f"{QR_PREFIX}:{prescription.pk}:{prescription.access_code}"


class PatientPrescriptionOutput(PrescriptionOutput):
    history = EventOutput(many=True)
    access_code = serializers.CharField(
        allow_null=True,
        help_text="shown once a pharmacist approved it, while it is claimable and valid",
    )
    qr = serializers.DictField(allow_null=True, help_text="png and svg image URLs")
    delivery_address = serializers.DictField(allow_null=True)
    bundle = BundleOutput(allow_null=True)


def _detail(request: Request, prescription_id: UUID | str) -> dict[str, Any]:
    account = request_account(request)
    prescription = prescription_visible_to(user=account, prescription_id=prescription_id)
    body = prescription_state(prescription)
    body["history"] = [event_state(e) for e in prescription_history(prescription=prescription)]
    claimable = access_code_refusal(prescription=prescription) is None
    body["access_code"] = prescription.access_code if claimable else None
    base = request.build_absolute_uri(f"/api/mobile/v1/prescriptions/{prescription.pk}/")
    body["qr"] = {"png": base + "qr.png", "svg": base + "qr.svg"} if claimable else None
    body["delivery_address"] = delivery_address(prescription)
    body["bundle"] = prescription_bundle_or_none(prescription=prescription)
    return body


class Newest(CursorPage):
    ordering = ("-created_at", "id")


class PatientPrescriptionsApi(ListApiView):
    permission_classes = [IsPatient]
    serializer_class = PrescriptionStateSerializer
    pagination_class = Newest

    def get_queryset(self) -> QuerySet[Prescription]:
        qs = prescriptions_of_account(account=request_account(self.request))
        status = self.request.query_params.get("status")
        return qs.filter(status=status) if status else qs

    @extend_schema(
        operation_id="prescriptions_list",
        parameters=[OpenApiParameter("status", str)],
        responses={200: PrescriptionOutput(many=True)},
    )
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)


class PatientPrescriptionApi(ApiView):
    permission_classes = [IsPatient]

    @extend_schema(
        operation_id="prescriptions_retrieve", responses={200: PatientPrescriptionOutput}
    )
    def get(self, request: Request, prescription_id: UUID) -> Response:
        return Response(_detail(request, prescription_id))


class _QrApi(ApiView):
    permission_classes = [IsPatient]
    kind = "png"

    def get(self, request: Request, prescription_id: UUID) -> HttpResponse:
        account = request_account(request)
        prescription = prescription_visible_to(user=account, prescription_id=prescription_id)
        refusal = access_code_refusal(prescription=prescription)
        if refusal is not None:
            raise refusal
        audit_record(
            action="prescription.qr_viewed",
            actor=account,
            object_type="prescription",
            object_id=prescription.pk,
            meta=RequestMeta.from_request(request),
        )
        out = io.BytesIO()
        qr = segno.make(qr_payload(prescription), error="m")
        if self.kind == "png":
            qr.save(out, kind="png", scale=8, border=4)
            content_type = "image/png"
        else:
            qr.save(out, kind="svg", scale=8, border=4, xmldecl=False)
            content_type = "image/svg+xml"
        response = HttpResponse(out.getvalue(), content_type=content_type)
        response["Cache-Control"] = "private, no-store"
        return response


class QrPngApi(_QrApi):
    kind = "png"

    @extend_schema(
        operation_id="prescriptions_qr_png", responses={(200, "image/png"): OpenApiTypes.BINARY}
    )
    def get(self, request: Request, prescription_id: UUID) -> HttpResponse:
        return super().get(request, prescription_id)


class QrSvgApi(_QrApi):
    kind = "svg"

    @extend_schema(
        operation_id="prescriptions_qr_svg", responses={(200, "image/svg+xml"): OpenApiTypes.STR}
    )
    def get(self, request: Request, prescription_id: UUID) -> HttpResponse:
        return super().get(request, prescription_id)


class FulfilmentApi(ApiView):
    permission_classes = [IsPatient]

    @extend_schema(
        operation_id="prescriptions_fulfilment",
        request=FulfilmentInput,
        responses={200: PatientPrescriptionOutput},
    )
    def post(self, request: Request, prescription_id: UUID) -> Response:
        data = FulfilmentInput(data=request.data)
        data.is_valid(raise_exception=True)
        v = data.validated_data
        pharmacy = None
        if v.get("pharmacy"):
            # A closed one goes to the service, which says so ("Choose an open pharmacy.").
            pharmacy = Pharmacy.objects.filter(pk=v["pharmacy"]).first()
            if pharmacy is None:
                raise DomainError(
                    "validation_error", "Unknown pharmacy.", errors={"pharmacy": ["Not found."]}
                )
        prescription_fulfilment_choose(
            account=request_account(request),
            prescription_id=prescription_id,
            method=v["method"],
            pharmacy=pharmacy,
            address=dict(v["address"]) if v.get("address") else None,
            meta=RequestMeta.from_request(request),
        )
        return Response(_detail(request, prescription_id))


class PatientCancelApi(ApiView):
    permission_classes = [IsPatient]

    @extend_schema(
        operation_id="prescriptions_cancel",
        request=OptionalReasonInput,
        responses={200: PatientPrescriptionOutput, 202: PatientPrescriptionOutput},
    )
    def post(self, request: Request, prescription_id: UUID) -> Response:
        data = OptionalReasonInput(data=request.data)
        data.is_valid(raise_exception=True)
        outcome = prescription_cancel(
            user=request_account(request),
            prescription_id=prescription_id,
            reason=data.validated_data.get("reason") or "cancelled by the patient",
            meta=RequestMeta.from_request(request),
        )
        return Response(_detail(request, prescription_id), status=202 if outcome.pending else 200)


class PharmacyOutput(serializers.ModelSerializer):  # type: ignore[type-arg]
    province = serializers.CharField(source="province.name")

    class Meta:
        model = Pharmacy
        fields = ["id", "code", "name", "province", "address"]


class ByCode(CursorPage):
    ordering = ("code", "id")


class PharmaciesApi(ListApiView):
    permission_classes = [IsPatient]
    serializer_class = PharmacyOutput
    pagination_class = ByCode

    def get_queryset(self) -> QuerySet[Pharmacy]:
        qs = Pharmacy.objects.filter(is_active=True).select_related("province")
        hospital = query_uuid(self.request, "hospital")
        if hospital is not None:
            qs = qs.filter(province__hospitals=hospital)
        return qs

    @extend_schema(
        operation_id="pharmacies_list",
        parameters=[OpenApiParameter("hospital", OpenApiTypes.UUID, description="same province")],
    )
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)
