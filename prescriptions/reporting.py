"""What the provincial platform receives about prescriptions: every transition (DOMAIN,
"Prescription lifecycle"): the signed prescription (issued, superseded, revoked,
expired), the pharmacist's review, a pharmacy's claim and its release, dispense and
delivery; plus the controlled-drug alert. Built here, handed to the regulators outbox in
the same transaction as the change."""

from __future__ import annotations

import base64
import json
from typing import Any

from django.utils import timezone

from backend.compiled_queries import CompiledQuery
from payments.models import OrderKind
from payments.selectors import order_amounts
from prescriptions.models import (
    ControlledDrugAttempt,
    DispenseEntry,
    Fulfilment,
    Prescription,
    PrescriptionEvent,
    PrescriptionLine,
    PrescriptionVersion,
)
from prescriptions.signing import PRIVATE_KEYS, line_content, signature_block
from regulators.models import AlertKind
from regulators.services import alert_raise, outbox_append

#: The prescription's own record, per transition: the signed version issued (signing and
#: the hand-over to review are one transaction and one record), revoked, expired, or
#: superseded when the doctor reopens it after a rejection to sign a new version.
_PRESCRIPTION_STATUS = {
    "sign": "issued",
    "cancel": "revoked",
    "expire": "expired",
    "revise": "superseded",
}


def _time(value: Any) -> str | None:
    return timezone.localtime(value).isoformat() if value else None


def _staff(practitioner: Any) -> dict[str, str]:
    return {
        "name": practitioner.user.display_name,
        "practice_certificate_number": practitioner.practice_certificate_number,
    }


def _version(prescription: Prescription) -> PrescriptionVersion | None:
    in_hand = prescription.current_version_in_hand()
    if in_hand is not None:
        return in_hand
    return (
        PrescriptionVersion.objects.select_related(
            "doctor_certificate__authority",
            "pharmacist_certificate__authority",
            "reviewed_by__user",
        )
        # The payloads carry the certificates, never sign with them.
        .defer(*PRIVATE_KEYS)
        .filter(prescription=prescription)
        .order_by("-version")
        .first()
    )


def _prescription_payload(
    prescription: Prescription, version: PrescriptionVersion, event: PrescriptionEvent
) -> dict[str, Any]:
    lines = []
    for line in prescription.lines.all():
        item = line_content(line)
        lines.append({k: item[k] for k in item if k not in ("position", "unit")})
    payload: dict[str, Any] = {
        "prescription_id": str(prescription.pk),
        "version": version.version,
        "event": event.action,
        "status": _PRESCRIPTION_STATUS[event.action],
        "consultation_id": str(prescription.consultation_id),
        "type": prescription.kind,
        "issued_at": _time(prescription.issued_at or version.signed_at),
        "valid_until": _time(prescription.valid_until or version.signed_at),
        "lines": lines,
        "total": prescription.total,
        "doctor": _staff(prescription.doctor),
        "patient_birth_date": prescription.profile.birth_date.isoformat(),
        "guardian": prescription.guardian,
        "specialist": prescription.specialist,
        "chronic_reason": prescription.chronic_reason,
        # What the platform verifies the prescription from (DOMAIN rule 10): the exact
        # signed bytes, the signature and its certificate chain up to the hospital's root
        # (the root it pins from the institution's filing), as in the pharmacy's bundle.
        "signed_content": base64.b64encode(bytes(version.signed_bytes)).decode(),
        "doctor_signature": signature_block(
            certificate=version.doctor_certificate,
            value=bytes(version.doctor_signature),
            signed_at=version.signed_at,
        ),
    }
    if event.action == "revise":
        # The superseded version's own times (the prescription's are cleared for the next).
        signed = json.loads(bytes(version.signed_bytes))
        payload["issued_at"] = signed["issued_at"]
        payload["valid_until"] = signed["validity"]["valid_until"]
    if event.reason:
        payload["reason"] = event.reason
    # An order opens only on approval (DOMAIN rule 6), so a signature never has one.
    payload["payment"] = (
        None
        if event.action == "sign"
        else order_amounts(kind=OrderKind.PRESCRIPTION, subject_id=prescription.pk)
    )
    return payload


def _review_payload(prescription: Prescription, version: PrescriptionVersion) -> dict[str, Any]:
    assert version.reviewed_by is not None  # noqa: S101 - set by the review just before
    payload: dict[str, Any] = {
        "prescription_id": str(prescription.pk),
        "version": version.version,
        "pharmacist": _staff(version.reviewed_by),
        "reviewed_at": _time(version.reviewed_at),
        "result": "pass" if version.review_result == "approved" else "fail",
        "reason": version.review_reason,
        "signature": None,
    }
    certificate = version.pharmacist_certificate
    if (
        version.pharmacist_signature is not None
        and certificate is not None
        and version.review_bytes is not None
        and version.reviewed_at is not None
    ):
        # The countersigned statement (it names the hash of the doctor's signature) and
        # the pharmacist's signature with its chain: verifiable like the prescription.
        payload["content"] = base64.b64encode(bytes(version.review_bytes)).decode()
        payload["signature"] = signature_block(
            certificate=certificate,
            value=bytes(version.pharmacist_signature),
            signed_at=version.reviewed_at,
        )
    return payload


def _delivery_type(prescription: Prescription) -> str:
    return "home_delivery" if prescription.fulfilment == Fulfilment.DELIVERY else "retail_pharmacy"


def _claim_payload(prescription: Prescription, event: PrescriptionEvent) -> dict[str, Any]:
    """A pharmacy took the prescription to dispense it, or gave it back (with the reason;
    an idle claim is given back by the system)."""
    pharmacy = event.pharmacy
    assert pharmacy is not None  # noqa: S101 - a claim and its release name the pharmacy
    done = {"claim": "claimed", "release": "released"}[event.action]
    payload: dict[str, Any] = {
        "prescription_id": str(prescription.pk),
        "event": done,
        "delivery_type": _delivery_type(prescription),
        "pharmacy": {"code": pharmacy.code, "name": pharmacy.name},
        f"{done}_at": _time(event.created_at),  # claimed_at or released_at
    }
    if event.reason:
        payload["reason"] = event.reason
    return payload


_DISPENSED = CompiledQuery(
    lambda p: DispenseEntry.objects.filter(line__prescription=p.prescription).select_related(
        "line"
    ),
    prescription=PrescriptionLine._meta.get_field("prescription"),
)


def _dispense_payload(prescription: Prescription, event: PrescriptionEvent) -> dict[str, Any]:
    pharmacy = prescription.dispensed_by or prescription.claimed_by
    assert pharmacy is not None  # noqa: S101 - dispensed by a claiming pharmacy
    entries = _DISPENSED.all(prescription=prescription.pk)
    return {
        "prescription_id": str(prescription.pk),
        "event": {"dispense": "dispensed", "ship": "shipped", "deliver": "delivered"}[event.action],
        "delivery_type": _delivery_type(prescription),
        "pharmacy": {"code": pharmacy.code, "name": pharmacy.name},
        "dispensed_at": _time(prescription.dispensed_at),
        "dispensing_pharmacist": next((e.pharmacist_name for e in entries), None),
        "dispensing_pharmacist_licence": next((e.pharmacist_licence for e in entries), None),
        "courier": prescription.courier,
        "tracking_number": prescription.tracking_number,
        "shipped_at": _time(prescription.shipped_at),
        "delivered_at": _time(prescription.delivered_at),
        "lines": [
            {
                "drug_code": e.line.drug_code,
                "quantity": e.quantity,
                "batch_number": e.batch_number,
            }
            for e in entries
        ],
        "payment": order_amounts(kind=OrderKind.PRESCRIPTION, subject_id=prescription.pk),
    }


def report_transition(prescription: Prescription, event: PrescriptionEvent) -> None:
    """Called by the lifecycle service inside its transaction."""
    action = event.action
    if action in _PRESCRIPTION_STATUS:
        version = _version(prescription)
        if version is None:  # a draft cancelled before it was ever signed: nothing issued
            return
        record_type, payload = (
            f"prescription.{_PRESCRIPTION_STATUS[action]}",
            _prescription_payload(prescription, version, event),
        )
    elif action in ("approve", "reject"):
        version = _version(prescription)
        assert version is not None  # noqa: S101 - a review follows a signature
        record_type, payload = "review", _review_payload(prescription, version)
    elif action in ("claim", "release"):
        record_type, payload = f"dispense.{action}", _claim_payload(prescription, event)
    elif action in ("dispense", "ship", "deliver"):
        record_type, payload = f"dispense.{action}", _dispense_payload(prescription, event)
    else:
        return
    outbox_append(
        hospital=prescription.hospital,
        record_type=record_type,
        aggregate_type="prescription",
        aggregate_id=prescription.pk,
        occurred_at=event.created_at,
        payload=payload,
    )


def report_controlled_attempt(attempt: ControlledDrugAttempt) -> None:
    """DOMAIN rule 7: the refused attempt raises a regulator alert naming the rule."""
    alert_raise(
        hospital=attempt.doctor.hospital,
        kind=AlertKind.CONTROLLED_DRUG,
        rule="互联网诊疗不得开具特殊管理药品处方 (诊疗办法 第19条)",
        subject_type="consultation",
        subject_id=attempt.consultation_id,
        details={
            "doctor": _staff(attempt.doctor),
            "drugs": attempt.drugs,
            "attempted_at": _time(attempt.created_at),
        },
    )
