"""Patients' side of consultations: request, list, detail, cancel."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from django.db.models import QuerySet
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, extend_schema
from rest_framework.request import Request
from rest_framework.response import Response

from backend.api.pagination import CursorPage
from backend.api.problems import DomainError
from backend.api.views import ApiView, ListApiView
from backend.audit.services import RequestMeta
from backend.identity.authentication import request_account
from backend.organisations.models import Department, Practitioner
from backend.patients.models import PatientProfile
from consultations.models import Consultation, PriorDiagnosis
from consultations.selectors import consultation_visible_to, consultations_of_account
from consultations.serializers import (
    ConsultationOutput,
    ConsultationRequestInput,
    ConsultationStateSerializer,
    OptionalReasonInput,
    consultation_state,
)
from consultations.services import consultation_cancel, consultation_request
from mobile_api.permissions import IsPatient


class ByRequestTime(CursorPage):
    ordering = ("-requested_at", "id")


def _get(model: Any, pk: Any, field: str) -> Any:
    if pk is None:
        return None
    found = model.objects.filter(pk=pk).first()
    if found is None:
        raise DomainError("validation_error", f"Unknown {field}.", errors={field: ["Not found."]})
    return found


class ConsultationsApi(ListApiView):
    permission_classes = [IsPatient]
    serializer_class = ConsultationStateSerializer
    pagination_class = ByRequestTime

    def get_queryset(self) -> QuerySet[Consultation]:
        qs = consultations_of_account(account=request_account(self.request))
        status = self.request.query_params.get("status")
        return qs.filter(status=status) if status else qs

    @extend_schema(
        operation_id="consultations_list",
        responses={200: ConsultationOutput(many=True)},
        parameters=[OpenApiParameter("status", str)],
    )
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)

    @extend_schema(
        operation_id="consultations_create",
        request=ConsultationRequestInput,
        responses={201: ConsultationOutput},
        examples=[
            OpenApiExample(
                "Follow-up in a department's queue",
                request_only=True,
                value={
                    "profile": "3fa85f64-5717-4562-b3fc-2c963f66afa6",
                    "department": "9b2d7c1e-0f5a-4c3b-8e51-1f0c2d3e4a5b",
                    "complaint": "血压控制尚可，需要续方",
                    "mode": "text",
                },
            )
        ],
    )
    def post(self, request: Request) -> Response:
        data = ConsultationRequestInput(data=request.data)
        data.is_valid(raise_exception=True)
        v = data.validated_data
        account = request_account(request)
        profile = PatientProfile.objects.filter(pk=v["profile"], account=account).first()
        if profile is None:
            raise DomainError(
                "validation_error",
                "Unknown profile.",
                errors={"profile": ["Not a profile of this account."]},
            )
        consultation = consultation_request(
            account=account,
            profile=profile,
            department=_get(Department, v["department"], "department"),
            doctor=_get(Practitioner, v.get("doctor"), "doctor"),
            prior_diagnosis=_get(PriorDiagnosis, v.get("prior_diagnosis"), "prior_diagnosis"),
            complaint=v.get("complaint", ""),
            mode=v["mode"],
            meta=RequestMeta.from_request(request),
        )
        fresh = consultation_visible_to(user=account, consultation_id=consultation.pk)
        return Response(consultation_state(fresh), status=201)


class ConsultationDetailApi(ApiView):
    permission_classes = [IsPatient]

    @extend_schema(operation_id="consultations_retrieve", responses={200: ConsultationOutput})
    def get(self, request: Request, consultation_id: UUID) -> Response:
        consultation = consultation_visible_to(
            user=request_account(request), consultation_id=consultation_id
        )
        return Response(consultation_state(consultation))


class ConsultationCancelApi(ApiView):
    permission_classes = [IsPatient]

    @extend_schema(
        operation_id="consultations_cancel",
        request=OptionalReasonInput,
        responses={200: ConsultationOutput},
    )
    def post(self, request: Request, consultation_id: UUID) -> Response:
        data = OptionalReasonInput(data=request.data)
        data.is_valid(raise_exception=True)
        account = request_account(request)
        consultation_visible_to(user=account, consultation_id=consultation_id)
        consultation_cancel(
            consultation_id=consultation_id,
            account=account,
            reason=data.validated_data.get("reason", ""),
            meta=RequestMeta.from_request(request),
        )
        return Response(
            consultation_state(
                consultation_visible_to(user=account, consultation_id=consultation_id)
            )
        )
