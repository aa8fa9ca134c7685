"""How prescriptions look on the wire, for the console, the mobile app and pharmacies."""

from __future__ import annotations

import json
from typing import Any

from rest_framework import serializers

from prescriptions.models import Fulfilment, Prescription, PrescriptionEvent, PrescriptionStatus
from prescriptions.signing import line_content

_STATUSES = PrescriptionStatus.choices


def _iso(value: Any) -> str | None:
    return value.isoformat() if value else None


def prescription_state(prescription: Prescription) -> dict[str, Any]:
    """The prescription as every audience sees it (no access code, no claim secret)."""
    profile = prescription.profile
    doctor = prescription.doctor
    lines = []
    for line in prescription.lines.all():
        item = line_content(line)
        item["drug"] = str(line.drug_id)
        item["dispensed_quantity"] = line.dispensed_quantity
        lines.append(item)
    return {
        "id": str(prescription.pk),
        "version": prescription.version,
        "status": prescription.status,
        "status_reason": prescription.status_reason,
        "consultation": str(prescription.consultation_id),
        "hospital": {"id": str(prescription.hospital_id), "name": prescription.hospital.name},
        "patient": {
            "profile": str(profile.pk),
            "name": profile.real_name,
            "sex": profile.sex,
            "birth_date": profile.birth_date.isoformat(),
        },
        "doctor": {
            "id": str(doctor.pk),
            "name": doctor.user.display_name,
            "title": doctor.title,
        },
        "diagnoses": prescription.diagnoses,
        "lines": lines,
        "total": prescription.total,
        "validity_days": prescription.validity_days,
        "issued_at": _iso(prescription.issued_at),
        "valid_until": _iso(prescription.valid_until),
        "chronic_reason": prescription.chronic_reason,
        "guardian": prescription.guardian,
        "specialist": prescription.specialist,
        "fulfilment": {
            "method": prescription.fulfilment or None,
            "pharmacy": (
                str(prescription.pickup_pharmacy_id) if prescription.pickup_pharmacy_id else None
            ),
        },
        "claimed_by": prescription.claimed_by.code if prescription.claimed_by else None,
        "claimed_at": _iso(prescription.claimed_at),
        "cancel_requested": prescription.cancel_requested_at is not None,
        "cancel_requested_reason": prescription.cancel_requested_reason,
        "dispensed_at": _iso(prescription.dispensed_at),
        "delivery": {
            "courier": prescription.courier,
            "tracking_number": prescription.tracking_number,
            "shipped_at": _iso(prescription.shipped_at),
            "delivered_at": _iso(prescription.delivered_at),
        },
        "receipt": prescription.receipt,
        "created_at": prescription.created_at.isoformat(),
    }


def delivery_address(prescription: Prescription) -> dict[str, str] | None:
    if prescription.fulfilment != Fulfilment.DELIVERY or not prescription.delivery_address:
        return None
    value: dict[str, str] = json.loads(prescription.delivery_address)
    return value


def event_state(event: PrescriptionEvent) -> dict[str, Any]:
    return {
        "action": event.action,
        "from_status": event.from_status,
        "to_status": event.to_status,
        "reason": event.reason,
        "pharmacy": event.pharmacy.code if event.pharmacy else None,
        "at": event.created_at.isoformat(),
    }


class PrescriptionStateSerializer(serializers.BaseSerializer):  # type: ignore[type-arg]
    def to_representation(self, instance: Prescription) -> dict[str, Any]:
        return prescription_state(instance)


# --- Documentation of the shapes (OpenAPI) --------------------------------------------------


class LineOutput(serializers.Serializer):  # type: ignore[type-arg]
    position = serializers.IntegerField()
    drug = serializers.UUIDField()
    drug_code = serializers.CharField()
    drug_name = serializers.CharField()
    specification = serializers.CharField()
    dose = serializers.CharField(help_text="decimal as a string, e.g. '0.5'")
    dose_unit = serializers.CharField()
    frequency = serializers.CharField()
    route = serializers.CharField()
    days = serializers.IntegerField()
    quantity = serializers.IntegerField()
    unit = serializers.CharField()
    unit_price = serializers.IntegerField(help_text="fen")
    dispensed_quantity = serializers.IntegerField()


class PrescriptionOutput(serializers.Serializer):  # type: ignore[type-arg]
    """Documents ``prescription_state`` for the OpenAPI schema."""

    id = serializers.UUIDField()
    version = serializers.IntegerField()
    status = serializers.ChoiceField(choices=_STATUSES)
    status_reason = serializers.CharField(allow_blank=True)
    consultation = serializers.UUIDField()
    hospital = serializers.DictField()
    patient = serializers.DictField()
    doctor = serializers.DictField()
    diagnoses = serializers.ListField(child=serializers.DictField())
    lines = LineOutput(many=True)
    total = serializers.IntegerField(help_text="fen")
    validity_days = serializers.IntegerField()
    issued_at = serializers.DateTimeField(allow_null=True)
    valid_until = serializers.DateTimeField(allow_null=True)
    chronic_reason = serializers.CharField(allow_blank=True)
    guardian = serializers.DictField(allow_null=True)
    specialist = serializers.DictField(allow_null=True)
    fulfilment = serializers.DictField()
    claimed_by = serializers.CharField(allow_null=True, help_text="pharmacy code")
    claimed_at = serializers.DateTimeField(allow_null=True)
    cancel_requested = serializers.BooleanField()
    cancel_requested_reason = serializers.CharField(allow_blank=True)
    dispensed_at = serializers.DateTimeField(allow_null=True)
    delivery = serializers.DictField()
    receipt = serializers.DictField(
        allow_null=True, help_text="the dispense receipt sealed by the hospital"
    )
    created_at = serializers.DateTimeField()


class CheckOutput(serializers.Serializer):  # type: ignore[type-arg]
    rule = serializers.CharField(help_text="the error code when the rule blocks")
    name = serializers.CharField()
    outcome = serializers.ChoiceField(choices=["pass", "warning", "error"])
    message = serializers.CharField()
    line = serializers.IntegerField(allow_null=True)


class EventOutput(serializers.Serializer):  # type: ignore[type-arg]
    action = serializers.CharField()
    from_status = serializers.CharField(allow_blank=True)
    to_status = serializers.CharField()
    reason = serializers.CharField(allow_blank=True)
    pharmacy = serializers.CharField(allow_null=True)
    at = serializers.DateTimeField()


class ConsolePrescriptionOutput(PrescriptionOutput):
    checks = CheckOutput(many=True)
    history = EventOutput(many=True)
    verification = serializers.DictField(
        allow_null=True,
        help_text="the result of verifying the stored signatures and chains, once signed",
    )


class BundleOutput(serializers.Serializer):  # type: ignore[type-arg]
    format = serializers.CharField()
    prescription_id = serializers.UUIDField()
    version = serializers.IntegerField()
    status = serializers.CharField()
    signed_content = serializers.CharField(help_text="base64 of the RFC 8785 bytes signed")
    doctor_signature = serializers.DictField()
    review = serializers.DictField(allow_null=True)
    root_certificate = serializers.CharField()
    root_sha256 = serializers.CharField()
    crl = serializers.CharField(help_text="base64 DER CRL signed by the root")


# --- Inputs ---------------------------------------------------------------------------------


class LineInput(serializers.Serializer):  # type: ignore[type-arg]
    drug = serializers.CharField(max_length=64, help_text="catalogue id (UUID) or drug code")
    dose = serializers.DecimalField(max_digits=10, decimal_places=3, min_value=0)
    dose_unit = serializers.CharField(max_length=20)
    frequency = serializers.CharField(max_length=30)
    route = serializers.CharField(max_length=30, required=False, allow_blank=True)
    days = serializers.IntegerField(min_value=1, max_value=3650)
    quantity = serializers.IntegerField(min_value=1, max_value=100000)


class PersonPresentInput(serializers.Serializer):  # type: ignore[type-arg]
    name = serializers.CharField(max_length=100)
    relation = serializers.CharField(max_length=50, required=False, allow_blank=True)
    title = serializers.CharField(max_length=50, required=False, allow_blank=True)
    department = serializers.CharField(max_length=100, required=False, allow_blank=True)


class DiagnosisRefInput(serializers.Serializer):  # type: ignore[type-arg]
    icd10 = serializers.CharField(max_length=16)
    name = serializers.CharField(max_length=300, required=False, allow_blank=True)
    main = serializers.BooleanField(default=False)


class PrescriptionInput(serializers.Serializer):  # type: ignore[type-arg]
    consultation = serializers.UUIDField()
    lines = LineInput(many=True, allow_empty=False, max_length=20)  # type: ignore[call-arg]
    validity_days = serializers.IntegerField(min_value=1, max_value=365, default=1)
    chronic_reason = serializers.CharField(max_length=500, required=False, allow_blank=True)
    guardian = PersonPresentInput(required=False, allow_null=True)
    specialist = PersonPresentInput(required=False, allow_null=True)
    diagnoses = DiagnosisRefInput(
        many=True,
        required=False,
        help_text="defaults to the consultation's diagnoses, else its prior diagnosis",
    )


class PrescriptionPatchInput(PrescriptionInput):
    consultation = None  # type: ignore[assignment]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("partial", True)
        super().__init__(*args, **kwargs)


class OtpInput(serializers.Serializer):  # type: ignore[type-arg]
    otp = serializers.CharField(
        max_length=10, required=False, allow_blank=True, help_text="the signer's TOTP code"
    )


class ClaimInput(serializers.Serializer):  # type: ignore[type-arg]
    prescription_id = serializers.UUIDField()
    access_code = serializers.CharField(max_length=100)


class ClaimOutput(serializers.Serializer):  # type: ignore[type-arg]
    claim_secret = serializers.CharField()
    prescription = PrescriptionOutput()


class SecretInput(serializers.Serializer):  # type: ignore[type-arg]
    claim_secret = serializers.CharField(max_length=100)


class ReleaseInput(SecretInput):
    reason = serializers.CharField(
        max_length=500, help_text="why the pharmacy gives the claim back (out of stock, …)"
    )


class DispenseItemInput(serializers.Serializer):  # type: ignore[type-arg]
    line = serializers.IntegerField(min_value=1, help_text="the line's position")
    quantity = serializers.IntegerField(min_value=1)
    batch_number = serializers.CharField(max_length=64)


class PharmacistInput(serializers.Serializer):  # type: ignore[type-arg]
    name = serializers.CharField(max_length=100)
    licence_number = serializers.CharField(max_length=64)


class DispenseInput(SecretInput):
    items = DispenseItemInput(many=True, allow_empty=False)
    pharmacist = PharmacistInput()


class ShipInput(SecretInput):
    courier = serializers.CharField(max_length=50)
    tracking_number = serializers.CharField(max_length=64)


class AddressInput(serializers.Serializer):  # type: ignore[type-arg]
    recipient = serializers.CharField(max_length=100)
    phone = serializers.CharField(max_length=30)
    address = serializers.CharField(max_length=300)


class FulfilmentInput(serializers.Serializer):  # type: ignore[type-arg]
    method = serializers.ChoiceField(choices=Fulfilment.values)
    pharmacy = serializers.UUIDField(required=False, allow_null=True)
    address = AddressInput(required=False, allow_null=True)
