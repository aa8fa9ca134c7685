"""What is signed, and the bundle that carries it (docs/prescription-signing.md).

The doctor signs the RFC 8785 canonical JSON of ``prescription_content``; the pharmacist
countersigns ``review_statement``, which names the SHA-256 of the doctor's signature;
the hospital seals the dispense receipt. The exact bytes are stored and served, never
rebuilt, so a later change of any row cannot change what was signed.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
from decimal import Decimal
from typing import Any

from django.utils import timezone

from backend import canonical_json
from backend.pki.models import SigningCertificate
from backend.pki.services import Signature, crl_der
from prescriptions.models import Prescription, PrescriptionLine, PrescriptionVersion
from prescriptions.verify import BUNDLE_FORMAT

RECEIPT_FORMAT = "ih-dispense-receipt/1"

#: For ``.defer()`` on reads of a ``PrescriptionVersion`` with its certificates: a bundle
#: never needs the signers' private keys (encrypted at rest, decrypted on load). The CA's
#: stays: a new signature needs a new revocation list, which the CA signs.
PRIVATE_KEYS = (
    "doctor_certificate__private_key_pem",
    "pharmacist_certificate__private_key_pem",
)


def canonical(value: dict[str, Any]) -> bytes:
    return canonical_json.dumps(value)


def _time(value: dt.datetime) -> str:
    return timezone.localtime(value).isoformat()


def _decimal(value: Decimal) -> str:
    return format(value.normalize(), "f")


def _masked(id_number: str) -> str:
    return id_number[:3] + "*" * max(len(id_number) - 7, 0) + id_number[-4:]


def line_content(line: PrescriptionLine) -> dict[str, Any]:
    return {
        "position": line.position,
        "drug_code": line.drug_code,
        "drug_name": line.drug_name,
        "specification": line.specification,
        "dose": _decimal(line.dose),
        "dose_unit": line.dose_unit,
        "frequency": line.frequency,
        "route": line.route,
        "days": line.days,
        "quantity": line.quantity,
        "unit": line.unit,
        "unit_price": line.unit_price,
    }


def prescription_content(
    prescription: Prescription,
    lines: list[PrescriptionLine],
    *,
    issued_at: dt.datetime,
    valid_until: dt.datetime,
) -> dict[str, Any]:
    """The content the doctor signs (DOMAIN.md, "Prescription lifecycle")."""
    profile = prescription.profile
    doctor = prescription.doctor
    hospital = prescription.hospital
    return {
        "type": "prescription",
        "id": str(prescription.pk),
        "version": prescription.version,
        "kind": prescription.kind,
        "hospital": {"uscc": hospital.unified_social_credit_code, "name": hospital.name},
        "consultation": str(prescription.consultation_id),
        "patient": {
            "id": str(profile.pk),
            "name": profile.real_name,
            "sex": profile.sex,
            "birth_date": profile.birth_date.isoformat(),
            "id_type": profile.id_type,
            "id_number_masked": _masked(profile.id_number),
        },
        "doctor": {
            "id": str(doctor.pk),
            "name": doctor.user.display_name,
            "practice_certificate_number": doctor.practice_certificate_number,
            "department": doctor.department.code if doctor.department else "",
        },
        "diagnoses": prescription.diagnoses,
        "lines": [line_content(line) for line in lines],
        "total": prescription.total,
        "chronic_reason": prescription.chronic_reason,
        "guardian": prescription.guardian,
        "specialist": prescription.specialist,
        "validity": {
            "days": prescription.validity_days,
            "valid_until": _time(valid_until),
        },
        "issued_at": _time(issued_at),
    }


def review_statement(
    version: PrescriptionVersion, *, pharmacist: Any, reviewed_at: dt.datetime
) -> dict[str, Any]:
    """What the pharmacist countersigns on approval."""
    return {
        "type": "pharmacist_review",
        "prescription_id": str(version.prescription_id),
        "version": version.version,
        "doctor_signature_sha256": hashlib.sha256(bytes(version.doctor_signature)).hexdigest(),
        "result": "approved",
        "pharmacist": {
            "id": str(pharmacist.pk),
            "name": pharmacist.user.display_name,
            "practice_certificate_number": pharmacist.practice_certificate_number,
        },
        "reviewed_at": _time(reviewed_at),
    }


def _b64(value: bytes) -> str:
    return base64.b64encode(value).decode()


def signature_block(
    *, certificate: SigningCertificate, value: bytes, signed_at: dt.datetime
) -> dict[str, Any]:
    return {
        "algorithm": certificate.algorithm,
        "value": _b64(value),
        "signed_at": _time(signed_at),
        "certificate_serial": certificate.serial_number,
        "certificate_sha256": certificate.fingerprint_sha256,
        "certificate_chain": [
            certificate.certificate_pem,
            certificate.authority.certificate_pem,
        ],
    }


def prescription_bundle(version: PrescriptionVersion, *, status: str = "") -> dict[str, Any]:
    """The signed bundle of CONTRACT section 5, verifiable offline. Its revocation list
    is the authority's current one (every revocation so far), issued after the last
    signature in the bundle, as a verifier requires."""
    doctor_certificate = version.doctor_certificate
    authority = doctor_certificate.authority
    review = None
    if (
        version.review_result == "approved"
        and version.pharmacist_certificate is not None
        and version.review_bytes is not None
        and version.pharmacist_signature is not None
        and version.reviewed_at is not None
    ):
        review = {
            "content": _b64(bytes(version.review_bytes)),
            "signature": signature_block(
                certificate=version.pharmacist_certificate,
                value=bytes(version.pharmacist_signature),
                signed_at=version.reviewed_at,
            ),
        }
    return {
        "format": BUNDLE_FORMAT,
        "prescription_id": str(version.prescription_id),
        "version": version.version,
        "status": status,
        "signed_content": _b64(bytes(version.signed_bytes)),
        "doctor_signature": signature_block(
            certificate=doctor_certificate,
            value=bytes(version.doctor_signature),
            signed_at=version.signed_at,
        ),
        "review": review,
        "root_certificate": authority.certificate_pem,
        "root_sha256": authority.fingerprint_sha256,
        "crl": _b64(
            crl_der(authority=authority, newer_than=version.reviewed_at or version.signed_at)
        ),
    }


def receipt(
    *,
    version: PrescriptionVersion,
    pharmacy_code: str,
    dispensed_at: dt.datetime,
    lines: list[dict[str, Any]],
) -> dict[str, Any]:
    """The dispense receipt content, which the hospital seals."""
    return {
        "type": "dispense_receipt",
        "format": RECEIPT_FORMAT,
        "prescription_id": str(version.prescription_id),
        "version": version.version,
        "doctor_signature_sha256": hashlib.sha256(bytes(version.doctor_signature)).hexdigest(),
        "pharmacy": pharmacy_code,
        "dispensed_at": _time(dispensed_at),
        "lines": lines,
    }


def sealed_receipt(content: dict[str, Any], seal: Signature) -> dict[str, Any]:
    return {
        "content": _b64(canonical(content)),
        "signature": signature_block(
            certificate=seal.certificate, value=seal.value, signed_at=seal.signed_at
        ),
    }
