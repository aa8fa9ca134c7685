"""Patients' own data: profiles (the account holder and dependants) and prior
offline diagnoses (``records``)."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from django.db.models import QuerySet
from drf_spectacular.utils import OpenApiExample, extend_schema
from rest_framework import serializers
from rest_framework.parsers import JSONParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response

from backend.api.problems import DomainError
from backend.api.views import ApiView, ListApiView
from backend.audit.services import RequestMeta
from backend.identity.authentication import request_account
from backend.identity.selectors import phone_masked
from backend.patients.models import IdDocumentType, PatientProfile, Relation, Sex
from backend.patients.services import patient_profile_create, patient_profile_update_allergies
from consultations.models import PriorDiagnosis
from consultations.selectors import prior_diagnoses_of_account
from consultations.serializers import PriorDiagnosisInput, PriorDiagnosisOutput
from consultations.services import prior_diagnosis_create
from mobile_api.permissions import IsPatient


class ProfileOutput(serializers.ModelSerializer):  # type: ignore[type-arg]
    id_number = serializers.SerializerMethodField(help_text="Masked")
    phone = serializers.SerializerMethodField(help_text="Masked")

    class Meta:
        model = PatientProfile
        fields = [
            "id",
            "relation",
            "real_name",
            "id_type",
            "id_number",
            "birth_date",
            "sex",
            "phone",
            "allergies",
            "created_at",
        ]

    def get_id_number(self, obj: PatientProfile) -> str:
        value = obj.id_number or ""
        return (
            f"{value[:3]}{'*' * max(len(value) - 7, 0)}{value[-4:]}" if len(value) > 7 else "****"
        )

    def get_phone(self, obj: PatientProfile) -> str | None:
        return phone_masked(obj.phone)


class ProfileInput(serializers.Serializer):  # type: ignore[type-arg]
    relation = serializers.ChoiceField(choices=Relation.values, default=Relation.SELF)
    real_name = serializers.CharField(max_length=100)
    id_type = serializers.ChoiceField(choices=IdDocumentType.values)
    id_number = serializers.CharField(max_length=40)
    birth_date = serializers.DateField()
    sex = serializers.ChoiceField(choices=Sex.values)
    phone = serializers.CharField(max_length=20, required=False, allow_blank=True)
    allergies = serializers.ListField(
        child=serializers.CharField(max_length=100), required=False, max_length=50
    )
    consent = serializers.BooleanField(
        help_text="Consent to process this sensitive personal information (a guardian's for "
        "a dependant)"
    )


class AllergiesInput(serializers.Serializer):  # type: ignore[type-arg]
    allergies = serializers.ListField(child=serializers.CharField(max_length=100), max_length=50)


def _own_profile(request: Request, profile_id: UUID | str) -> PatientProfile:
    profile = PatientProfile.objects.filter(pk=profile_id, account=request_account(request)).first()
    if profile is None:
        raise DomainError("not_found", "No such patient profile on this account.")
    return profile


class ProfilesApi(ListApiView):
    permission_classes = [IsPatient]
    serializer_class = ProfileOutput

    def get_queryset(self) -> QuerySet[PatientProfile]:
        return PatientProfile.objects.filter(account=request_account(self.request))

    @extend_schema(
        operation_id="profiles_create",
        request=ProfileInput,
        responses={201: ProfileOutput},
        examples=[
            OpenApiExample(
                "A child under the guardian's account",
                request_only=True,
                value={
                    "relation": "child",
                    "real_name": "刘小宝",
                    "id_type": "resident_id",
                    "id_number": "330102202201053451",
                    "birth_date": "2022-01-05",
                    "sex": "male",
                    "allergies": ["头孢类"],
                    "consent": True,
                },
            )
        ],
    )
    def post(self, request: Request) -> Response:
        data = ProfileInput(data=request.data)
        data.is_valid(raise_exception=True)
        profile = patient_profile_create(
            account=request_account(request),
            meta=RequestMeta.from_request(request),
            **data.validated_data,
        )
        return Response(ProfileOutput(profile).data, status=201)


class ProfileDetailApi(ApiView):
    permission_classes = [IsPatient]

    @extend_schema(operation_id="profiles_retrieve", responses={200: ProfileOutput})
    def get(self, request: Request, profile_id: UUID) -> Response:
        return Response(ProfileOutput(_own_profile(request, profile_id)).data)

    @extend_schema(
        operation_id="profiles_update_allergies",
        request=AllergiesInput,
        responses={200: ProfileOutput},
    )
    def patch(self, request: Request, profile_id: UUID) -> Response:
        data = AllergiesInput(data=request.data)
        data.is_valid(raise_exception=True)
        profile = patient_profile_update_allergies(
            account=request_account(request),
            profile=_own_profile(request, profile_id),
            allergies=data.validated_data["allergies"],
            meta=RequestMeta.from_request(request),
        )
        return Response(ProfileOutput(profile).data)


class RecordsApi(ListApiView):
    """Prior offline diagnoses: what makes an online follow-up possible."""

    permission_classes = [IsPatient]
    serializer_class = PriorDiagnosisOutput
    parser_classes = [MultiPartParser, JSONParser]

    def get_queryset(self) -> QuerySet[PriorDiagnosis]:
        return prior_diagnoses_of_account(account=request_account(self.request))

    @extend_schema(
        operation_id="records_create",
        request={
            "multipart/form-data": PriorDiagnosisInput,
            "application/json": PriorDiagnosisInput,
        },
        responses={201: PriorDiagnosisOutput},
        examples=[
            OpenApiExample(
                "Hypertension diagnosed at an outpatient clinic",
                request_only=True,
                value={
                    "profile": "3fa85f64-5717-4562-b3fc-2c963f66afa6",
                    "institution": "浙江大学医学院附属第一医院",
                    "diagnosed_on": "2025-03-02",
                    "icd10_code": "I10",
                    "diagnosis_text": "原发性高血压 2级",
                },
            )
        ],
    )
    def post(self, request: Request) -> Response:
        data = PriorDiagnosisInput(data=request.data)
        data.is_valid(raise_exception=True)
        values: dict[str, Any] = dict(data.validated_data)
        account = request_account(request)
        record = prior_diagnosis_create(
            account=account,
            profile=_own_profile(request, values.pop("profile")),
            meta=RequestMeta.from_request(request),
            **values,
        )
        return Response(PriorDiagnosisOutput(record).data, status=201)


class RecordDetailApi(ApiView):
    permission_classes = [IsPatient]

    @extend_schema(operation_id="records_retrieve", responses={200: PriorDiagnosisOutput})
    def get(self, request: Request, record_id: UUID) -> Response:
        record = (
            prior_diagnoses_of_account(account=request_account(request))
            .filter(pk=record_id)
            .first()
        )
        if record is None:
            raise DomainError("not_found", "No such record.")
        return Response(PriorDiagnosisOutput(record).data)
