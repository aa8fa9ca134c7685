"""The prescription as FHIR R4 (``prescriptions.fhir``), for each audience that may read
it: the console (its doctor, the hospital's pharmacists), the claiming pharmacy and the
patient. Who may read is answered by the same selectors as the other read endpoints."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar
from uuid import UUID

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework.permissions import BasePermission
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response

from backend.api.views import ApiView, read_recorded
from backend.identity.authentication import request_account
from backend.identity.models import Role
from prescriptions.fhir import prescription_fhir_bundle
from prescriptions.pharmacy_api import READ_ERRORS, PharmacyApiView, pharmacy_read
from prescriptions.selectors import prescription_visible_to
from prescriptions.services import prescription_for_pharmacy

FHIR_JSON = "application/fhir+json"

_View = TypeVar("_View", bound=Callable[..., Response])


class FhirJsonRenderer(JSONRenderer):
    """FHIR's JSON media type; plain ``application/json`` is served on request."""

    media_type = FHIR_JSON
    format = "fhir"


class _HasRole(BasePermission):
    roles: frozenset[str] = frozenset()

    def has_permission(self, request: Request, view: Any) -> bool:
        user = request.user
        return bool(user and user.is_authenticated and getattr(user, "role", None) in self.roles)


class IsDoctorOrPharmacist(_HasRole):
    message = "This is for doctors and pharmacists."
    roles = frozenset({Role.DOCTOR, Role.PHARMACIST})


class IsPatient(_HasRole):
    message = "This part of the API is for patients."
    roles = frozenset({Role.PATIENT})


def _schema(
    operation_id: str, audience: str, errors: dict[Any, OpenApiResponse] | None = None
) -> Callable[[_View], _View]:
    return extend_schema(
        operation_id=operation_id,
        description=(
            f"The prescription as a FHIR R4 (4.0.1) Bundle of type `collection`, for "
            f"{audience}: Patient (no ID number), Organization, Practitioner, one "
            "MedicationRequest per line, one MedicationDispense per dispensed line, and "
            "Provenance resources carrying the doctor's signature, the pharmacist's "
            "countersignature and the hospital's seal over the dispense receipt. Verify "
            "signatures with the signed bundle (`…/bundle`)."
        ),
        responses={
            **{
                (200, media_type): OpenApiResponse(
                    OpenApiTypes.OBJECT, description="FHIR R4 Bundle"
                )
                for media_type in (FHIR_JSON, "application/json")
            },
            **(errors or {}),
        },
    )


class ConsoleFhirApi(ApiView):
    permission_classes = [IsDoctorOrPharmacist]
    renderer_classes = [FhirJsonRenderer, JSONRenderer]

    @_schema("console_prescriptions_fhir", "its doctor and the hospital's pharmacists")
    def get(self, request: Request, prescription_id: UUID) -> Response:
        account = request_account(request)
        prescription = prescription_visible_to(user=account, prescription_id=prescription_id)
        read_recorded(request, "prescription", prescription.pk, part="fhir")
        return Response(prescription_fhir_bundle(prescription=prescription))


class PharmacyFhirApi(PharmacyApiView):
    renderer_classes = [FhirJsonRenderer, JSONRenderer]

    @_schema("pharmacy_prescriptions_fhir", "the pharmacy that claimed it", READ_ERRORS)
    def get(self, request: Request, prescription_id: UUID) -> Response:
        prescription = prescription_for_pharmacy(
            user=request_account(request), prescription_id=prescription_id
        )
        pharmacy_read(request, prescription, "fhir")
        return Response(prescription_fhir_bundle(prescription=prescription))


class PatientFhirApi(ApiView):
    permission_classes = [IsPatient]
    renderer_classes = [FhirJsonRenderer, JSONRenderer]

    @_schema("prescriptions_fhir", "the patient (or the guardian's account)")
    def get(self, request: Request, prescription_id: UUID) -> Response:
        prescription = prescription_visible_to(
            user=request_account(request), prescription_id=prescription_id
        )
        return Response(prescription_fhir_bundle(prescription=prescription))
