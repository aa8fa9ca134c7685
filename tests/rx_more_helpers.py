"""More shared steps for the prescription acceptance tests (rules and the gematik-derived
scenarios), on top of ``tests.rx_helpers``: every step is a real HTTP call or a read of
the rows and audit events the calls leave behind. The two forging helpers rewrite a
stored signed version the way an attacker with database access would, to show that the
server's own verification refuses it; they never touch project code.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
from typing import Any

import rfc8785
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID
from rest_framework.test import APIClient

from backend.organisations.models import Department, Practitioner
from backend.pki.models import SigningCertificate
from backend.pki.services import certificate_issue, raw_sign
from prescriptions.models import (
    AccessCodeFailure,
    DispenseEntry,
    Prescription,
    PrescriptionEvent,
    PrescriptionLine,
    PrescriptionVersion,
)
from tests.consult_helpers import ready_doctor
from tests.consult_http_helpers import CONSOLE, MOBILE, end_body
from tests.rx_helpers import PHARMACY, RxScene, console_session

# --- Reads ------------------------------------------------------------------------------------


def code_of(prescription_id: str) -> str:
    """The access code as stored (patients see it only once the prescription is active)."""
    code: str = Prescription.objects.get(pk=prescription_id).access_code
    assert code
    return code


def actions_of(prescription_id: str) -> list[str]:
    return list(
        PrescriptionEvent.objects.filter(prescription_id=prescription_id)
        .order_by("created_at", "id")
        .values_list("action", flat=True)
    )


def count_events(prescription_id: str, action: str) -> int:
    return PrescriptionEvent.objects.filter(prescription_id=prescription_id, action=action).count()


def prescriptions_of(consultation_id: str) -> int:
    return Prescription.objects.filter(consultation_id=consultation_id).count()


def dispensed_quantities(prescription_id: str) -> list[int]:
    return list(
        PrescriptionLine.objects.filter(prescription_id=prescription_id)
        .order_by("position")
        .values_list("dispensed_quantity", flat=True)
    )


def dispense_entries(prescription_id: str) -> int:
    return DispenseEntry.objects.filter(line__prescription_id=prescription_id).count()


def access_failures(prescription_id: str) -> int:
    return AccessCodeFailure.objects.filter(prescription_id=prescription_id).count()


def outcomes(checks: list[dict[str, Any]]) -> dict[tuple[str, int | None], str]:
    """``(rule, line) → outcome`` of the ``checks`` a draft answer carries."""
    return {(c["rule"], c["line"]): c["outcome"] for c in checks}


def years_before(day: dt.date, years: int) -> dt.date:
    try:
        return day.replace(year=day.year - years)
    except ValueError:  # 29 February: the birthday falls on 28 February that year
        return day.replace(year=day.year - years, day=28)


# --- People -----------------------------------------------------------------------------------


def colleague(department: Department, *, with_certificate: bool = False) -> Practitioner:
    """Another doctor of the same department, ready to work."""
    doctor = ready_doctor(department)
    if with_certificate:
        certificate_issue(practitioner=doctor)
    return doctor


def colleague_session(department: Department) -> tuple[Practitioner, APIClient]:
    doctor = colleague(department, with_certificate=True)
    return doctor, console_session(doctor.user)


# --- Doctor, pharmacist and patient steps -----------------------------------------------------


def end_consultation(scene: RxScene) -> Any:
    response = scene.doctor_api.post(
        f"{CONSOLE}/consultations/{scene.consultation_id}/end", end_body(), format="json"
    )
    assert response.status_code == 200, response.content
    return response


def patch(scene: RxScene, prescription_id: str, body: dict[str, Any]) -> Any:
    return scene.doctor_session.patch(
        f"{CONSOLE}/prescriptions/{prescription_id}", body, format="json"
    )


def reject(scene: RxScene, prescription_id: str, reason: str = "剂量需调整") -> Any:
    return scene.pharmacist_session.post(
        f"{CONSOLE}/prescriptions/{prescription_id}/reject", {"reason": reason}, format="json"
    )


def revise(scene: RxScene, prescription_id: str) -> Any:
    return scene.doctor_session.post(f"{CONSOLE}/prescriptions/{prescription_id}/revise")


def doctor_cancel(scene: RxScene, prescription_id: str, reason: str = "患者病情变化") -> Any:
    return scene.doctor_session.post(
        f"{CONSOLE}/prescriptions/{prescription_id}/cancel", {"reason": reason}, format="json"
    )


def patient_cancel(scene: RxScene, prescription_id: str) -> Any:
    return scene.patient_api.post(
        f"{MOBILE}/prescriptions/{prescription_id}/cancel", {"reason": "不需要了"}, format="json"
    )


# --- Pharmacy steps ---------------------------------------------------------------------------


def claim(api: APIClient, prescription_id: str, code: str, **headers: Any) -> Any:
    return api.post(
        f"{PHARMACY}/prescriptions/claim",
        {"prescription_id": prescription_id, "access_code": code},
        format="json",
        **headers,
    )


def release(api: APIClient, prescription_id: str, secret: str, reason: str = "缺货") -> Any:
    return api.post(
        f"{PHARMACY}/prescriptions/{prescription_id}/release",
        {"claim_secret": secret, "reason": reason},
        format="json",
    )


def dispense_body(secret: str, items: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "claim_secret": secret,
        "items": items or [{"line": 1, "quantity": 1, "batch_number": "B2026-1102"}],
        "pharmacist": {"name": "王药师", "licence_number": "YS330100123"},
    }


def pharmacy_view(api: APIClient, prescription_id: str) -> Any:
    return api.get(f"{PHARMACY}/prescriptions/{prescription_id}")


def pharmacy_bundle(api: APIClient, prescription_id: str) -> Any:
    return api.get(f"{PHARMACY}/prescriptions/{prescription_id}/bundle")


# --- Signatures -------------------------------------------------------------------------------


def _verify_raw(certificate: x509.Certificate, signature: bytes, data: bytes) -> None:
    """Raise ``InvalidSignature`` unless ``signature`` is the certificate key's over ``data``."""
    public = certificate.public_key()
    if isinstance(public, ec.EllipticCurvePublicKey):
        public.verify(signature, data, ec.ECDSA(hashes.SHA256()))
    elif isinstance(public, ed25519.Ed25519PublicKey):
        public.verify(signature, data)
    else:  # pragma: no cover - the project issues only these two
        raise AssertionError(f"unexpected key type {type(public)}")


def verify_receipt(receipt: dict[str, Any], *, root_sha256: str) -> dict[str, Any]:
    """Check a dispense receipt the way a pharmacy or the regulator would, with only
    ``cryptography``: the seal certificate is the hospital root's, the signature verifies
    over the exact content bytes, which are RFC 8785 canonical JSON. Returns the content."""
    content_bytes = base64.b64decode(receipt["content"], validate=True)
    signature = receipt["signature"]
    leaf_pem, root_pem = signature["certificate_chain"]
    leaf = x509.load_pem_x509_certificate(leaf_pem.encode())
    root = x509.load_pem_x509_certificate(root_pem.encode())
    assert root.fingerprint(hashes.SHA256()).hex() == root_sha256
    leaf.verify_directly_issued_by(root)
    assert leaf.fingerprint(hashes.SHA256()).hex() == signature["certificate_sha256"]
    title = leaf.subject.get_attributes_for_oid(NameOID.TITLE)[0].value
    assert title == "institution", title
    _verify_raw(leaf, base64.b64decode(signature["value"], validate=True), content_bytes)
    content: dict[str, Any] = json.loads(content_bytes)
    assert rfc8785.dumps(content) == content_bytes
    return content


def signature_sha256(bundle: dict[str, Any]) -> str:
    return hashlib.sha256(base64.b64decode(bundle["doctor_signature"]["value"])).hexdigest()


def _private_key(certificate: SigningCertificate) -> Any:
    return serialization.load_pem_private_key(certificate.private_key_pem.encode(), password=None)


def forge_version(
    prescription_id: str,
    *,
    signer: SigningCertificate,
    content_change: dict[str, Any] | None = None,
) -> None:
    """Replace the stored doctor's signature of the current version with one made by
    ``signer``'s key, over the stored content with ``content_change`` applied (as someone
    with access to the database and to another key would)."""
    prescription = Prescription.objects.get(pk=prescription_id)
    version = PrescriptionVersion.objects.get(
        prescription_id=prescription_id, version=prescription.version
    )
    content = json.loads(bytes(version.signed_bytes))
    content.update(content_change or {})
    signed = rfc8785.dumps(content)
    PrescriptionVersion.objects.filter(pk=version.pk).update(
        signed_bytes=signed,
        doctor_signature=raw_sign(_private_key(signer), signed),
        doctor_certificate=signer,
    )


def flip_signed_bytes(prescription_id: str, old: bytes, new: bytes) -> None:
    """Change bytes of the stored signed content in place (the signature stays)."""
    prescription = Prescription.objects.get(pk=prescription_id)
    version = PrescriptionVersion.objects.get(
        prescription_id=prescription_id, version=prescription.version
    )
    signed = bytes(version.signed_bytes)
    assert signed.count(old) == 1, (old, signed)
    PrescriptionVersion.objects.filter(pk=version.pk).update(signed_bytes=signed.replace(old, new))


def current_certificate(practitioner: Practitioner) -> SigningCertificate:
    return (
        SigningCertificate.objects.select_related("authority")
        .filter(user=practitioner.user, role=practitioner.kind, revoked_at=None)
        .latest("not_after")
    )


__all__ = ["PHARMACY"]
