"""The hospital's certificate authority, its doctors' and pharmacists' signing
certificates, the public root and revocation list, and the signing act that stands
between a signature and the person (DOMAIN rule 10; 电子签名法 第13条).

Everything runs against the real services, the real database and real HTTP calls; keys
and signatures are real. Nothing of the project is mocked.
"""

from __future__ import annotations

import ast
import base64
import copy
import datetime as dt
import hashlib
import re
import threading
import time
import types
from pathlib import Path
from typing import Any

import pytest
import time_machine
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID
from django.core.cache import cache
from django.db import connection, connections, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.test import APIClient

from backend.api.problems import DomainError
from backend.audit.models import AuditChainHead, AuditEvent
from backend.identity.models import Role, User
from backend.identity.services import totp_code_at
from backend.organisations.models import Hospital, Practitioner, PractitionerKind
from backend.pki.models import CertificateAuthority, CertificateRole, SigningCertificate
from backend.pki.services import (
    SigningAct,
    authority_create,
    certificate_current,
    certificate_issue,
    certificate_revoke,
    crl_der,
    seal_sign,
    signature_create,
    signing_act_authorise,
)
from prescriptions.models import PrescriptionVersion
from prescriptions.verify import VerificationError, verify_bundle
from tests.consult_http_helpers import (
    CONSOLE,
    MOBILE,
    Scene,
    assert_problem,
    require_postgres,
)
from tests.factories import PASSWORD, DepartmentFactory, HospitalFactory, PractitionerFactory
from tests.rx_helpers import (
    RxScene,
    console_session,
    fresh_otp,
    line,
    load_catalogue,
    status_of,
)

pytestmark = pytest.mark.django_db

PKI = "/api/pki/v1"
ROOT = Path(__file__).resolve().parent.parent
ORGANIZATION_IDENTIFIER = x509.ObjectIdentifier("2.5.4.97")


# --- Helpers ----------------------------------------------------------------------------------


def _doctor(department: Any) -> Practitioner:
    return PractitionerFactory(hospital=department.hospital, department=department)


def _pharmacist(hospital: Hospital) -> Practitioner:
    return PractitionerFactory(
        hospital=hospital,
        department=None,
        kind=PractitionerKind.PHARMACIST,
        user__role=Role.PHARMACIST,
        title="主管药师",
    )


def _cert(certificate: SigningCertificate | CertificateAuthority) -> x509.Certificate:
    return x509.load_pem_x509_certificate(certificate.certificate_pem.encode())


def _attribute(certificate: x509.Certificate, oid: x509.ObjectIdentifier) -> list[str]:
    return [str(a.value) for a in certificate.subject.get_attributes_for_oid(oid)]


def _raw_column(model: type[Any], column: str) -> dict[str, str]:
    """``certificate_pem`` -> the value of ``column`` as stored in the database, read with
    a plain cursor (no model field, so no decryption)."""
    table = connection.ops.quote_name(model._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT certificate_pem, {column} FROM {table}")  # noqa: S608
        return dict(cursor.fetchall())


def _verifies(public: Any, signature: bytes, data: bytes) -> bool:
    try:
        if isinstance(public, ed25519.Ed25519PublicKey):
            public.verify(signature, data)
        else:
            public.verify(signature, data, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


def _wrong_code(user: User) -> str:
    """A six-digit code that is none of the codes accepted now (this step or either side)."""
    assert user.totp_secret
    now = timezone.now()
    accepted = {
        totp_code_at(secret=user.totp_secret, when=now + dt.timedelta(seconds=s))
        for s in (-60, -30, 0, 30, 60)
    }
    return next(c for c in ("000000", "111111", "222222", "333333", "444444") if c not in accepted)


def _authorise(practitioner: Practitioner, purpose: str = "prescription") -> SigningAct:
    return signing_act_authorise(
        user=practitioner.user, otp=fresh_otp(practitioner.user), purpose=purpose
    )


def _crl(response_or_der: Any) -> x509.CertificateRevocationList:
    der = response_or_der if isinstance(response_or_der, bytes) else response_or_der.content
    return x509.load_der_x509_crl(der)


# --- The hospital's root CA -------------------------------------------------------------------


def test_the_hospital_ca_is_created_once(hospital) -> None:
    first = authority_create(hospital=hospital)
    again = authority_create(hospital=hospital)
    doctor = _doctor(DepartmentFactory(hospital=hospital))
    issued = certificate_issue(practitioner=doctor)

    assert again.pk == first.pk
    assert issued.authority_id == first.pk
    assert CertificateAuthority.objects.filter(hospital=hospital).count() == 1
    # One institution seal certificate with the CA, none added by the later calls.
    assert (
        SigningCertificate.objects.filter(authority=first, role=CertificateRole.INSTITUTION).count()
        == 1
    )
    assert (
        AuditEvent.objects.filter(
            action="pki.authority_created", object_id=str(hospital.pk)
        ).count()
        == 1
    )

    root = _cert(first)
    assert first.algorithm == "ecdsa-p256-sha256"
    assert isinstance(root.public_key(), ec.EllipticCurvePublicKey)
    assert root.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    assert root.subject == root.issuer
    root.verify_directly_issued_by(root)  # self-signed
    assert (
        first.fingerprint_sha256
        == hashlib.sha256(root.public_bytes(serialization.Encoding.DER)).hexdigest()
    )
    assert _attribute(root, NameOID.COMMON_NAME) == [f"{hospital.name} Root CA"]
    assert _attribute(root, NameOID.ORGANIZATION_NAME) == [hospital.name]
    assert _attribute(root, ORGANIZATION_IDENTIFIER) == [hospital.unified_social_credit_code]
    constraints = root.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca is True
    assert constraints.value.path_length == 0
    usage = root.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign
    assert usage.crl_sign
    assert not usage.digital_signature


def test_two_hospitals_have_two_roots(hospital) -> None:
    other = HospitalFactory()
    mine, theirs = authority_create(hospital=hospital), authority_create(hospital=other)
    assert mine.pk != theirs.pk
    assert mine.fingerprint_sha256 != theirs.fingerprint_sha256
    with pytest.raises(ValueError, match="does not match"):
        _cert(mine).verify_directly_issued_by(_cert(theirs))


@pytest.mark.django_db(transaction=True)
def test_concurrent_ca_creation_and_issuance_make_one_ca_and_one_current_certificate() -> None:
    require_postgres("the CA creation race (threads, separate connections)")
    department = DepartmentFactory()
    hospital = department.hospital
    doctor = _doctor(department)
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            barrier.wait(timeout=10)
            if index % 2:
                authority_create(hospital=Hospital.objects.get(pk=hospital.pk))
            else:
                certificate_issue(practitioner=Practitioner.objects.get(pk=doctor.pk))
        except BaseException as exc:  # surfaced below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert errors == []
    assert CertificateAuthority.objects.filter(hospital=hospital).count() == 1
    mine = SigningCertificate.objects.filter(practitioner=doctor)
    assert mine.count() == 2
    assert mine.filter(revoked_at=None).count() == 1
    assert mine.get(revoked_at__isnull=False).revocation_reason == "superseded"
    assert (
        SigningCertificate.objects.filter(
            authority__hospital=hospital, role=CertificateRole.INSTITUTION
        ).count()
        == 1
    )


def test_private_keys_are_encrypted_at_rest(department) -> None:
    doctor = _doctor(department)
    issued = certificate_issue(practitioner=doctor)
    authority = issued.authority

    for model, row in ((CertificateAuthority, authority), (SigningCertificate, issued)):
        raw = _raw_column(model, "private_key_pem")[row.certificate_pem]
        assert "PRIVATE KEY" not in raw
        assert "-----" not in raw
        assert raw.startswith("v1:")
        # Through the model the key decrypts, and it is the certificate's key.
        decrypted = model.objects.get(certificate_pem=row.certificate_pem).private_key_pem
        assert decrypted.startswith("-----BEGIN PRIVATE KEY-----")
        body = "".join(decrypted.strip().splitlines()[1:-1])
        assert body not in raw
        key = serialization.load_pem_private_key(decrypted.encode(), password=None)
        public = serialization.PublicFormat.SubjectPublicKeyInfo
        assert key.public_key().public_bytes(serialization.Encoding.DER, public) == _cert(
            row
        ).public_key().public_bytes(serialization.Encoding.DER, public)


# --- Signing certificates ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", [PractitionerKind.DOCTOR, PractitionerKind.PHARMACIST])
def test_a_signing_certificate_names_the_person_role_and_hospital(department, kind) -> None:
    hospital = department.hospital
    person = _doctor(department) if kind == PractitionerKind.DOCTOR else _pharmacist(hospital)
    issued = certificate_issue(practitioner=person)
    certificate = _cert(issued)
    root = _cert(issued.authority)

    assert issued.role == str(kind)
    assert issued.user_id == person.user_id
    assert issued.practitioner_id == person.pk
    assert issued.algorithm == "ecdsa-p256-sha256"
    assert _attribute(certificate, NameOID.COMMON_NAME) == [person.user.display_name]
    assert _attribute(certificate, NameOID.SERIAL_NUMBER) == [person.practice_certificate_number]
    assert _attribute(certificate, NameOID.TITLE) == [str(kind)]
    assert _attribute(certificate, ORGANIZATION_IDENTIFIER) == [hospital.unified_social_credit_code]
    assert _attribute(certificate, NameOID.ORGANIZATION_NAME) == [hospital.name]
    assert _attribute(certificate, NameOID.COUNTRY_NAME) == ["CN"]

    usage = certificate.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical
    assert usage.value.digital_signature
    assert usage.value.content_commitment
    assert not usage.value.key_cert_sign
    assert not usage.value.crl_sign
    assert not usage.value.key_encipherment
    constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca is False

    assert certificate.issuer == root.subject
    certificate.verify_directly_issued_by(root)
    aki = certificate.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = root.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    assert issued.serial_number == format(certificate.serial_number, "x")
    assert issued.fingerprint_sha256 == certificate.fingerprint(hashes.SHA256()).hex()
    assert certificate_current(user=person.user, role=str(kind)) == issued
    event = AuditEvent.objects.get(action="pki.certificate_issued", object_id=str(issued.pk))
    after = event.after or {}
    assert after["serial"] == issued.serial_number
    assert after["practitioner"] == str(person.pk)


@pytest.mark.parametrize("days", [30, 365])
def test_validity_is_the_configured_number_of_days(department, settings, days) -> None:
    settings.SIGNING_CERT_VALIDITY_DAYS = days
    before = timezone.now().replace(microsecond=0)
    issued = certificate_issue(practitioner=_doctor(department))
    after = timezone.now()
    certificate = _cert(issued)

    # Issued now (back-dated five minutes for clock skew), valid for exactly ``days``.
    assert certificate.not_valid_after_utc - certificate.not_valid_before_utc == dt.timedelta(
        days=days, minutes=5
    )
    assert before - dt.timedelta(minutes=5) <= certificate.not_valid_before_utc <= after
    assert issued.not_before == certificate.not_valid_before_utc
    assert issued.not_after == certificate.not_valid_after_utc


def test_a_new_certificate_supersedes_the_previous_one(department) -> None:
    doctor = _doctor(department)
    first = certificate_issue(practitioner=doctor)
    authority = first.authority
    crl_number = CertificateAuthority.objects.get(pk=authority.pk).crl_number
    second = certificate_issue(practitioner=doctor)
    first.refresh_from_db()

    assert first.revoked_at is not None
    assert first.revocation_reason == "superseded"
    assert first.revoked_at <= second.created_at
    assert second.revoked_at is None
    assert second.serial_number != first.serial_number
    assert certificate_current(user=doctor.user, role=CertificateRole.DOCTOR) == second
    assert CertificateAuthority.objects.get(pk=authority.pk).crl_number == crl_number + 1
    revoked = AuditEvent.objects.get(action="pki.certificate_revoked", object_id=str(first.pk))
    assert revoked.after == {"serial": first.serial_number, "reason": "superseded"}

    crl = _crl(crl_der(authority=authority))
    assert crl.get_revoked_certificate_by_serial_number(int(first.serial_number, 16)) is not None
    assert crl.get_revoked_certificate_by_serial_number(int(second.serial_number, 16)) is None


def test_the_process_keeps_the_current_crl_until_a_revocation_or_a_newer_need(department) -> None:
    doctor = _doctor(department)
    first = certificate_issue(practitioner=doctor)
    authority = first.authority
    with time_machine.travel(timezone.now(), tick=False) as clock:
        kept = crl_der(authority=authority)
        cache.clear()  # the shared copy is gone: the process's own is still current
        assert crl_der(authority=authority) == kept

        # Needed newer than the kept one was issued (a signature made since): a new list.
        clock.shift(5)
        issued = _crl(kept).last_update_utc
        newer = crl_der(authority=authority, newer_than=issued + dt.timedelta(seconds=2))
        assert _crl(newer).last_update_utc > issued + dt.timedelta(seconds=2)

    # A revocation moves the CRL number on: the next list names it.
    certificate_revoke(certificate=first, reason="key compromise")
    after = _crl(crl_der(authority=authority))
    assert after.get_revoked_certificate_by_serial_number(int(first.serial_number, 16))
    assert bytes(crl_der(authority=authority)) == after.public_bytes(serialization.Encoding.DER)


def test_root_and_crl_are_public_and_the_crl_is_signed_by_the_root(department, api) -> None:
    hospital = department.hospital
    doctor, pharmacist = _doctor(department), _pharmacist(hospital)
    issued = certificate_issue(practitioner=doctor)
    certificate_issue(practitioner=pharmacist)
    authority = CertificateAuthority.objects.get(hospital=hospital)
    root = _cert(authority)

    pem = api.get(f"{PKI}/hospitals/{hospital.pk}/root.pem")
    assert pem.status_code == 200
    assert pem["Content-Type"] == "application/x-pem-file"
    assert pem.content.decode() == authority.certificate_pem
    assert pem["X-Certificate-SHA256"] == authority.fingerprint_sha256
    served = x509.load_pem_x509_certificate(pem.content)
    assert served.fingerprint(hashes.SHA256()).hex() == authority.fingerprint_sha256

    before = api.get(f"{PKI}/hospitals/{hospital.pk}/crl")
    assert before.status_code == 200
    assert before["Content-Type"] == "application/pkix-crl"
    assert before["Cache-Control"] == "public, max-age=300"
    crl = _crl(before)
    assert crl.issuer == root.subject
    assert crl.is_signature_valid(root.public_key())  # type: ignore[arg-type]
    assert len(crl) == 0
    number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    assert number == authority.crl_number
    assert crl.next_update_utc is not None
    assert crl.next_update_utc - crl.last_update_utc == dt.timedelta(days=1)

    revoked = certificate_revoke(certificate=issued, reason="key compromise")
    assert revoked.revoked_at is not None
    assert revoked.revocation_reason == "key compromise"
    after = _crl(api.get(f"{PKI}/hospitals/{hospital.pk}/crl"))
    assert after.is_signature_valid(root.public_key())  # type: ignore[arg-type]
    assert after.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == number + 1
    entry = after.get_revoked_certificate_by_serial_number(int(issued.serial_number, 16))
    assert entry is not None
    # Listed at the next whole second (CRL times have no fraction): never before it.
    listed = revoked.revoked_at.replace(microsecond=0)
    if revoked.revoked_at.microsecond:
        listed += dt.timedelta(seconds=1)
    assert entry.revocation_date_utc == listed
    assert len(after) == 1  # the pharmacist's certificate is not listed

    # Revoking again changes nothing: same date, no new list.
    certificate_revoke(certificate=issued, reason="again")
    issued.refresh_from_db()
    assert issued.revoked_at == revoked.revoked_at
    assert issued.revocation_reason == "key compromise"
    assert CertificateAuthority.objects.get(pk=authority.pk).crl_number == number + 1

    # Another hospital's root does not verify this list.
    other = authority_create(hospital=HospitalFactory())
    assert not after.is_signature_valid(_cert(other).public_key())  # type: ignore[arg-type]


def test_pki_endpoints_answer_404_for_a_hospital_without_a_ca(api) -> None:
    hospital = HospitalFactory()
    for path in ("root.pem", "crl"):
        assert_problem(api.get(f"{PKI}/hospitals/{hospital.pk}/{path}"), 404, "not_found")


def test_the_institution_seal_is_not_a_personal_certificate(hospital) -> None:
    authority = authority_create(hospital=hospital)
    seal = seal_sign(hospital=hospital, data=b"receipt")
    certificate = _cert(seal.certificate)

    assert seal.certificate.role == CertificateRole.INSTITUTION
    assert seal.certificate.user_id is None
    assert seal.certificate.practitioner_id is None
    assert seal.certificate.authority_id == authority.pk
    assert _attribute(certificate, NameOID.TITLE) == ["institution"]
    assert _attribute(certificate, NameOID.SERIAL_NUMBER) == []
    assert _attribute(certificate, NameOID.COMMON_NAME) == [f"{hospital.name} seal"]
    assert _verifies(certificate.public_key(), seal.value, b"receipt")


# --- Ed25519 ----------------------------------------------------------------------------------


@pytest.mark.usefixtures("icd10")
def test_an_ed25519_hospital_signs_approves_and_verifies(department, settings) -> None:
    settings.SIGNING_ALGORITHM = "ed25519"
    scene = RxScene(department)
    prescription_id = scene.active()
    authority = CertificateAuthority.objects.get(hospital=scene.hospital)
    root = _cert(authority)
    assert authority.algorithm == "ed25519"
    assert isinstance(root.public_key(), ed25519.Ed25519PublicKey)

    bundle = scene.doctor_session.get(f"{CONSOLE}/prescriptions/{prescription_id}/bundle").json()
    verified = verify_bundle(bundle, trusted_roots={authority.fingerprint_sha256})
    assert verified.prescription_id == prescription_id
    assert verified.doctor.practice_certificate_number == scene.doctor.practice_certificate_number
    assert verified.pharmacist is not None
    assert (
        verified.pharmacist.practice_certificate_number
        == scene.pharmacist.practice_certificate_number
    )
    for block in (bundle["doctor_signature"], bundle["review"]["signature"]):
        assert block["algorithm"] == "ed25519"
        leaf = x509.load_pem_x509_certificate(block["certificate_chain"][0].encode())
        assert isinstance(leaf.public_key(), ed25519.Ed25519PublicKey)
    version = PrescriptionVersion.objects.get(prescription_id=prescription_id)
    assert len(bytes(version.doctor_signature)) == 64
    assert len(bytes(version.pharmacist_signature or b"")) == 64
    crl = _crl(crl_der(authority=authority))
    assert crl.is_signature_valid(root.public_key())  # type: ignore[arg-type]

    # Every byte of an Ed25519 signature matters.
    value = bytearray(base64.b64decode(bundle["doctor_signature"]["value"]))
    for position in range(len(value)):
        value[position] ^= 0x01
        forged = dict(bundle, doctor_signature=dict(bundle["doctor_signature"]))
        forged["doctor_signature"]["value"] = base64.b64encode(bytes(value)).decode()
        with pytest.raises(VerificationError) as refused:
            verify_bundle(forged)
        assert refused.value.code == "signature_invalid", position
        value[position] ^= 0x01


def test_the_algorithm_setting_does_not_change_an_existing_ca(department, settings) -> None:
    authority = authority_create(hospital=department.hospital)
    settings.SIGNING_ALGORITHM = "ed25519"
    issued = certificate_issue(practitioner=_doctor(department))
    assert issued.authority_id == authority.pk
    assert issued.algorithm == "ecdsa-p256-sha256"
    assert isinstance(_cert(issued).public_key(), ec.EllipticCurvePublicKey)


# --- The signing act: nothing signs without the person ----------------------------------------


def test_a_signing_act_signs_once_for_its_person(department) -> None:
    doctor = _doctor(department)
    issued = certificate_issue(practitioner=doctor)
    act = _authorise(doctor)
    assert act.user == doctor.user
    assert act.certificate == issued

    signature = signature_create(act=act, purpose="prescription", data=b"content")
    assert signature.certificate == issued
    assert signature.algorithm == "ecdsa-p256-sha256"
    assert _verifies(_cert(issued).public_key(), signature.value, b"content")
    assert signature.value_sha256 == hashlib.sha256(signature.value).hexdigest()

    with pytest.raises(DomainError) as refused:
        signature_create(act=act, purpose="prescription", data=b"content")
    assert refused.value.code == "signature_required"
    assert refused.value.status == 403
    # A copy of a used act is a used act.
    with pytest.raises(DomainError) as refused:
        signature_create(act=copy.copy(act), purpose="prescription", data=b"other")
    assert refused.value.code == "signature_required"


def test_a_copied_act_does_not_give_a_second_signature(department) -> None:
    doctor = _doctor(department)
    certificate_issue(practitioner=doctor)
    act = _authorise(doctor)
    twin = copy.copy(act)
    signature_create(act=act, purpose="prescription", data=b"first")
    with pytest.raises(DomainError) as refused:
        signature_create(act=twin, purpose="prescription", data=b"second")
    assert refused.value.code == "signature_required"


@pytest.mark.django_db(transaction=True)
def test_copies_of_one_act_racing_in_threads_give_one_signature(department) -> None:
    doctor = _doctor(department)
    certificate_issue(practitioner=doctor)
    act = _authorise(doctor)
    copies = [copy.copy(act) for _ in range(8)]
    start = threading.Barrier(len(copies))
    outcomes: list[str] = []

    def spend(one: SigningAct) -> None:
        start.wait()
        try:
            # As a service does: in the transaction that stores the signature.
            with transaction.atomic():
                signature_create(
                    act=one, purpose="prescription", data=b"content", signed_at=one.checked_at
                )
            outcomes.append("signed")
        except DomainError as refused:
            outcomes.append(refused.code)
        finally:
            connection.close()

    threads = [threading.Thread(target=spend, args=(one,)) for one in copies]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["signature_required"] * 7 + ["signed"]
    assert act.used


def test_a_deep_copied_act_is_no_act(department) -> None:
    doctor = _doctor(department)
    certificate_issue(practitioner=doctor)
    with pytest.raises(DomainError) as refused:
        signature_create(
            act=copy.deepcopy(_authorise(doctor)), purpose="prescription", data=b"content"
        )
    assert refused.value.code == "signature_required"


def test_a_forged_act_is_refused(department) -> None:
    doctor = _doctor(department)
    issued = certificate_issue(practitioner=doctor)
    forged = SigningAct(
        user=doctor.user,
        certificate=issued,
        purpose="prescription",
        authorised_at=time.monotonic(),
        _issuer=object(),
    )
    lookalike = types.SimpleNamespace(
        user=doctor.user,
        certificate=issued,
        purpose="prescription",
        authorised_at=time.monotonic(),
        _issuer=None,
        used=False,
    )
    for act in (forged, lookalike):
        with pytest.raises(DomainError) as refused:
            signature_create(act=act, purpose="prescription", data=b"content")  # type: ignore[arg-type]
        assert refused.value.code == "signature_required"


def test_an_old_act_or_one_for_another_purpose_is_refused(department, settings) -> None:
    doctor = _doctor(department)
    certificate_issue(practitioner=doctor)

    old = _authorise(doctor)
    old.authorised_at = time.monotonic() - settings.SIGNING_ACT_MAX_AGE_SECONDS - 1
    with pytest.raises(DomainError) as refused:
        signature_create(act=old, purpose="prescription", data=b"content")
    assert refused.value.code == "signature_required"

    review = _authorise(doctor, purpose="review")
    with pytest.raises(DomainError) as refused:
        signature_create(act=review, purpose="prescription", data=b"content")
    assert refused.value.code == "signature_required"

    # A fresh act for the right purpose signs.
    assert signature_create(act=_authorise(doctor), purpose="prescription", data=b"content")


def test_an_act_needs_the_persons_own_code_not_a_machine(department) -> None:
    doctor = _doctor(department)
    certificate_issue(practitioner=doctor)
    for otp in (None, ""):
        with pytest.raises(DomainError) as refused:
            signing_act_authorise(user=doctor.user, otp=otp, purpose="prescription")
        assert refused.value.code == "signature_required"

    code = fresh_otp(doctor.user)
    with pytest.raises(DomainError) as refused:
        signing_act_authorise(
            user=doctor.user, otp=code, purpose="prescription", machine_credential=True
        )
    assert refused.value.code == "signature_required"
    # The machine's attempt did not even spend the code: the person can still use it.
    assert signing_act_authorise(user=doctor.user, otp=code, purpose="prescription")

    # Only doctors and pharmacists sign; an account that is switched off does not.
    for role in (Role.ADMINISTRATOR, Role.PHARMACY_STAFF, Role.PATIENT, Role.REGULATOR):
        User.objects.filter(pk=doctor.user_id).update(role=role)
        doctor.user.refresh_from_db()
        with pytest.raises(DomainError) as refused:
            signing_act_authorise(
                user=doctor.user, otp=fresh_otp(doctor.user), purpose="prescription"
            )
        assert refused.value.code == "signature_required", role
    User.objects.filter(pk=doctor.user_id).update(role=Role.DOCTOR, is_active=False)
    doctor.user.refresh_from_db()
    with pytest.raises(DomainError) as refused:
        signing_act_authorise(user=doctor.user, otp=fresh_otp(doctor.user), purpose="prescription")
    assert refused.value.code == "signature_required"


def test_only_the_pki_service_touches_private_keys_and_signers() -> None:
    """No code path outside ``backend/pki/services.py`` can sign: nothing else calls the
    raw signing primitives or reads a private key (the signing act is the only door)."""
    forbidden = {"raw_sign", "LocalSigner", "_load_key", "_key_pem", "private_key_pem"}
    forbidden_imports = forbidden | {"signer", "_authority_key", "_ISSUED"}
    offenders = []
    packages = ("backend", "prescriptions", "consultations", "console", "mobile_api")
    for package in (*packages, "payments", "regulators"):
        for path in (ROOT / package).rglob("*.py"):
            relative = path.relative_to(ROOT).as_posix()
            if relative == "backend/pki/services.py" or "/migrations/" in relative:
                continue
            if relative in ("backend/pki/models.py", "backend/settings.py"):
                continue  # the field's declaration; the signer's dotted name
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                name = (
                    node.id
                    if isinstance(node, ast.Name)
                    else node.attr
                    if isinstance(node, ast.Attribute)
                    else None
                )
                if name in forbidden:
                    offenders.append(f"{relative}:{getattr(node, 'lineno', 0)} {name}")
                if isinstance(node, ast.ImportFrom) and node.module == "backend.pki.services":
                    offenders += [
                        f"{relative}:{node.lineno} imports {a.name}"
                        for a in node.names
                        if a.name in forbidden_imports
                    ]
    assert offenders == []
    # And the two personal signatures in the product go through the signing act.
    services = (ROOT / "prescriptions" / "services.py").read_text(encoding="utf-8")
    assert len(re.findall(r"signature_create\(\s*act=act\b", services)) == 2
    assert services.count("signing_act_authorise(") == 2


@pytest.mark.usefixtures("icd10")
def test_a_totp_code_cannot_sign_twice(department) -> None:
    scene = RxScene(department)
    first = scene.draft()
    second = scene.draft()
    assert first.status_code == second.status_code == 201
    code = fresh_otp(scene.doctor.user)

    assert scene.sign(first.json()["id"], otp=code).status_code == 200
    assert_problem(scene.sign(second.json()["id"], otp=code), 401, "totp_invalid")
    assert status_of(second.json()["id"]) == "draft"
    assert not PrescriptionVersion.objects.filter(prescription_id=second.json()["id"]).exists()
    # The next code signs it.
    assert scene.sign(second.json()["id"]).status_code == 200
    assert status_of(second.json()["id"]) == "under_review"


@pytest.mark.usefixtures("icd10")
def test_a_wrong_code_is_refused_and_counts_toward_the_console_lockout(
    department, settings
) -> None:
    settings.CONSOLE_LOGIN_MAX_FAILURES = 5
    scene = RxScene(department)
    prescription_id = scene.draft().json()["id"]
    user = scene.doctor.user

    for _ in range(4):
        assert_problem(scene.sign(prescription_id, otp=_wrong_code(user)), 401, "totp_invalid")
    assert AuditEvent.objects.filter(action="auth.totp_failed", object_id=str(user.pk)).count() == 4
    # Wrong signing codes and wrong passwords count together.
    stranger = APIClient()
    bad = stranger.post(
        f"{CONSOLE}/auth/login", {"username": user.username, "password": "wrong"}, format="json"
    )
    assert_problem(bad, 401, "authentication_failed")

    # Now even the right code is refused, and so is a sign-in with the right password.
    assert_problem(scene.sign(prescription_id), 429, "account_locked")
    login = APIClient().post(
        f"{CONSOLE}/auth/login", {"username": user.username, "password": PASSWORD}, format="json"
    )
    assert_problem(login, 429, "account_locked")
    assert status_of(prescription_id) == "draft"
    assert not PrescriptionVersion.objects.filter(prescription_id=prescription_id).exists()


@pytest.mark.usefixtures("icd10")
def test_a_doctor_or_pharmacist_without_a_certificate_cannot_sign(department) -> None:
    load_catalogue()
    scene = Scene(department)  # no certificates issued
    consultation_id = scene.in_progress()
    session = console_session(scene.doctor.user)
    draft = session.post(
        f"{CONSOLE}/prescriptions",
        {"consultation": consultation_id, "lines": [line()]},
        format="json",
    )
    assert draft.status_code == 201, draft.content
    prescription_id = draft.json()["id"]
    signed = session.post(
        f"{CONSOLE}/prescriptions/{prescription_id}/sign",
        {"otp": fresh_otp(scene.doctor.user)},
        format="json",
    )
    assert_problem(signed, 409, "no_signing_certificate")
    assert status_of(prescription_id) == "draft"

    # Once it has one, the doctor signs; a pharmacist without one cannot approve.
    certificate_issue(practitioner=scene.doctor)
    signed = session.post(
        f"{CONSOLE}/prescriptions/{prescription_id}/sign",
        {"otp": fresh_otp(scene.doctor.user)},
        format="json",
    )
    assert signed.status_code == 200, signed.content
    pharmacist = _pharmacist(scene.hospital)
    approved = console_session(pharmacist.user).post(
        f"{CONSOLE}/prescriptions/{prescription_id}/approve",
        {"otp": fresh_otp(pharmacist.user)},
        format="json",
    )
    assert_problem(approved, 409, "no_signing_certificate")
    assert status_of(prescription_id) == "under_review"
    detail = scene.patient_api.get(f"{MOBILE}/prescriptions/{prescription_id}").json()
    assert detail["access_code"] is None


@pytest.mark.usefixtures("icd10")
def test_a_revoked_certificate_cannot_sign(department) -> None:
    scene = RxScene(department)
    prescription_id = scene.draft().json()["id"]
    current = certificate_current(user=scene.doctor.user, role=CertificateRole.DOCTOR)
    assert current is not None
    certificate_revoke(certificate=current, reason="key compromise")

    assert_problem(scene.sign(prescription_id), 409, "no_signing_certificate")
    assert status_of(prescription_id) == "draft"

    # Revoked between the act and the signature: the signature is refused.
    certificate_issue(practitioner=scene.doctor)
    act = _authorise(scene.doctor)
    certificate_revoke(certificate=act.certificate, reason="key compromise")
    with pytest.raises(DomainError) as refused:
        signature_create(act=act, purpose="prescription", data=b"content")
    assert refused.value.code == "certificate_revoked"
    assert refused.value.status == 409

    # Superseded between the act and the signature: the same.
    certificate_issue(practitioner=scene.doctor)
    act = _authorise(scene.doctor)
    certificate_issue(practitioner=scene.doctor)
    with pytest.raises(DomainError) as refused:
        signature_create(act=act, purpose="prescription", data=b"content")
    assert refused.value.code == "certificate_revoked"

    # The current certificate signs the prescription.
    assert scene.sign(prescription_id).status_code == 200


def _lock_waits() -> int:
    """Sessions of this test database waiting for a row lock (PostgreSQL)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        (count,) = cursor.fetchone()
    return int(count)


def _until(condition: Any, what: str, seconds: float = 15) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _on_thread(work: Any, errors: list[BaseException]) -> threading.Thread:
    """``work`` on a thread of its own, with its own connection, closed after; what it
    raises is kept in ``errors``."""

    def run() -> None:
        try:
            work()
        except BaseException as exc:  # surfaced by the caller
            errors.append(exc)
        finally:
            connections.close_all()

    return threading.Thread(target=run)


def _hold_the_audit_chain(holding: threading.Event, release: threading.Event) -> None:
    """Lock the audit chain's head until ``release``: a transaction that appends to it
    (a signature's, a revocation's) waits there, after its other writes, uncommitted."""
    with transaction.atomic():
        AuditChainHead.objects.select_for_update().get(name="main")
        holding.set()
        release.wait(timeout=30)


@pytest.mark.usefixtures("icd10")
@pytest.mark.django_db(transaction=True)
def test_a_signature_racing_an_uncommitted_revocation_waits_for_it_and_is_refused(
    department,
) -> None:
    """The revocation has read its clock and written itself but not committed when the
    doctor signs (the signing act reads the certificate as still good, and is dated later
    than the revocation). The signature waits for the revocation's commit and is refused:
    accepted, it would verify nowhere, since the CRL names the certificate as revoked
    before it was made."""
    require_postgres("the revocation race (row locks, separate connections)")
    scene = RxScene(department)
    prescription_id = scene.draft().json()["id"]
    certificate = certificate_current(user=scene.doctor.user, role=CertificateRole.DOCTOR)
    assert certificate is not None
    otp = fresh_otp(scene.doctor.user)
    holding, release = threading.Event(), threading.Event()
    answers: dict[str, Any] = {}
    errors: list[BaseException] = []

    def revoke() -> None:
        certificate_revoke(
            certificate=SigningCertificate.objects.get(pk=certificate.pk), reason="key compromise"
        )

    def sign() -> None:
        answers["sign"] = scene.sign(prescription_id, otp)

    holder, revoker, signer = (
        _on_thread(work, errors)
        # The revocation's audit record waits at the chain, after its UPDATE, uncommitted.
        for work in (lambda: _hold_the_audit_chain(holding, release), revoke, sign)
    )
    holder.start()
    assert holding.wait(timeout=15)
    revoker.start()
    _until(lambda: _lock_waits() >= 1, "the revocation to wait for the audit chain")
    signer.start()
    _until(lambda: _lock_waits() >= 2, "the signature to wait")
    release.set()
    for worker in (holder, revoker, signer):
        worker.join(timeout=30)
    assert errors == []

    assert_problem(answers["sign"], 409, "certificate_revoked")
    assert status_of(prescription_id) == "draft"
    assert not PrescriptionVersion.objects.filter(prescription_id=prescription_id).exists()
    # With a current certificate the doctor signs, and the signature verifies.
    certificate_issue(practitioner=scene.doctor)
    signed = scene.sign(prescription_id)
    assert signed.status_code == 200, signed.content
    assert signed.json()["verification"]["valid"] is True


@pytest.mark.usefixtures("icd10")
@pytest.mark.django_db(transaction=True)
def test_a_revocation_waits_for_a_signature_in_progress_before_it_reads_its_clock(
    department,
) -> None:
    """The other order: the signature holds the certificate (made, not yet committed)
    when the revocation starts, and the revocation's clock is behind the signing act's
    (it read it earlier: the clock here is moved back to say so). The revocation waits
    for the signature's commit and only then reads its clock, so it is dated after the
    signature and the prescription verifies. Had it read its clock first, it would be
    dated before the signature, and every verifier would refuse the prescription."""
    require_postgres("the revocation race (row locks, separate connections)")
    scene = RxScene(department)
    prescription_id = scene.draft().json()["id"]
    certificate = certificate_current(user=scene.doctor.user, role=CertificateRole.DOCTOR)
    assert certificate is not None
    holding, release = threading.Event(), threading.Event()
    answers: dict[str, Any] = {}
    errors: list[BaseException] = []
    signing_at = (timezone.now() + dt.timedelta(seconds=5)).replace(microsecond=500_000)

    def revoke() -> None:
        certificate_revoke(
            certificate=SigningCertificate.objects.get(pk=certificate.pk), reason="key compromise"
        )

    def sign() -> None:
        answers["sign"] = scene.sign(prescription_id, otp)

    holder, signer, revoker = (
        _on_thread(work, errors)
        # The signature's audit record waits at the chain, its certificate held.
        for work in (lambda: _hold_the_audit_chain(holding, release), sign, revoke)
    )
    with time_machine.travel(signing_at, tick=False) as clock:
        otp = fresh_otp(scene.doctor.user)
        holder.start()
        assert holding.wait(timeout=15)
        signer.start()
        _until(lambda: _lock_waits() >= 1, "the signature to wait for the audit chain")
        clock.move_to(signing_at - dt.timedelta(seconds=2))
        revoker.start()
        _until(lambda: _lock_waits() >= 2, "the revocation to wait")
        clock.move_to(signing_at + dt.timedelta(seconds=2))
        release.set()
        for worker in (holder, signer, revoker):
            worker.join(timeout=30)
        assert errors == []

        assert answers["sign"].status_code == 200, answers["sign"].content
        certificate.refresh_from_db()
        assert certificate.revoked_at == signing_at + dt.timedelta(seconds=2)
        version = PrescriptionVersion.objects.get(prescription_id=prescription_id)
        assert version.signed_at == signing_at
        clock.move_to(signing_at + dt.timedelta(seconds=3))
        detail = scene.doctor_session.get(f"{CONSOLE}/prescriptions/{prescription_id}")
        assert detail.json()["verification"]["valid"] is True, detail.json()["verification"]


def test_a_revocation_committed_after_the_act_refuses_its_signature(department) -> None:
    doctor = _doctor(department)
    issued = certificate_issue(practitioner=doctor)
    act = _authorise(doctor)
    assert act.checked_at is not None
    assert act.checked_at <= timezone.now()
    # Revoked after the act read the certificate: the signature, even dated at the act's
    # reading, is made after the revocation and is refused. The certificate is read
    # again with the lock a revocation takes before it reads its clock.
    certificate_revoke(certificate=issued, reason="key compromise")
    with CaptureQueriesContext(connection) as queries, pytest.raises(DomainError) as refused:
        signature_create(act=act, purpose="prescription", data=b"content", signed_at=act.checked_at)
    assert refused.value.code == "certificate_revoked"
    assert len(queries.captured_queries) == 1
    if connection.vendor == "postgresql":
        assert queries.captured_queries[0]["sql"].endswith("FOR NO KEY UPDATE")
    # Not revoked, the same read lets it sign, dated at the act's reading.
    issued = certificate_issue(practitioner=doctor)
    act = _authorise(doctor)
    signature = signature_create(
        act=act, purpose="prescription", data=b"content", signed_at=act.checked_at
    )
    assert signature.signed_at == act.checked_at
    assert _verifies(_cert(issued).public_key(), signature.value, b"content")


def test_an_expired_certificate_cannot_sign(department) -> None:
    doctor = _doctor(department)
    issued = certificate_issue(practitioner=doctor)
    assert doctor.user.totp_secret

    with time_machine.travel(issued.not_after - dt.timedelta(seconds=10), tick=False) as clock:
        User.objects.filter(pk=doctor.user_id).update(totp_last_step=0)
        act = signing_act_authorise(
            user=doctor.user,
            otp=totp_code_at(secret=doctor.user.totp_secret, when=timezone.now()),
            purpose="prescription",
        )
        clock.move_to(issued.not_after + dt.timedelta(seconds=1))
        with pytest.raises(DomainError) as refused:
            signature_create(act=act, purpose="prescription", data=b"content")
        assert refused.value.code == "no_signing_certificate"

        clock.move_to(issued.not_after + dt.timedelta(minutes=2))
        with pytest.raises(DomainError) as refused:
            signing_act_authorise(
                user=doctor.user,
                otp=totp_code_at(secret=doctor.user.totp_secret, when=timezone.now()),
                purpose="prescription",
            )
        assert refused.value.code == "no_signing_certificate"
