"""Any change to a signed prescription is detectable, by the pharmacy and the regulator,
from the signed bytes and the certificate chain alone (DOMAIN rule 10; CONTRACT 5).

Bundles come from the HTTP API (the console's bundle, the pharmacy's after a claim, the
patient's detail). The byte-flip loops then work on the bundle in memory with the same
``verify_bundle`` that the offline CLI runs. Forged bundles are built the way an
attacker would: real keys of the wrong people, real signatures over the wrong bytes.
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import rfc8785
import time_machine
from cryptography import x509
from django.db import connection
from django.utils import timezone

from backend.pki.models import CertificateAuthority, CertificateRole, SigningCertificate
from backend.pki.services import (
    LocalSigner,
    authority_create,
    certificate_current,
    certificate_issue,
    certificate_revoke,
    crl_der,
    seal_sign,
)
from prescriptions.models import PrescriptionVersion
from prescriptions.signing import signature_block
from prescriptions.verify import VerificationError, verify_bundle
from tests.consult_helpers import client_for
from tests.consult_http_helpers import CONSOLE, MOBILE, SHANGHAI, assert_problem
from tests.factories import DepartmentFactory, HospitalFactory, PractitionerFactory
from tests.rx_helpers import PHARMACY, RxScene, fresh_otp, pharmacy_staff, status_of

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("icd10")]

ROOT = Path(__file__).resolve().parent.parent
PKI = "/api/pki/v1"


# --- Helpers ----------------------------------------------------------------------------------


@pytest.fixture
def scene(department) -> RxScene:
    return RxScene(department)


def _decode(value: str) -> bytes:
    return base64.b64decode(value, validate=True)


def _encode(value: bytes) -> str:
    return base64.b64encode(value).decode()


def _iso(value: dt.datetime) -> str:
    return timezone.localtime(value).isoformat()


def console_bundle(scene: RxScene, prescription_id: str) -> dict[str, Any]:
    response = scene.doctor_session.get(f"{CONSOLE}/prescriptions/{prescription_id}/bundle")
    assert response.status_code == 200, response.content
    bundle: dict[str, Any] = response.json()
    return bundle


def refused(bundle: dict[str, Any], **options: Any) -> str:
    """The verifier's code for a bundle that must not verify."""
    with pytest.raises(VerificationError) as caught:
        verify_bundle(bundle, **options)
    return caught.value.code


def current(scene: RxScene, role: str) -> SigningCertificate:
    holder = scene.doctor if role == CertificateRole.DOCTOR else scene.pharmacist
    found = certificate_current(user=holder.user, role=role)
    assert found is not None
    return found


def resigned_doctor_block(
    bundle: dict[str, Any], certificate: SigningCertificate, data: bytes | None = None
) -> dict[str, Any]:
    """A doctor's signature block over the bundle's signed bytes (or ``data``), made with
    ``certificate``'s real key and carrying its chain."""
    data = _decode(bundle["signed_content"]) if data is None else data
    return signature_block(
        certificate=certificate,
        value=LocalSigner().sign(certificate=certificate, data=data),
        signed_at=dt.datetime.fromisoformat(bundle["doctor_signature"]["signed_at"]),
    )


def forge(
    bundle: dict[str, Any],
    *,
    doctor: SigningCertificate,
    pharmacist: SigningCertificate | None,
    signed_at: dt.datetime,
    issued_at: dt.datetime | None = None,
    statement_changes: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The bundle signed anew by ``doctor`` at ``signed_at`` (the content issued at
    ``issued_at``, by default the same instant) and reviewed by ``pharmacist`` a moment
    later, with a revocation list issued after both. With valid certificates the result
    verifies (see the control cases), so a refusal names what the caller changed. Run on
    a ticking clock with ``signed_at`` just taken from it, the review's moment later is
    capped at the present: a list issued in the same second as a review 5 ms in the
    future was older than the review (a rare ``crl_invalid``, seen in CI)."""
    content = json.loads(_decode(bundle["signed_content"]))
    content["issued_at"] = _iso(issued_at or signed_at)
    signed = rfc8785.dumps(content)
    doctor_value = LocalSigner().sign(certificate=doctor, data=signed)
    forged = copy.deepcopy(bundle)
    forged["signed_content"] = _encode(signed)
    forged["doctor_signature"] = signature_block(
        certificate=doctor, value=doctor_value, signed_at=signed_at
    )
    # A moment later, but not later than now: the revocation list below is issued now,
    # and a review dated after it would make the list stale (``crl_invalid``).
    reviewed_at = max(signed_at, min(signed_at + dt.timedelta(milliseconds=5), timezone.now()))
    if pharmacist is not None:
        statement = json.loads(_decode(bundle["review"]["content"]))
        statement["doctor_signature_sha256"] = hashlib.sha256(doctor_value).hexdigest()
        statement["reviewed_at"] = _iso(reviewed_at)
        statement.update(statement_changes or {})
        review_bytes = rfc8785.dumps(statement)
        forged["review"] = {
            "content": _encode(review_bytes),
            "signature": signature_block(
                certificate=pharmacist,
                value=LocalSigner().sign(certificate=pharmacist, data=review_bytes),
                signed_at=reviewed_at,
            ),
        }
    forged["crl"] = _encode(crl_der(authority=doctor.authority, newer_than=reviewed_at))
    return forged


def expected_for_content(raw: bytes, bundle: dict[str, Any]) -> str:
    """What a verifier must answer for these signed bytes under the original signature:
    bytes that are not canonical JSON are refused as such, content naming another
    prescription as a mismatch, and anything else by the signature."""
    try:
        content = json.loads(raw.decode("utf-8"))
    except ValueError:
        return "not_canonical"
    if not isinstance(content, dict) or rfc8785.dumps(content) != raw:
        return "not_canonical"
    if (
        content.get("id") != bundle["prescription_id"]
        or content.get("version") != bundle["version"]
    ):
        return "content_mismatch"
    return "signature_invalid"


def expected_for_review(raw: bytes, bundle: dict[str, Any]) -> str:
    try:
        statement = json.loads(raw.decode("utf-8"))
    except ValueError:
        return "not_canonical"
    if not isinstance(statement, dict) or rfc8785.dumps(statement) != raw:
        return "not_canonical"
    doctor_value = _decode(bundle["doctor_signature"]["value"])
    expected = {
        "type": "pharmacist_review",
        "prescription_id": bundle["prescription_id"],
        "version": bundle["version"],
        "doctor_signature_sha256": hashlib.sha256(doctor_value).hexdigest(),
        "result": "approved",
    }
    if any(statement.get(k) != v for k, v in expected.items()):
        return "review_mismatch"
    return "signature_invalid"


def run_cli(*args: str) -> tuple[int, dict[str, Any]]:
    proc = subprocess.run(
        [sys.executable, "-m", "prescriptions.verify", *args],
        cwd=ROOT,
        capture_output=True,
        encoding="utf-8",
        timeout=60,
        check=False,
    )
    return proc.returncode, json.loads(proc.stdout)


# --- The bundle as served ---------------------------------------------------------------------


def test_console_pharmacy_and_mobile_serve_the_same_verifiable_bundle(scene, api) -> None:
    prescription_id = scene.active()
    authority = CertificateAuthority.objects.get(hospital=scene.hospital)
    version = PrescriptionVersion.objects.get(prescription_id=prescription_id)
    root_pem = api.get(f"{PKI}/hospitals/{scene.hospital.pk}/root.pem").content.decode()
    assert root_pem == authority.certificate_pem

    before_claim = console_bundle(scene, prescription_id)
    assert before_claim["status"] == "active"
    # A pharmacy sees the bundle only after claiming it.
    assert_problem(
        scene.pharmacy_api.get(f"{PHARMACY}/prescriptions/{prescription_id}/bundle"),
        403,
        "not_claimant",
    )
    assert scene.claim(prescription_id).status_code == 200
    bundles = {
        "console": console_bundle(scene, prescription_id),
        "pharmacy": scene.pharmacy_api.get(
            f"{PHARMACY}/prescriptions/{prescription_id}/bundle"
        ).json(),
        "mobile": scene.patient_api.get(f"{MOBILE}/prescriptions/{prescription_id}").json()[
            "bundle"
        ],
    }
    signed_members = ("signed_content", "doctor_signature", "review", "root_certificate")
    for source, bundle in bundles.items():
        assert bundle["format"] == "ih-prescription-bundle/1", source
        assert bundle["status"] == "claimed", source
        for member in signed_members:
            assert bundle[member] == before_claim[member], (source, member)
        assert _decode(bundle["signed_content"]) == bytes(version.signed_bytes)
        assert _decode(bundle["doctor_signature"]["value"]) == bytes(version.doctor_signature)
        summary = verify_bundle(bundle, trusted_roots={authority.fingerprint_sha256}).summary()
        assert summary["valid"] is True
        assert summary["prescription_id"] == prescription_id
        assert summary["version"] == 1
        assert summary["root_sha256"] == authority.fingerprint_sha256
        assert summary["doctor"]["role"] == "doctor"
        assert summary["doctor"]["name"] == scene.doctor.user.display_name
        assert (
            summary["doctor"]["practice_certificate_number"]
            == scene.doctor.practice_certificate_number
        )
        assert summary["doctor"]["certificate_serial"] == version.doctor_certificate.serial_number
        assert summary["pharmacist"]["role"] == "pharmacist"
        assert (
            summary["pharmacist"]["practice_certificate_number"]
            == scene.pharmacist.practice_certificate_number
        )
        assert summary["valid_until"] == _iso(version.prescription.valid_until)  # type: ignore[arg-type]

    content = json.loads(_decode(before_claim["signed_content"]))
    assert content["id"] == prescription_id
    assert content["hospital"]["uscc"] == scene.hospital.unified_social_credit_code
    assert content["doctor"]["practice_certificate_number"] == (
        scene.doctor.practice_certificate_number
    )
    assert content["lines"][0]["drug_code"] == "DEMO-0001"
    statement = json.loads(_decode(before_claim["review"]["content"]))
    assert (
        statement["doctor_signature_sha256"]
        == hashlib.sha256(bytes(version.doctor_signature)).hexdigest()
    )


# --- Byte flips -------------------------------------------------------------------------------


def test_every_byte_of_the_signed_content_is_protected(scene) -> None:
    bundle = console_bundle(scene, scene.active())
    raw = bytearray(_decode(bundle["signed_content"]))
    assert 500 < len(raw) < 2000
    outcomes: dict[str, int] = {}
    for position in range(len(raw)):
        raw[position] ^= 0x01
        flipped = dict(bundle, signed_content=_encode(bytes(raw)))
        code = refused(flipped)
        assert code == expected_for_content(bytes(raw), bundle), (position, chr(raw[position]))
        outcomes[code] = outcomes.get(code, 0) + 1
        raw[position] ^= 0x01
    assert verify_bundle(dict(bundle, signed_content=_encode(bytes(raw))))
    # Most flips keep well-formed canonical JSON: those are caught by the signature itself.
    assert outcomes["signature_invalid"] > len(raw) // 2, outcomes
    assert outcomes["not_canonical"] > 0, outcomes
    assert outcomes["content_mismatch"] > 0, outcomes
    assert set(outcomes) == {"signature_invalid", "not_canonical", "content_mismatch"}


@pytest.mark.parametrize("block", ["doctor", "pharmacist"])
def test_every_byte_of_each_signature_is_protected(scene, block) -> None:
    bundle = console_bundle(scene, scene.active())

    def signature_of(b: dict[str, Any]) -> dict[str, Any]:
        return b["doctor_signature"] if block == "doctor" else b["review"]["signature"]

    value = bytearray(_decode(signature_of(bundle)["value"]))
    assert 68 <= len(value) <= 72  # a DER-encoded ECDSA P-256 signature
    for position in range(len(value)):
        for mask in (0x01, 0x80):
            value[position] ^= mask
            flipped = copy.deepcopy(bundle)
            signature_of(flipped)["value"] = _encode(bytes(value))
            assert refused(flipped) == "signature_invalid", (position, mask)
            value[position] ^= mask


def test_every_byte_of_the_review_statement_is_protected(scene) -> None:
    bundle = console_bundle(scene, scene.active())
    raw = bytearray(_decode(bundle["review"]["content"]))
    outcomes: dict[str, int] = {}
    for position in range(len(raw)):
        raw[position] ^= 0x01
        flipped = copy.deepcopy(bundle)
        flipped["review"]["content"] = _encode(bytes(raw))
        code = refused(flipped)
        assert code == expected_for_review(bytes(raw), bundle), position
        outcomes[code] = outcomes.get(code, 0) + 1
        raw[position] ^= 0x01
    assert set(outcomes) == {"signature_invalid", "not_canonical", "review_mismatch"}, outcomes


def test_a_bundle_naming_another_prescription_or_version_is_refused(scene) -> None:
    first = console_bundle(scene, scene.active())
    second = console_bundle(scene, scene.active())
    assert refused(dict(first, prescription_id=second["prescription_id"])) == "content_mismatch"
    assert refused(dict(first, version=2)) == "content_mismatch"
    # Another prescription's signed content under this one's signatures.
    assert refused(dict(first, signed_content=second["signed_content"])) == "content_mismatch"


def test_a_change_in_the_stored_bytes_is_caught_by_the_server(scene) -> None:
    under_review = scene.signed()
    active = scene.active()
    for prescription_id in (under_review, active):
        version = PrescriptionVersion.objects.get(prescription_id=prescription_id)
        stored = bytearray(bytes(version.signed_bytes))
        position = stored.index(b'"quantity":1') + len(b'"quantity":')
        stored[position] ^= 0x02  # 1 -> 3 boxes
        PrescriptionVersion.objects.filter(pk=version.pk).update(signed_bytes=bytes(stored))

    detail = scene.pharmacist_session.get(f"{CONSOLE}/prescriptions/{under_review}").json()
    assert detail["verification"]["valid"] is False
    assert detail["verification"]["code"] == "signature_invalid"
    body = assert_problem(scene.approve(under_review), 422, "bundle_invalid")
    assert body["verification_code"] == "signature_invalid"
    assert status_of(under_review) == "under_review"

    body = assert_problem(scene.claim(active), 422, "bundle_invalid")
    assert body["verification_code"] == "signature_invalid"
    assert status_of(active) == "active"


# --- Revocation -------------------------------------------------------------------------------


def test_a_forgery_helper_control_holds_at_the_end_of_a_second(scene) -> None:
    """The refusals below compare a forged bundle with its control: the control must
    verify at any instant, also 1 ms before a second ends, where the revocation list
    (whole seconds) is issued in the same second as the signature."""
    bundle = console_bundle(scene, scene.active())
    doctor = current(scene, CertificateRole.DOCTOR)
    pharmacist = current(scene, CertificateRole.PHARMACIST)
    late = timezone.now().replace(microsecond=999000) + dt.timedelta(seconds=3)
    with time_machine.travel(late, tick=False):
        forged = forge(bundle, doctor=doctor, pharmacist=pharmacist, signed_at=timezone.now())
        verified = verify_bundle(forged)
    assert verified.doctor.signed_at == late
    assert verified.pharmacist is not None
    assert verified.pharmacist.signed_at >= verified.doctor.signed_at


def test_a_certificate_revoked_before_signing_is_refused(scene) -> None:
    prescription_id = scene.active()
    bundle = console_bundle(scene, prescription_id)
    doctor_cert = current(scene, CertificateRole.DOCTOR)
    pharmacist_cert = current(scene, CertificateRole.PHARMACIST)

    # Control: re-signed now by the valid certificates, the forgery helper's bundle verifies.
    assert verify_bundle(
        forge(bundle, doctor=doctor_cert, pharmacist=pharmacist_cert, signed_at=timezone.now())
    )
    stale_crl = bundle["crl"]

    with time_machine.travel(timezone.now() + dt.timedelta(seconds=10), tick=True) as clock:
        certificate_revoke(certificate=doctor_cert, reason="key compromise")
        doctor_cert.refresh_from_db()
        assert doctor_cert.revoked_at is not None
        clock.shift(dt.timedelta(seconds=10))
        signed_at = timezone.now()
        forged = forge(bundle, doctor=doctor_cert, pharmacist=pharmacist_cert, signed_at=signed_at)
        crl = x509.load_der_x509_crl(_decode(forged["crl"]))
        entry = crl.get_revoked_certificate_by_serial_number(int(doctor_cert.serial_number, 16))
        assert entry is not None
        assert entry.revocation_date_utc < signed_at
        assert refused(forged) == "certificate_revoked"
        # An old revocation list does not hide it: it must be newer than the signature.
        assert refused(dict(forged, crl=stale_crl)) == "crl_invalid"
        # The server refuses the revoked certificate when the doctor signs.
        draft = scene.draft().json()["id"]
        assert_problem(scene.sign(draft), 409, "no_signing_certificate")
        assert status_of(draft) == "draft"


def test_a_certificate_revoked_after_signing_still_verifies(scene) -> None:
    prescription_id = scene.active()
    original = console_bundle(scene, prescription_id)
    signed_at = dt.datetime.fromisoformat(original["doctor_signature"]["signed_at"])
    reviewed_at = dt.datetime.fromisoformat(original["review"]["signature"]["signed_at"])
    doctor_cert = current(scene, CertificateRole.DOCTOR)
    pharmacist_cert = current(scene, CertificateRole.PHARMACIST)

    with time_machine.travel(timezone.now() + dt.timedelta(seconds=5), tick=True):
        certificate_revoke(certificate=doctor_cert, reason="left the hospital")
        certificate_revoke(certificate=pharmacist_cert, reason="left the hospital")
        bundle = console_bundle(scene, prescription_id)
        crl = x509.load_der_x509_crl(_decode(bundle["crl"]))
        for certificate, signed in ((doctor_cert, signed_at), (pharmacist_cert, reviewed_at)):
            certificate.refresh_from_db()
            assert certificate.revoked_at is not None
            entry = crl.get_revoked_certificate_by_serial_number(int(certificate.serial_number, 16))
            assert entry is not None
            assert entry.revocation_date_utc > signed
            assert crl.last_update_utc >= certificate.revoked_at.replace(microsecond=0)

        verified = verify_bundle(bundle, trusted_roots={bundle["root_sha256"]})
        assert verified.prescription_id == prescription_id
        detail = scene.doctor_session.get(f"{CONSOLE}/prescriptions/{prescription_id}").json()
        assert detail["verification"]["valid"] is True
        # The server verifies again before a claim, against a list newer than now.
        claim = scene.claim(prescription_id)
        assert claim.status_code == 200, claim.content
        served = scene.pharmacy_api.get(f"{PHARMACY}/prescriptions/{prescription_id}/bundle")
        assert verify_bundle(served.json()).prescription_id == prescription_id


def test_a_revocation_later_in_the_same_second_leaves_the_signatures_valid(scene) -> None:
    """A CRL's dates have whole seconds. Signed and approved at .200 and both certificates
    revoked at .800 of the same second: the list must not date the revocations at the
    start of that second, before the signatures, or a prescription the server accepted
    would be refused by every pharmacy."""
    moment = (timezone.now() + dt.timedelta(seconds=3)).replace(microsecond=200_000)
    with time_machine.travel(moment, tick=False):
        prescription_id = scene.active()
    doctor_cert = current(scene, CertificateRole.DOCTOR)
    pharmacist_cert = current(scene, CertificateRole.PHARMACIST)
    revoked_at = moment + dt.timedelta(milliseconds=600)
    with time_machine.travel(revoked_at, tick=False):
        certificate_revoke(certificate=doctor_cert, reason="left the hospital")
        certificate_revoke(certificate=pharmacist_cert, reason="left the hospital")
        bundle = console_bundle(scene, prescription_id)
        assert dt.datetime.fromisoformat(bundle["doctor_signature"]["signed_at"]) == moment
        assert dt.datetime.fromisoformat(bundle["review"]["signature"]["signed_at"]) == moment
        crl = x509.load_der_x509_crl(_decode(bundle["crl"]))
        for certificate in (doctor_cert, pharmacist_cert):
            certificate.refresh_from_db()
            assert certificate.revoked_at == revoked_at
            entry = crl.get_revoked_certificate_by_serial_number(int(certificate.serial_number, 16))
            assert entry is not None
            # Listed at the next whole second: after the signatures, not before them.
            assert entry.revocation_date_utc == moment.replace(microsecond=0) + dt.timedelta(
                seconds=1
            )
        assert verify_bundle(bundle).prescription_id == prescription_id
        detail = scene.doctor_session.get(f"{CONSOLE}/prescriptions/{prescription_id}").json()
        assert detail["verification"]["valid"] is True, detail["verification"]
        claim = scene.claim(prescription_id)
        assert claim.status_code == 200, claim.content


def test_a_revocation_issued_after_a_verification_is_in_the_next_one(scene) -> None:
    """The server keeps its signed revocation list between requests; a revocation makes
    the next verification use a new list that names it."""
    first = scene.active()
    before = x509.load_der_x509_crl(_decode(console_bundle(scene, first)["crl"]))
    number = before.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    later = scene.active()  # approved with the list above still current
    doctor_cert = current(scene, CertificateRole.DOCTOR)
    serial = int(doctor_cert.serial_number, 16)
    assert before.get_revoked_certificate_by_serial_number(serial) is None

    with time_machine.travel(timezone.now() + dt.timedelta(seconds=5), tick=True):
        certificate_revoke(certificate=doctor_cert, reason="left the hospital")
        # The server verifies before the claim, against the list with the revocation
        # (dated after both signatures, so the claim goes through), and serves that list.
        claim = scene.claim(later)
        assert claim.status_code == 200, claim.content
        served = scene.pharmacy_api.get(f"{PHARMACY}/prescriptions/{later}/bundle").json()
        crl = x509.load_der_x509_crl(_decode(served["crl"]))
        assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == (
            number + 1
        )
        assert crl.get_revoked_certificate_by_serial_number(serial) is not None
        for bundle in (console_bundle(scene, first), console_bundle(scene, later)):
            listed = x509.load_der_x509_crl(_decode(bundle["crl"]))
            assert listed.get_revoked_certificate_by_serial_number(serial) is not None


def test_a_prescription_signed_after_the_list_was_made_verifies_on_reading(scene) -> None:
    """A kept revocation list older than a new signature is not served for it: the
    doctor's and the pharmacist's reading show the new prescription verified."""
    scene.active()  # the server has made and kept a revocation list
    with time_machine.travel(timezone.now() + dt.timedelta(minutes=10), tick=True):
        prescription_id = scene.signed()
        detail = scene.doctor_session.get(f"{CONSOLE}/prescriptions/{prescription_id}").json()
        assert detail["verification"]["valid"] is True, detail["verification"]
        bundle = console_bundle(scene, prescription_id)
        assert verify_bundle(bundle, require_review=False).prescription_id == prescription_id


def test_a_revocation_list_from_another_hospital_is_refused(scene) -> None:
    bundle = console_bundle(scene, scene.active())
    other = authority_create(hospital=HospitalFactory())
    foreign = _encode(crl_der(authority=other, newer_than=timezone.now()))
    assert refused(dict(bundle, crl=foreign)) == "crl_invalid"
    assert refused(dict(bundle, crl=_encode(b"not a CRL"))) == "crl_invalid"


# --- Who signed -------------------------------------------------------------------------------


def test_a_pharmacists_signature_in_the_doctors_place_is_refused(scene) -> None:
    bundle = console_bundle(scene, scene.active())
    pharmacist_cert = current(scene, CertificateRole.PHARMACIST)
    forged = dict(bundle, doctor_signature=resigned_doctor_block(bundle, pharmacist_cert))
    assert refused(forged) == "wrong_role"

    # And the doctor cannot review their own prescription either.
    doctor_cert = current(scene, CertificateRole.DOCTOR)
    review_bytes = _decode(bundle["review"]["content"])
    reviewed = copy.deepcopy(bundle)
    reviewed["review"]["signature"] = signature_block(
        certificate=doctor_cert,
        value=LocalSigner().sign(certificate=doctor_cert, data=review_bytes),
        signed_at=dt.datetime.fromisoformat(bundle["review"]["signature"]["signed_at"]),
    )
    assert refused(reviewed) == "wrong_role"


def test_the_institution_seal_cannot_stand_for_the_doctor(scene) -> None:
    bundle = console_bundle(scene, scene.active())
    seal = seal_sign(hospital=scene.hospital, data=_decode(bundle["signed_content"]))
    assert seal.certificate.role == CertificateRole.INSTITUTION
    forged = dict(
        bundle,
        doctor_signature=signature_block(
            certificate=seal.certificate, value=seal.value, signed_at=seal.signed_at
        ),
    )
    assert refused(forged) == "wrong_role"


def test_another_doctors_or_another_hospitals_certificate_is_refused(scene) -> None:
    bundle = console_bundle(scene, scene.active())
    colleague = PractitionerFactory(hospital=scene.hospital, department=scene.department)
    theirs = certificate_issue(practitioner=colleague)
    forged = dict(bundle, doctor_signature=resigned_doctor_block(bundle, theirs))
    assert refused(forged) == "content_mismatch"

    elsewhere = DepartmentFactory()
    outsider = certificate_issue(
        practitioner=PractitionerFactory(hospital=elsewhere.hospital, department=elsewhere)
    )
    block = resigned_doctor_block(bundle, outsider)
    block["certificate_chain"] = [block["certificate_chain"][0], bundle["root_certificate"]]
    assert refused(dict(bundle, doctor_signature=block)) == "chain_invalid"
    # With its own root in the chain, it ends at another root.
    assert refused(dict(bundle, doctor_signature=resigned_doctor_block(bundle, outsider))) == (
        "chain_invalid"
    )


def test_a_service_account_cannot_sign_or_approve(scene) -> None:
    draft = scene.draft().json()["id"]
    code = fresh_otp(scene.doctor.user)
    token = client_for(scene.doctor.user)
    response = token.post(f"{CONSOLE}/prescriptions/{draft}/sign", {"otp": code}, format="json")
    assert_problem(response, 403, "signature_required")
    assert status_of(draft) == "draft"
    # The token's attempt did not spend the doctor's code.
    assert scene.sign(draft, otp=code).status_code == 200

    approve = client_for(scene.pharmacist.user).post(
        f"{CONSOLE}/prescriptions/{draft}/approve",
        {"otp": fresh_otp(scene.pharmacist.user)},
        format="json",
    )
    assert_problem(approve, 403, "signature_required")
    assert status_of(draft) == "under_review"

    # A pharmacy system's token is not a prescriber at all.
    other = scene.draft().json()["id"]
    _, pharmacy_api = pharmacy_staff()
    response = pharmacy_api.post(
        f"{CONSOLE}/prescriptions/{other}/sign", {"otp": code}, format="json"
    )
    assert_problem(response, 403, "permission_denied")
    assert status_of(other) == "draft"


# --- When it was signed -----------------------------------------------------------------------


def test_the_signing_day_must_be_the_issue_day(department) -> None:
    noon = dt.datetime(2026, 11, 2, 12, 0, tzinfo=SHANGHAI)
    with time_machine.travel(noon, tick=True):
        scene = RxScene(department)
        bundle = console_bundle(scene, scene.active())
        doctor = current(scene, CertificateRole.DOCTOR)
        pharmacist = current(scene, CertificateRole.PHARMACIST)
        now = timezone.now()

        def forged(issued_at: dt.datetime) -> dict[str, Any]:
            return forge(
                bundle, doctor=doctor, pharmacist=pharmacist, signed_at=now, issued_at=issued_at
            )

        assert refused(forged(now - dt.timedelta(days=1))) == "signing_day_mismatch"
        assert refused(forged(now + dt.timedelta(days=1))) == "signing_day_mismatch"
        # Issued later than signed (beyond the clock skew) on the same day.
        assert refused(forged(now + dt.timedelta(minutes=6))) == "signing_day_mismatch"
        # Within the day and the skew it verifies.
        assert verify_bundle(forged(now - dt.timedelta(hours=1)))
        assert verify_bundle(forged(now + dt.timedelta(minutes=4)))

        # The server re-verifies the stored bytes: a version whose content says it was
        # issued the day before is not approved.
        prescription_id = scene.signed()
        version = PrescriptionVersion.objects.get(prescription_id=prescription_id)
        content = json.loads(bytes(version.signed_bytes))
        content["issued_at"] = _iso(version.signed_at - dt.timedelta(days=1))
        signed = rfc8785.dumps(content)
        PrescriptionVersion.objects.filter(pk=version.pk).update(
            signed_bytes=signed,
            doctor_signature=LocalSigner().sign(certificate=doctor, data=signed),
        )
        body = assert_problem(scene.approve(prescription_id), 422, "bundle_invalid")
        assert body["verification_code"] == "signing_day_mismatch"
        assert status_of(prescription_id) == "under_review"


def test_the_midnight_boundary_of_the_signing_day(department) -> None:
    before_midnight = dt.datetime(2026, 11, 2, 23, 59, 0, tzinfo=SHANGHAI)
    with time_machine.travel(before_midnight, tick=True):
        scene = RxScene(department)
        bundle = console_bundle(scene, scene.active())
        doctor = current(scene, CertificateRole.DOCTOR)
        pharmacist = current(scene, CertificateRole.PHARMACIST)
    last_second = dt.datetime(2026, 11, 2, 23, 59, 59, 999999, tzinfo=SHANGHAI)
    first_second = dt.datetime(2026, 11, 3, 0, 0, 0, tzinfo=SHANGHAI)
    with time_machine.travel(first_second + dt.timedelta(seconds=2), tick=False):

        def forged(signed_at: dt.datetime, issued_at: dt.datetime) -> dict[str, Any]:
            return forge(
                bundle,
                doctor=doctor,
                pharmacist=pharmacist,
                signed_at=signed_at,
                issued_at=issued_at,
            )

        assert verify_bundle(forged(last_second, last_second))
        assert verify_bundle(forged(first_second, first_second))
        # One microsecond apart, on two days (Asia/Shanghai).
        assert refused(forged(first_second, last_second)) == "signing_day_mismatch"


def test_a_prescription_signed_across_midnight_is_still_verifiable(department) -> None:
    midnight = dt.datetime(2026, 11, 3, 0, 0, tzinfo=SHANGHAI)
    with time_machine.travel(midnight - dt.timedelta(minutes=5), tick=True):
        scene = RxScene(department)
        draft = scene.draft(validity_days=2)
        assert draft.status_code == 201, draft.content
        prescription_id = draft.json()["id"]

    # The clock stands at the last microsecond of the day and moves on, as clocks do,
    # while the request runs: during the query that loads the signing certificate
    # (the second one of the request, after the signing act's own).
    with time_machine.travel(midnight - dt.timedelta(microseconds=1), tick=False) as clock:
        queries: list[str] = []

        def clock_moves(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
            if "pki_signingcertificate" in sql:
                queries.append(sql)
                if len(queries) == 2:
                    clock.shift(dt.timedelta(milliseconds=1))
            return execute(sql, params, many, context)

        with connection.execute_wrapper(clock_moves):
            signed = scene.sign(prescription_id)
        assert signed.status_code == 200, signed.content
        assert len(queries) >= 2
        bundle = console_bundle(scene, prescription_id)
        verify_bundle(bundle, require_review=False)
        assert scene.approve(prescription_id).status_code == 200


# --- The review names the doctor's signature ----------------------------------------------------


def test_a_review_belongs_to_one_signature(scene) -> None:
    first = console_bundle(scene, scene.active())
    second = console_bundle(scene, scene.active())
    assert refused(dict(first, review=second["review"])) == "review_mismatch"
    assert refused(dict(second, review=first["review"])) == "review_mismatch"

    # A new, valid doctor's signature over the same bytes is not the one reviewed.
    doctor_cert = current(scene, CertificateRole.DOCTOR)
    resigned = dict(first, doctor_signature=resigned_doctor_block(first, doctor_cert))
    assert resigned["doctor_signature"]["value"] != first["doctor_signature"]["value"]
    assert refused(resigned, require_review=False) == "review_mismatch"
    assert verify_bundle(dict(resigned, review=None), require_review=False)
    assert refused(resigned) == "review_mismatch"

    # A review that says anything but "approved" does not make it effective.
    pharmacist_cert = current(scene, CertificateRole.PHARMACIST)
    rejected = forge(
        first,
        doctor=doctor_cert,
        pharmacist=pharmacist_cert,
        signed_at=timezone.now(),
        statement_changes={"result": "rejected"},
    )
    assert refused(rejected) == "review_mismatch"
    # A review by a pharmacist other than the one the statement names.
    colleague = PractitionerFactory(
        hospital=scene.hospital,
        department=None,
        kind="pharmacist",
        user__role="pharmacist",
    )
    other_cert = certificate_issue(practitioner=colleague)
    assert refused(
        forge(first, doctor=doctor_cert, pharmacist=other_cert, signed_at=timezone.now())
    ) == ("review_mismatch")


def test_a_bundle_without_its_review_is_not_effective(scene) -> None:
    prescription_id = scene.signed()
    bundle = console_bundle(scene, prescription_id)
    assert bundle["review"] is None
    assert bundle["status"] == "under_review"
    assert refused(bundle) == "review_missing"
    verified = verify_bundle(bundle, require_review=False)
    assert verified.pharmacist is None
    assert verified.prescription_id == prescription_id


# --- Canonical form and the root --------------------------------------------------------------


def test_non_canonical_json_is_refused_even_when_signed(scene) -> None:
    bundle = console_bundle(scene, scene.active())
    doctor_cert = current(scene, CertificateRole.DOCTOR)
    content = json.loads(_decode(bundle["signed_content"]))
    variants = [
        json.dumps(content, ensure_ascii=False, sort_keys=True).encode(),  # spaces
        json.dumps(  # keys in reverse order
            dict(reversed(content.items())), ensure_ascii=False, separators=(",", ":")
        ).encode(),
        json.dumps(content, sort_keys=True, separators=(",", ":")).encode(),  # \\u escapes
        rfc8785.dumps(content) + b"\n",
    ]
    for raw in variants:
        assert raw != _decode(bundle["signed_content"])
        assert json.loads(raw) == content
        # Signed by the doctor's real key: only the form is wrong.
        forged = dict(
            bundle,
            signed_content=_encode(raw),
            doctor_signature=resigned_doctor_block(bundle, doctor_cert, data=raw),
        )
        assert refused(forged) == "not_canonical", raw[:40]

    statement = json.loads(_decode(bundle["review"]["content"]))
    spaced = copy.deepcopy(bundle)
    spaced["review"]["content"] = _encode(json.dumps(statement, sort_keys=True).encode())
    assert refused(spaced) == "not_canonical"


def test_the_root_must_be_the_pinned_hospital_root(scene, api, tmp_path) -> None:
    prescription_id = scene.active()
    bundle = console_bundle(scene, prescription_id)
    ours = CertificateAuthority.objects.get(hospital=scene.hospital)
    other_hospital = HospitalFactory()
    theirs = authority_create(hospital=other_hospital)

    assert refused(bundle, trusted_roots={theirs.fingerprint_sha256}) == "untrusted_root"
    assert verify_bundle(bundle, trusted_roots={theirs.fingerprint_sha256, ours.fingerprint_sha256})
    # The bundle's root replaced by the other hospital's: not ours, and not its chain.
    swapped = dict(bundle, root_certificate=theirs.certificate_pem)
    assert refused(swapped, trusted_roots={ours.fingerprint_sha256}) == "untrusted_root"
    # (Its revocation list is not that root's either; with that root's list, the chains
    # still end at our root.)
    assert refused(swapped, trusted_roots={theirs.fingerprint_sha256}) == "crl_invalid"
    their_crl = _encode(crl_der(authority=theirs, newer_than=timezone.now()))
    swapped_all = dict(swapped, crl=their_crl)
    assert refused(swapped_all, trusted_roots={theirs.fingerprint_sha256}) == "chain_invalid"

    # The same through the command-line verifier, with roots from the public endpoint.
    (tmp_path / "bundle.json").write_text(json.dumps(bundle), encoding="utf-8")
    (tmp_path / "swapped.json").write_text(json.dumps(swapped), encoding="utf-8")
    for hospital, name in ((scene.hospital, "ours.pem"), (other_hospital, "theirs.pem")):
        pem = api.get(f"{PKI}/hospitals/{hospital.pk}/root.pem")
        (tmp_path / name).write_bytes(pem.content)
    bundle_path, swapped_path = str(tmp_path / "bundle.json"), str(tmp_path / "swapped.json")
    ours_pem, theirs_pem = str(tmp_path / "ours.pem"), str(tmp_path / "theirs.pem")

    status, out = run_cli(bundle_path, "--root", ours_pem)
    assert status == 0
    assert out["valid"] is True
    assert out["prescription_id"] == prescription_id
    assert out["root_sha256"] == ours.fingerprint_sha256
    status, out = run_cli(bundle_path, "--root", theirs_pem)
    assert (status, out["valid"], out["code"]) == (1, False, "untrusted_root")
    status, out = run_cli(swapped_path, "--root", ours_pem)
    assert (status, out["code"]) == (1, "untrusted_root")
    status, out = run_cli(bundle_path, "--root", theirs_pem, "--root", ours_pem)
    assert status == 0


def test_the_cli_accepts_a_signed_bundle_only_with_review_optional(scene, tmp_path) -> None:
    bundle = console_bundle(scene, scene.signed())
    path = tmp_path / "signed.json"
    path.write_text(json.dumps(bundle), encoding="utf-8")
    status, out = run_cli(str(path))
    assert (status, out["code"]) == (1, "review_missing")
    status, out = run_cli(str(path), "--review-optional")
    assert status == 0
    assert out["pharmacist"] is None
    assert out["doctor"]["practice_certificate_number"] == scene.doctor.practice_certificate_number


@pytest.mark.parametrize("number", [b"1e400", b"9007199254740993"])
def test_numbers_outside_json_canonical_form_are_refused_with_a_code(scene, number) -> None:
    bundle = console_bundle(scene, scene.active())
    raw = b'{"id":"' + bundle["prescription_id"].encode() + b'","n":' + number + b',"version":1}'
    assert refused(dict(bundle, signed_content=_encode(raw))) == "not_canonical"


def _random_json(rng: Any, depth: int = 0) -> Any:
    """Values that stress canonical printing: control characters, quotes, backslashes,
    U+2028, non-BMP characters (in values and keys), big integers and floats."""
    alphabet = ["a", "Z", "中", "é", '"', "\\", "\n", "\x01", "\x1f", "\x7f", "\u2028", "😀", "/"]

    def text() -> str:
        return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 6)))

    kind = rng.randint(0, 9 if depth < 3 else 5)
    if kind == 0:
        return text()
    if kind == 1:
        return rng.choice([0, -1, 7, 2**53 - 1, -(2**53 - 1), 12345678901])
    if kind == 2:
        return rng.choice([True, False, None])
    if kind == 3:
        return rng.choice([0.5, 1e21, 1.0, -0.0, 3.14159, 2**53 + 1])
    if kind in (4, 5):
        return text()
    if kind in (6, 7):
        return [_random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {text(): _random_json(rng, depth + 1) for _ in range(rng.randint(0, 5))}


def test_the_verifiers_canonical_check_agrees_with_rfc_8785_byte_for_byte() -> None:
    """The offline verifier checks canonical form with the standard library's encoder
    where that prints RFC 8785's bytes, and with ``rfc8785`` elsewhere. On 3,000 random
    documents it accepts exactly RFC 8785's bytes and refuses Python's own form wherever
    that differs (floats, big integers, characters beyond the BMP in keys)."""
    import random

    from prescriptions.verify import VerificationError, _canonical_json

    def accepted(raw: bytes) -> bool:
        try:
            _canonical_json(raw, "document")
        except VerificationError:
            return False
        return True

    rng = random.Random(20261205)
    differs = 0
    for _ in range(3000):
        document = {"k": _random_json(rng), "中": _random_json(rng), "😀": _random_json(rng)}
        document = dict(rng.sample(sorted(document.items()), k=rng.randint(1, 3)))
        try:
            canonical = rfc8785.dumps(document)
        except (ValueError, TypeError):
            continue
        assert accepted(canonical), canonical
        pythons = json.dumps(
            document, sort_keys=True, ensure_ascii=False, separators=(",", ":")
        ).encode()
        assert accepted(pythons) == (pythons == canonical), pythons
        differs += pythons != canonical
        assert not accepted(json.dumps(document, sort_keys=True).encode()) or (
            json.dumps(document, sort_keys=True).encode() == canonical
        )
    assert differs > 100  # the fall-back path was really exercised
