"""The pharmacy API (CONTRACT section 5): retail and hospital pharmacies' systems claim a
prescription with the patient's access code, verify its bundle offline, dispense it with
a per-line ledger and report delivery. Machine clients use an API token of a pharmacy
staff account; every mutation accepts ``Idempotency-Key``."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from drf_spectacular.utils import OpenApiExample, extend_schema
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.response import Response

from backend.api.schema import problem_responses
from backend.api.views import ApiView, read_recorded
from backend.audit.services import RequestMeta
from backend.identity.authentication import ApiTokenAuthentication, request_account
from backend.identity.models import Role
from prescriptions import problems as _registered  # noqa: F401  (the codes documented below)
from prescriptions.models import Prescription
from prescriptions.selectors import prescription_bundle_of
from prescriptions.serializers import (
    BundleOutput,
    ClaimInput,
    ClaimOutput,
    DispenseInput,
    PrescriptionOutput,
    ReleaseInput,
    SecretInput,
    ShipInput,
    delivery_address,
    prescription_state,
)
from prescriptions.services import (
    DispenseItem,
    prescription_claim,
    prescription_deliver,
    prescription_dispense,
    prescription_for_pharmacy,
    prescription_release,
    prescription_ship,
)


class IsPharmacyStaff(BasePermission):
    message = "This is for pharmacy staff."

    def has_permission(self, request: Request, view: Any) -> bool:
        user = request.user
        return bool(
            user and user.is_authenticated and getattr(user, "role", None) == Role.PHARMACY_STAFF
        )


class PharmacyApiView(ApiView):
    """A pharmacy system's call: an API token of a pharmacy staff account, nothing else
    (no patient JWT, no console session)."""

    authentication_classes = [ApiTokenAuthentication]
    permission_classes = [IsPharmacyStaff]


#: Every call: the token, and the account behind it.
_AUTH = ("not_authenticated", "authentication_failed", "token_expired", "token_revoked")
_STAFF = ("permission_denied",)
#: Every mutation: the body, and the Idempotency-Key.
_MUTATION = (
    "validation_error",
    "parse_error",
    "idempotency_key_invalid",
    "idempotency_key_in_progress",
    "idempotency_key_reused",
)
#: Acting on a claim (CONTRACT 5): the claim secret, and a prescription that moved on.
_ON_CLAIM = (
    "bad_claim_secret",
    "prescription_state_conflict",
    "prescription_expired",
    "prescription_cancelled",
)
CLAIM_ERRORS = problem_responses(
    *_AUTH,
    *_STAFF,
    *_MUTATION,
    "bad_access_code",
    "already_claimed",
    "not_reviewed",
    "prescription_state_conflict",
    "bundle_invalid",
    "prescription_expired",
    "prescription_cancelled",
)
READ_ERRORS = problem_responses(*_AUTH, *_STAFF, "not_claimant")
DISPENSE_ERRORS = problem_responses(
    *_AUTH, *_STAFF, *_MUTATION, *_ON_CLAIM, "cancel_pending", "dispense_mismatch"
)
CLAIM_ACTION_ERRORS = problem_responses(*_AUTH, *_STAFF, *_MUTATION, *_ON_CLAIM)


def pharmacy_read(request: Request, prescription: Prescription, part: str) -> None:
    """A pharmacy's read of the prescription it holds, recorded (DOMAIN rule 12)."""
    read_recorded(
        request,
        "prescription",
        prescription.pk,
        pharmacy=str(prescription.claimed_by_id),
        part=part,
    )


def _for_pharmacy(
    request: Request, prescription_id: UUID | str, *, acted_on: Prescription | None = None
) -> dict[str, Any]:
    """The pharmacy's view. ``acted_on``: the instance a service just changed (claim,
    dispense) or read (the detail's access check) for this pharmacy, so the answer does
    not read it again."""
    prescription = acted_on or prescription_for_pharmacy(
        user=request_account(request), prescription_id=prescription_id, touch=False
    )
    body = prescription_state(prescription)
    body["delivery_address"] = delivery_address(prescription)
    return body


class ClaimApi(PharmacyApiView):
    @extend_schema(
        operation_id="pharmacy_prescriptions_claim",
        description=(
            "Claim with the patient's access code; the same pharmacy claiming again gets "
            "its secret back. Wrong codes are limited per pharmacy and per prescription: "
            "over the limit every code, right or wrong, is answered 403 `bad_access_code` "
            "with `rate_limited: true`, `retry_after` (seconds, at most) and a "
            "`Retry-After` header. A claim is released when idle for the configured time; "
            "reading the prescription keeps it only while the prescription is valid, so a "
            "claim kept past the validity lapses after the idle time and the prescription "
            "expires (410 `prescription_expired`)."
        ),
        request=ClaimInput,
        responses={200: ClaimOutput, **CLAIM_ERRORS},
        examples=[
            OpenApiExample(
                "Claim with the patient's access code",
                request_only=True,
                value={
                    "prescription_id": "3fa85f64-5717-4562-b3fc-2c963f66afa6",
                    "access_code": "q3Xv1mYc2aH0pJ7kLr9sTw",
                },
            )
        ],
    )
    def post(self, request: Request) -> Response:
        data = ClaimInput(data=request.data)
        data.is_valid(raise_exception=True)
        claim = prescription_claim(
            user=request_account(request),
            prescription_id=data.validated_data["prescription_id"],
            access_code=data.validated_data["access_code"],
            meta=RequestMeta.from_request(request),
        )
        return Response(
            {
                "claim_secret": claim.claim_secret,
                "prescription": _for_pharmacy(
                    request, claim.prescription.pk, acted_on=claim.prescription
                ),
            }
        )


class PharmacyPrescriptionApi(PharmacyApiView):
    @extend_schema(
        operation_id="pharmacy_prescriptions_retrieve",
        responses={200: PrescriptionOutput, **READ_ERRORS},
    )
    def get(self, request: Request, prescription_id: UUID) -> Response:
        account = request_account(request)
        prescription = prescription_for_pharmacy(user=account, prescription_id=prescription_id)
        pharmacy_read(request, prescription, "detail")
        return Response(_for_pharmacy(request, prescription_id, acted_on=prescription))


class PharmacyBundleApi(PharmacyApiView):
    @extend_schema(
        operation_id="pharmacy_prescriptions_bundle", responses={200: BundleOutput, **READ_ERRORS}
    )
    def get(self, request: Request, prescription_id: UUID) -> Response:
        prescription = prescription_for_pharmacy(
            user=request_account(request), prescription_id=prescription_id
        )
        pharmacy_read(request, prescription, "bundle")
        return Response(prescription_bundle_of(prescription=prescription))


class DispenseApi(PharmacyApiView):
    @extend_schema(
        operation_id="pharmacy_prescriptions_dispense",
        description=(
            "Dispense with the per-line ledger; the answer carries the hospital-sealed "
            "receipt. A claim made while the prescription was valid may be dispensed after "
            "midnight until it has been idle for the configured time; after that the claim "
            "has lapsed and the answer is 410 `prescription_expired`."
        ),
        request=DispenseInput,
        responses={200: PrescriptionOutput, **DISPENSE_ERRORS},
        examples=[
            OpenApiExample(
                "Dispense every line",
                request_only=True,
                value={
                    "claim_secret": "…",
                    "items": [{"line": 1, "quantity": 1, "batch_number": "B2026-1102"}],
                    "pharmacist": {"name": "王药师", "licence_number": "YS330100123"},
                },
            )
        ],
    )
    def post(self, request: Request, prescription_id: UUID) -> Response:
        data = DispenseInput(data=request.data)
        data.is_valid(raise_exception=True)
        v = data.validated_data
        dispensed = prescription_dispense(
            user=request_account(request),
            prescription_id=prescription_id,
            claim_secret=v["claim_secret"],
            items=[
                DispenseItem(line=i["line"], quantity=i["quantity"], batch_number=i["batch_number"])
                for i in v["items"]
            ],
            pharmacist_name=v["pharmacist"]["name"],
            pharmacist_licence=v["pharmacist"]["licence_number"],
            meta=RequestMeta.from_request(request),
        )
        return Response(_for_pharmacy(request, prescription_id, acted_on=dispensed))


class ReleaseApi(PharmacyApiView):
    @extend_schema(
        operation_id="pharmacy_prescriptions_release",
        request=ReleaseInput,
        responses={200: PrescriptionOutput, **CLAIM_ACTION_ERRORS},
    )
    def post(self, request: Request, prescription_id: UUID) -> Response:
        data = ReleaseInput(data=request.data)
        data.is_valid(raise_exception=True)
        prescription = prescription_release(
            user=request_account(request),
            prescription_id=prescription_id,
            claim_secret=data.validated_data["claim_secret"],
            reason=data.validated_data.get("reason", ""),
            meta=RequestMeta.from_request(request),
        )
        # The claim is gone: answer with what any pharmacy may know.
        return Response(prescription_state(prescription))


class ShipApi(PharmacyApiView):
    @extend_schema(
        operation_id="pharmacy_prescriptions_ship",
        request=ShipInput,
        responses={200: PrescriptionOutput, **CLAIM_ACTION_ERRORS},
    )
    def post(self, request: Request, prescription_id: UUID) -> Response:
        data = ShipInput(data=request.data)
        data.is_valid(raise_exception=True)
        prescription_ship(
            user=request_account(request),
            prescription_id=prescription_id,
            claim_secret=data.validated_data["claim_secret"],
            courier=data.validated_data["courier"],
            tracking_number=data.validated_data["tracking_number"],
            meta=RequestMeta.from_request(request),
        )
        return Response(_for_pharmacy(request, prescription_id))


class DeliverApi(PharmacyApiView):
    @extend_schema(
        operation_id="pharmacy_prescriptions_deliver",
        request=SecretInput,
        responses={200: PrescriptionOutput, **CLAIM_ACTION_ERRORS},
    )
    def post(self, request: Request, prescription_id: UUID) -> Response:
        data = SecretInput(data=request.data)
        data.is_valid(raise_exception=True)
        prescription_deliver(
            user=request_account(request),
            prescription_id=prescription_id,
            claim_secret=data.validated_data["claim_secret"],
            meta=RequestMeta.from_request(request),
        )
        return Response(_for_pharmacy(request, prescription_id))
