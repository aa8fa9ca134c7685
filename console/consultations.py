"""Doctors' side of consultations: identity check, duty, queue, the patient summary,
accept, end (with the ICD-10 search), refer, refuse as a first visit."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from django.db.models import QuerySet
from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from backend.api.pagination import CursorPage
from backend.api.problems import DomainError
from backend.api.views import ApiView, AuditedListApiView, ListApiView, read_recorded
from backend.audit.services import RequestMeta
from backend.identity.authentication import request_account
from backend.organisations.models import Practitioner
from backend.organisations.services import practitioner_identity_check, practitioner_set_duty
from backend.patients.selectors import age_on
from console.permissions import IsConsoleUser, IsPractitioner
from consultations.models import Consultation, Icd10Code
from consultations.selectors import (
    consultation_visible_to,
    consultations_of_doctor,
    earlier_consultations,
    icd10_search,
)
from consultations.serializers import (
    AcceptInput,
    ConsultationOutput,
    ConsultationStateSerializer,
    EndInput,
    ReasonInput,
    consultation_state,
)
from consultations.services import (
    consultation_accept,
    consultation_end,
    consultation_refer_offline,
    consultation_refuse_first_visit,
)


def _practitioner(request: Request) -> Practitioner:
    practitioner = (
        Practitioner.objects.select_related("hospital", "user")
        .filter(user=request_account(request))
        .first()
    )
    if practitioner is None:
        raise DomainError("permission_denied", "Only doctors and pharmacists can do this.")
    return practitioner


class IdentityCheckOutput(serializers.Serializer):  # type: ignore[type-arg]
    passed = serializers.BooleanField()
    provider = serializers.CharField()
    reference = serializers.CharField()
    message = serializers.CharField()
    checked_at = serializers.DateTimeField(allow_null=True)


class IdentityCheckApi(ApiView):
    permission_classes = [IsPractitioner]

    @extend_schema(
        operation_id="console_identity_check", request=None, responses={200: IdentityCheckOutput}
    )
    def post(self, request: Request) -> Response:
        practitioner = _practitioner(request)
        outcome = practitioner_identity_check(
            practitioner=practitioner, meta=RequestMeta.from_request(request)
        )
        return Response(
            {
                "passed": outcome.passed,
                "provider": outcome.provider,
                "reference": outcome.reference,
                "message": outcome.message,
                "checked_at": practitioner.last_identity_check_at,
            }
        )


class DutyInput(serializers.Serializer):  # type: ignore[type-arg]
    on_duty = serializers.BooleanField()


class DutyStatusOutput(serializers.Serializer):  # type: ignore[type-arg]
    on_duty = serializers.BooleanField()
    identity_checked_at = serializers.DateTimeField(
        allow_null=True, help_text="The last passed identity check"
    )


class DutyApi(ApiView):
    permission_classes = [IsPractitioner]

    @extend_schema(operation_id="console_duty_retrieve", responses={200: DutyStatusOutput})
    def get(self, request: Request) -> Response:
        practitioner = _practitioner(request)
        return Response(
            DutyStatusOutput(
                {
                    "on_duty": practitioner.on_duty,
                    "identity_checked_at": practitioner.last_identity_check_at,
                }
            ).data
        )

    @extend_schema(operation_id="console_duty", request=DutyInput, responses={200: DutyInput})
    def post(self, request: Request) -> Response:
        data = DutyInput(data=request.data)
        data.is_valid(raise_exception=True)
        practitioner = practitioner_set_duty(
            practitioner=_practitioner(request),
            on_duty=data.validated_data["on_duty"],
            meta=RequestMeta.from_request(request),
        )
        return Response({"on_duty": practitioner.on_duty})


class OldestFirst(CursorPage):
    ordering = ("requested_at", "id")


class QueueApi(AuditedListApiView):
    """The doctor's queue (waiting in their department or asked of them) and their own
    consultations, oldest first; ``?status=`` narrows it. Its rows carry complaints and
    diagnoses: each page read is recorded."""

    permission_classes = [IsPractitioner]
    audit_object_type = "consultation"
    serializer_class = ConsultationStateSerializer
    pagination_class = OldestFirst

    @extend_schema(
        operation_id="console_consultations_list",
        parameters=[OpenApiParameter("status", str)],
        responses={200: ConsultationOutput(many=True)},
    )
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)

    def get_queryset(self) -> QuerySet[Consultation]:
        return consultations_of_doctor(
            practitioner=_practitioner(self.request), status=self.request.query_params.get("status")
        )


class ConsoleConsultationDetailApi(ApiView):
    permission_classes = [IsPractitioner]

    @extend_schema(
        operation_id="console_consultations_retrieve", responses={200: ConsultationOutput}
    )
    def get(self, request: Request, consultation_id: UUID) -> Response:
        account = request_account(request)
        consultation = consultation_visible_to(user=account, consultation_id=consultation_id)
        read_recorded(request, "consultation", consultation.pk)
        return Response(consultation_state(consultation))


class PriorDiagnosisSummary(serializers.Serializer):  # type: ignore[type-arg]
    id = serializers.UUIDField()
    institution = serializers.CharField()
    diagnosed_on = serializers.DateField()
    icd10_code = serializers.CharField()
    icd10_name = serializers.CharField()
    diagnosis_text = serializers.CharField(allow_blank=True)


class EarlierConsultationOutput(serializers.Serializer):  # type: ignore[type-arg]
    id = serializers.UUIDField()
    status = serializers.CharField()
    requested_at = serializers.DateTimeField()
    closed_at = serializers.DateTimeField(allow_null=True)
    department = serializers.CharField(source="department.name")
    doctor = serializers.CharField(source="doctor.user.display_name", allow_null=True)
    diagnoses = serializers.ListField(child=serializers.DictField())


class PatientSummaryOutput(serializers.Serializer):  # type: ignore[type-arg]
    profile = serializers.UUIDField()
    name = serializers.CharField()
    sex = serializers.CharField()
    birth_date = serializers.DateField()
    age = serializers.IntegerField(help_text="Completed years today")
    relation = serializers.CharField()
    allergies = serializers.ListField(child=serializers.CharField())
    prior_diagnosis = PriorDiagnosisSummary(allow_null=True)
    earlier_consultations = EarlierConsultationOutput(many=True)


class PatientSummaryApi(ApiView):
    """What the doctor needs to know about the patient of a consultation they may see:
    age, allergies, the prior offline diagnosis and earlier consultations here."""

    permission_classes = [IsPractitioner]

    @extend_schema(
        operation_id="console_consultations_patient", responses={200: PatientSummaryOutput}
    )
    def get(self, request: Request, consultation_id: UUID) -> Response:
        account = request_account(request)
        consultation = consultation_visible_to(user=account, consultation_id=consultation_id)
        profile = consultation.profile
        read_recorded(request, "patient_profile", profile.pk, consultation=str(consultation.pk))
        return Response(
            PatientSummaryOutput(
                {
                    "profile": profile.pk,
                    "name": profile.real_name,
                    "sex": profile.sex,
                    "birth_date": profile.birth_date,
                    "age": age_on(profile.birth_date, timezone.localdate()),
                    "relation": profile.relation,
                    "allergies": list(profile.allergies or []),
                    "prior_diagnosis": consultation.prior_diagnosis,
                    "earlier_consultations": earlier_consultations(consultation=consultation),
                }
            ).data
        )


class Icd10Output(serializers.Serializer):  # type: ignore[type-arg]
    code = serializers.CharField()
    name = serializers.CharField(source="display_name")
    name_zh = serializers.CharField(allow_blank=True)
    name_en = serializers.CharField()
    kind = serializers.CharField()


class ByCode(CursorPage):
    ordering = ("code",)


class Icd10SearchApi(ListApiView):
    """The ICD-10 table searched by code prefix or by a part of the name, in code order
    (for the diagnosis of a consultation)."""

    permission_classes = [IsConsoleUser]
    serializer_class = Icd10Output
    pagination_class = ByCode

    @extend_schema(
        operation_id="console_icd10_search",
        parameters=[
            OpenApiParameter("q", str, required=True, description="Code prefix or name part")
        ],
    )
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)

    def get_queryset(self) -> QuerySet[Icd10Code]:
        return icd10_search(query=self.request.query_params.get("q", ""))


def _answer(request: Request, consultation_id: UUID) -> Response:
    return Response(
        consultation_state(
            consultation_visible_to(user=request_account(request), consultation_id=consultation_id)
        )
    )


class AcceptApi(ApiView):
    permission_classes = [IsPractitioner]

    @extend_schema(
        operation_id="console_consultations_accept",
        request=AcceptInput,
        responses={200: ConsultationOutput},
    )
    def post(self, request: Request, consultation_id: UUID) -> Response:
        data = AcceptInput(data=request.data)
        data.is_valid(raise_exception=True)
        consultation_accept(
            consultation_id=consultation_id,
            user=request_account(request),
            follow_up_confirmed=data.validated_data["follow_up_confirmed"],
            meta=RequestMeta.from_request(request),
        )
        return _answer(request, consultation_id)


class EndApi(ApiView):
    permission_classes = [IsPractitioner]

    @extend_schema(
        operation_id="console_consultations_end",
        request=EndInput,
        responses={200: ConsultationOutput},
    )
    def post(self, request: Request, consultation_id: UUID) -> Response:
        data = EndInput(data=request.data)
        data.is_valid(raise_exception=True)
        v = data.validated_data
        consultation_end(
            consultation_id=consultation_id,
            user=request_account(request),
            diagnoses=v["diagnoses"],
            note=dict(v["note"]),
            fee=v["fee"],
            meta=RequestMeta.from_request(request),
        )
        return _answer(request, consultation_id)


# Stopping a consultation with a recorded reason (DOMAIN rule 4): one view shape, the
# service differs. (A comment, not a docstring: docstrings become API descriptions.)
class _StopWithReasonApi(ApiView):
    permission_classes = [IsPractitioner]
    service: Any = None

    def post(self, request: Request, consultation_id: UUID) -> Response:
        data = ReasonInput(data=request.data)
        data.is_valid(raise_exception=True)
        type(self).service(
            consultation_id=consultation_id,
            user=request_account(request),
            reason=data.validated_data["reason"],
            meta=RequestMeta.from_request(request),
        )
        return _answer(request, consultation_id)


@extend_schema_view(
    post=extend_schema(
        operation_id="console_consultations_refer_offline",
        request=ReasonInput,
        responses={200: ConsultationOutput},
    )
)
class ReferOfflineApi(_StopWithReasonApi):
    service = consultation_refer_offline


@extend_schema_view(
    post=extend_schema(
        operation_id="console_consultations_refuse_first_visit",
        request=ReasonInput,
        responses={200: ConsultationOutput},
    )
)
class RefuseFirstVisitApi(_StopWithReasonApi):
    service = consultation_refuse_first_visit
