"""Certificate authorities, signing certificates, and signing acts.

Signing a prescription or a review is an act of a person (电子签名法 第13条: the key is
controlled by the signer alone). Here that is enforced by construction: a personal
signature is made only through ``signature_create``, which takes a ``SigningAct``, and a
``SigningAct`` is produced only by ``signing_act_authorise`` after the person's own
second factor (a TOTP code that cannot be replayed) in their own session. An act is good
for one signature within a short time. Machine credentials (API tokens) never obtain one.

The institution's seal (``seal_sign``) is the hospital's, not a person's: it signs
dispense receipts and regulator payloads, never a prescription or a review.

Private keys are generated here and kept encrypted at rest. The ``Signer`` interface
lets a hospital that runs a CA signing service (协同签名, keys on the signer's phone or
in an HSM) plug it in with ``SIGNER_BACKEND``; SM2/SM3 would be another ``Algorithm``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID
from django.conf import settings
from django.core.cache import cache
from django.db import transaction
from django.db.models import F, QuerySet
from django.utils import timezone
from django.utils.module_loading import import_string

from backend.api.problems import DomainError
from backend.audit.services import RequestMeta, audit_record
from backend.compiled_queries import CompiledQuery
from backend.identity.models import Role, User
from backend.identity.services import console_second_factor_check
from backend.organisations.models import Hospital, Practitioner, PractitionerKind
from backend.pki.models import (
    Algorithm,
    CertificateAuthority,
    CertificateRole,
    SigningCertificate,
)

PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey

ROOT_VALIDITY_DAYS = 20 * 365
CRL_VALIDITY = dt.timedelta(days=1)


# --- Keys -----------------------------------------------------------------------------------


def _new_key(algorithm: str) -> PrivateKey:
    if algorithm == Algorithm.ECDSA_P256:
        return ec.generate_private_key(ec.SECP256R1())
    if algorithm == Algorithm.ED25519:
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(f"unsupported signing algorithm {algorithm!r}")


def _key_pem(key: PrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def _load_key(pem: str) -> PrivateKey:
    key = serialization.load_pem_private_key(pem.encode(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey):
        raise ValueError("unsupported private key type")
    return key


def _hash_for(key: PrivateKey) -> hashes.SHA256 | None:
    return None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()


def raw_sign(key: PrivateKey, data: bytes) -> bytes:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(data)
    return key.sign(data, ec.ECDSA(hashes.SHA256()))


def fingerprint(certificate: x509.Certificate) -> str:
    return certificate.fingerprint(hashes.SHA256()).hex()


def _pem(certificate: x509.Certificate) -> str:
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


def _organisation(hospital: Hospital) -> list[x509.NameAttribute[str]]:
    return [
        x509.NameAttribute(NameOID.COUNTRY_NAME, "CN"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, hospital.name),
        x509.NameAttribute(NameOID.ORGANIZATION_IDENTIFIER, hospital.unified_social_credit_code),
    ]


# --- Certificate authorities ------------------------------------------------------------------


def authority_create(
    *,
    hospital: Hospital,
    algorithm: str | None = None,
    actor: User | None = None,
    meta: RequestMeta | None = None,
) -> CertificateAuthority:
    """The hospital's root CA and its institution seal certificate (idempotent)."""
    algorithm = algorithm or settings.SIGNING_ALGORITHM
    with transaction.atomic():
        Hospital.objects.select_for_update().filter(pk=hospital.pk).first()
        existing = CertificateAuthority.objects.filter(hospital=hospital).first()
        if existing is not None:
            return existing
        key = _new_key(algorithm)
        name = x509.Name(
            [
                *_organisation(hospital),
                x509.NameAttribute(NameOID.COMMON_NAME, f"{hospital.name} Root CA"),
            ]
        )
        now = timezone.now()
        public = key.public_key()
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=ROOT_VALIDITY_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(key, _hash_for(key))
        )
        authority = CertificateAuthority.objects.create(
            hospital=hospital,
            algorithm=algorithm,
            certificate_pem=_pem(certificate),
            fingerprint_sha256=fingerprint(certificate),
            private_key_pem=_key_pem(key),
        )
        audit_record(
            action="pki.authority_created",
            actor=actor,
            object_type="hospital",
            object_id=hospital.pk,
            after={"fingerprint_sha256": authority.fingerprint_sha256, "algorithm": algorithm},
            meta=meta,
        )
        _issue(authority=authority, role=CertificateRole.INSTITUTION, actor=actor, meta=meta)
    return authority


def _authority_key(authority: CertificateAuthority) -> tuple[x509.Certificate, PrivateKey]:
    return (
        x509.load_pem_x509_certificate(authority.certificate_pem.encode()),
        _load_key(authority.private_key_pem),
    )


# --- Signing certificates ---------------------------------------------------------------------


def _issue(
    *,
    authority: CertificateAuthority,
    role: str,
    practitioner: Practitioner | None = None,
    actor: User | None = None,
    meta: RequestMeta | None = None,
) -> SigningCertificate:
    hospital = authority.hospital
    ca_certificate, ca_key = _authority_key(authority)
    key = _new_key(authority.algorithm)
    attributes = _organisation(hospital)
    if practitioner is not None:
        person = practitioner.user
        attributes += [
            x509.NameAttribute(NameOID.TITLE, role),
            x509.NameAttribute(NameOID.SERIAL_NUMBER, practitioner.practice_certificate_number),
            x509.NameAttribute(NameOID.COMMON_NAME, person.display_name or person.username),
        ]
    else:
        attributes += [
            x509.NameAttribute(NameOID.TITLE, role),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{hospital.name} seal"),
        ]
    now = timezone.now()
    not_after = now + dt.timedelta(days=settings.SIGNING_CERT_VALIDITY_DAYS)
    public = key.public_key()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(attributes))
        .issuer_name(ca_certificate.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=True,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_certificate.public_key()  # type: ignore[arg-type]
            ),
            critical=False,
        )
        .sign(ca_key, _hash_for(ca_key))
    )
    user = practitioner.user if practitioner is not None else None
    # A new certificate replaces the holder's previous one for the same role.
    previous = SigningCertificate.objects.filter(
        authority=authority, role=role, user=user, practitioner=practitioner, revoked_at=None
    )
    for old in previous:
        _revoke(old, reason="superseded", actor=actor, meta=meta)
    issued = SigningCertificate.objects.create(
        authority=authority,
        role=role,
        user=user,
        practitioner=practitioner,
        algorithm=authority.algorithm,
        serial_number=format(certificate.serial_number, "x"),
        fingerprint_sha256=fingerprint(certificate),
        certificate_pem=_pem(certificate),
        private_key_pem=_key_pem(key),
        not_before=certificate.not_valid_before_utc,
        not_after=certificate.not_valid_after_utc,
    )
    audit_record(
        action="pki.certificate_issued",
        actor=actor,
        object_type="signing_certificate",
        object_id=issued.pk,
        after={
            "role": role,
            "serial": issued.serial_number,
            "practitioner": str(practitioner.pk) if practitioner else None,
            "not_after": issued.not_after.isoformat(),
        },
        meta=meta,
    )
    return issued


def certificate_issue(
    *, practitioner: Practitioner, actor: User | None = None, meta: RequestMeta | None = None
) -> SigningCertificate:
    """Issue a doctor's or pharmacist's signing certificate from their hospital's CA."""
    role = {
        PractitionerKind.DOCTOR: CertificateRole.DOCTOR,
        PractitionerKind.PHARMACIST: CertificateRole.PHARMACIST,
    }[PractitionerKind(practitioner.kind)]
    with transaction.atomic():
        authority = authority_create(hospital=practitioner.hospital, actor=actor, meta=meta)
        return _issue(
            authority=authority, role=role, practitioner=practitioner, actor=actor, meta=meta
        )


def _revoke(
    certificate: SigningCertificate,
    *,
    reason: str,
    actor: User | None,
    meta: RequestMeta | None,
) -> None:
    # The row is locked before the clock is read. A signature in progress holds the same
    # lock until its transaction commits (``signature_create``), so the revocation is
    # either committed before a signature reads the certificate (which refuses it) or
    # dated after that signature's commit: every signature accepted here is dated before
    # the revocation, in the database and in the CRL.
    if (
        not SigningCertificate.objects.select_for_update(no_key=True)
        .filter(pk=certificate.pk, revoked_at=None)
        .exists()
    ):
        return
    now = timezone.now()
    SigningCertificate.objects.filter(pk=certificate.pk).update(
        revoked_at=now, revocation_reason=reason[:200]
    )
    certificate.revoked_at = now
    certificate.revocation_reason = reason[:200]
    CertificateAuthority.objects.filter(pk=certificate.authority_id).update(
        crl_number=F("crl_number") + 1
    )
    audit_record(
        action="pki.certificate_revoked",
        actor=actor,
        object_type="signing_certificate",
        object_id=certificate.pk,
        after={"serial": certificate.serial_number, "reason": reason},
        meta=meta,
    )


def certificate_revoke(
    *,
    certificate: SigningCertificate,
    reason: str,
    actor: User | None = None,
    meta: RequestMeta | None = None,
) -> SigningCertificate:
    with transaction.atomic():
        _revoke(certificate, reason=reason, actor=actor, meta=meta)
    certificate.refresh_from_db()
    return certificate


_CURRENT = CompiledQuery(
    lambda p: (
        SigningCertificate.objects.select_related("authority")
        .defer("authority__private_key_pem")  # the CA's key signs certificates, not this
        .filter(
            user=p.user, role=p.role, revoked_at=None, not_before__lte=p.now, not_after__gt=p.now
        )
        .order_by("-not_after", "pk")[:1]
    ),
    user=SigningCertificate._meta.get_field("user"),
    role=SigningCertificate._meta.get_field("role"),
    now=SigningCertificate._meta.get_field("not_after"),
)


def certificate_current(*, user: User, role: str) -> SigningCertificate | None:
    """The holder's certificate that is neither revoked nor outside its validity now."""
    return _CURRENT.first(user=user, role=role, now=timezone.now())


_CRL_NUMBER = CompiledQuery(
    lambda p: CertificateAuthority.objects.filter(pk=p.id).values_list("crl_number", flat=True),
    id=CertificateAuthority._meta.pk,
)


#: How long a built revocation list is used before a new one is built (well inside its
#: ``CRL_VALIDITY``), in the shared cache and in each process.
CRL_KEEP_SECONDS = 3600

#: The list this process last used per authority: (CRL number, DER, when it was issued).
#: The number, read from the database on every call, tells whether it is still current;
#: the shared cache is asked only when it is not (a trip saved on every verification).
_HELD_CRLS: dict[tuple[Any, str], tuple[int, bytes, float]] = {}


def _whole_second_up(moment: dt.datetime) -> dt.datetime:
    """A CRL's times have whole seconds. A revocation is listed at the next one, so that a
    signature made earlier in the same second is not read as made after it (the server
    refuses every signature from the revocation's commit on, which is later still)."""
    if moment.microsecond == 0:
        return moment
    return moment.replace(microsecond=0) + dt.timedelta(seconds=1)


def crl_der(*, authority: CertificateAuthority, newer_than: dt.datetime | None = None) -> bytes:
    """The authority's current certificate revocation list (DER). Rebuilt when a
    certificate is revoked, hourly (``CRL_KEEP_SECONDS``), and when the caller needs one
    issued after ``newer_than`` (a verifier checks revocation against a list newer than
    the signature).

    The kept list is found by the authority's ``crl_number``, read from the database on
    every call: a revocation increments it in the same transaction, so the first call
    after a revocation commits builds a list that names it."""
    current = _CRL_NUMBER.first(id=authority.pk)
    if current is None:
        raise CertificateAuthority.DoesNotExist(f"no certificate authority {authority.pk}")
    wanted = newer_than.timestamp() if newer_than is not None else 0.0
    held = _HELD_CRLS.get((authority.pk, authority.fingerprint_sha256))
    if (
        held is not None
        and held[0] == current
        and held[2] >= wanted
        and time.time() < held[2] + CRL_KEEP_SECONDS
    ):
        return held[1]
    key = f"pki:crl:{authority.pk}:{authority.fingerprint_sha256}:{current}"
    cached: tuple[bytes, float] | None = cache.get(key)
    if cached is not None and cached[1] >= wanted:
        _HELD_CRLS[(authority.pk, authority.fingerprint_sha256)] = (current, *cached)
        return cached[0]
    ca_certificate, ca_key = _authority_key(authority)
    # CRL times have whole seconds; round up so that "newer than" holds after truncation.
    now = timezone.now().replace(microsecond=0) + dt.timedelta(seconds=1)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_certificate.subject)
        .last_update(now)
        .next_update(now + CRL_VALIDITY)
        .add_extension(x509.CRLNumber(current), critical=False)
    )
    for serial, revoked_at in SigningCertificate.objects.filter(
        authority=authority, revoked_at__isnull=False
    ).values_list("serial_number", "revoked_at"):
        if revoked_at is None:  # excluded by the filter; narrows the type
            continue
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(int(serial, 16))
            .revocation_date(_whole_second_up(revoked_at))
            .build()
        )
    der = builder.sign(ca_key, _hash_for(ca_key)).public_bytes(serialization.Encoding.DER)
    cache.set(key, (der, now.timestamp()), CRL_KEEP_SECONDS)
    _HELD_CRLS[(authority.pk, authority.fingerprint_sha256)] = (current, der, now.timestamp())
    return der


# --- Signers --------------------------------------------------------------------------------


class Signer(Protocol):
    """Where the private key lives. ``sign`` returns the raw signature over ``data``."""

    def sign(self, *, certificate: SigningCertificate, data: bytes) -> bytes: ...


class LocalSigner:
    """Keys generated by the hospital CA and kept encrypted in the database."""

    def sign(self, *, certificate: SigningCertificate, data: bytes) -> bytes:
        if not certificate.private_key_pem:
            raise DomainError("no_signing_certificate", "This certificate's key is held elsewhere.")
        return raw_sign(_load_key(certificate.private_key_pem), data)


def signer() -> Signer:
    backend: Signer = import_string(settings.SIGNER_BACKEND)()
    return backend


@dataclass(frozen=True)
class Signature:
    algorithm: str
    value: bytes
    certificate: SigningCertificate
    signed_at: dt.datetime

    @property
    def value_sha256(self) -> str:
        return hashlib.sha256(self.value).hexdigest()


# A module-private token: only this module can make a SigningAct that signature_create takes.
_ISSUED = object()


@dataclass(eq=False)
class SigningAct:
    """One person's authorisation to make one signature, shortly after their 2nd factor.

    ``checked_at`` is the time read just before the certificate was: a signature dated
    then or earlier needs no second look at the certificate's revocation. A copy of an
    act shares its spent flag (so it is the same act); a deep copy or an unpickled one
    has a new issuer token and is no act at all.
    """

    user: User
    certificate: SigningCertificate
    purpose: str
    authorised_at: float
    _issuer: object = field(repr=False)
    checked_at: dt.datetime | None = None
    _spent: list[bool] = field(default_factory=lambda: [False], repr=False)

    @property
    def used(self) -> bool:
        return self._spent[0]


#: Spending an act (or a copy of it) is one check-and-set across threads.
_SPENDING = threading.Lock()


_SIGNER_ROLES = {Role.DOCTOR: CertificateRole.DOCTOR, Role.PHARMACIST: CertificateRole.PHARMACIST}


def signing_act_authorise(
    *,
    user: User,
    otp: str | None,
    purpose: str,
    machine_credential: bool = False,
    meta: RequestMeta | None = None,
) -> SigningAct:
    """The person's signing act: their own fresh second factor, in their own session.

    ``machine_credential`` is true when the request was authenticated by an API token:
    software never signs for a doctor or a pharmacist (诊疗办法; 细则 第21条).
    """
    if machine_credential:
        raise DomainError(
            "signature_required",
            "A signature needs the signer in person: sign in to the console, not with a token.",
        )
    role = _SIGNER_ROLES.get(Role(user.role)) if user.role in _SIGNER_ROLES else None
    if role is None or not user.is_active:
        raise DomainError("signature_required", "Only a doctor or a pharmacist can sign.")
    if not otp:
        raise DomainError("signature_required", "Enter the code from your authenticator to sign.")
    console_second_factor_check(user=user, code=otp, meta=meta)
    checked_at = timezone.now()  # before the read: the read sees every revocation until then
    certificate = _CURRENT.first(user=user, role=role, now=checked_at)
    if certificate is None:
        raise DomainError(
            "no_signing_certificate",
            "You have no valid signing certificate; ask the hospital administrator.",
        )
    return SigningAct(
        user=user,
        certificate=certificate,
        purpose=purpose,
        authorised_at=time.monotonic(),
        _issuer=_ISSUED,
        checked_at=checked_at,
    )


#: The certificate's revocation, read under the lock a revocation takes first (``_revoke``).
_HELD_REVOKED_AT = CompiledQuery(
    lambda p: (
        SigningCertificate.objects.select_for_update(no_key=True)
        .filter(pk=p.id)
        .order_by()
        .values_list("revoked_at", flat=True)
    ),
    id=SigningCertificate._meta.pk,
)


def signature_create(
    *, act: SigningAct, purpose: str, data: bytes, signed_at: dt.datetime | None = None
) -> Signature:
    """Sign ``data`` for the person who made ``act``; each act signs once (a copy of the
    act is the same act). ``signed_at`` lets the caller date the signature with the same
    clock reading as the content it signs (``act.checked_at``, read before the act read
    the certificate).

    Call inside the transaction that stores the signature: the certificate's row is
    read again under a lock held until that transaction ends. A revocation committed
    since the act refuses the signature; one not yet committed waits for it and is dated
    after it (``_revoke`` locks before it reads the clock), so the revocation list never
    names the certificate as revoked before a signature this function made."""
    with _SPENDING:
        if (
            not isinstance(act, SigningAct)
            or act._issuer is not _ISSUED
            or act._spent[0]
            or act.purpose != purpose
            or time.monotonic() - act.authorised_at > settings.SIGNING_ACT_MAX_AGE_SECONDS
        ):
            raise DomainError("signature_required", "Sign again with a fresh authenticator code.")
        act._spent[0] = True
    certificate = act.certificate
    now = signed_at or timezone.now()
    held = _HELD_REVOKED_AT.all(id=certificate.pk)
    if not held or held[0] is not None:
        raise DomainError("certificate_revoked")
    if not certificate.not_before <= now < certificate.not_after:
        raise DomainError("no_signing_certificate", "Your signing certificate has expired.")
    value = signer().sign(certificate=certificate, data=data)
    return Signature(
        algorithm=certificate.algorithm, value=value, certificate=certificate, signed_at=now
    )


def _seals() -> QuerySet[SigningCertificate]:
    return (
        SigningCertificate.objects.select_related("authority")
        .defer("authority__private_key_pem")  # the seal's own key signs, not the CA's
        .filter(role=CertificateRole.INSTITUTION, revoked_at=None)
        .order_by("-not_after", "pk")
    )


_SEAL = CompiledQuery(
    lambda p: _seals().filter(authority__hospital=p.hospital)[:1],
    hospital=CertificateAuthority._meta.get_field("hospital"),
)


def seal_certificate(*, hospital: Hospital) -> SigningCertificate:
    """The institution's current seal certificate (created with the CA if need be).
    The CA is looked up without a lock: locking the hospital row on every seal crossed
    lock orders with the audit chain head (deadlocks under load)."""
    certificate = _SEAL.first(hospital=hospital)  # one query, usually
    if certificate is not None:
        return certificate
    authority = CertificateAuthority.objects.filter(hospital=hospital).first() or authority_create(
        hospital=hospital
    )
    certificate = _seals().filter(authority=authority).first()
    if certificate is None:
        with transaction.atomic():
            certificate = _issue(authority=authority, role=CertificateRole.INSTITUTION)
    return certificate


#: How long a seal certificate read for a ``Hospital`` instance is reused by that same
#: instance: a request that seals twice (a dispense receipt and its regulator record)
#: reads it once; an instance kept longer reads it again.
_SEAL_REUSE_SECONDS = 5.0


def seal_sign(*, hospital: Hospital, data: bytes) -> Signature:
    """The institution's seal over ``data`` (receipts, regulator payloads); not personal."""
    held: tuple[SigningCertificate, float] | None = getattr(hospital, "_seal_in_hand", None)
    if held is not None and time.monotonic() - held[1] < _SEAL_REUSE_SECONDS:
        certificate = held[0]
    else:
        certificate = seal_certificate(hospital=hospital)
        setattr(hospital, "_seal_in_hand", (certificate, time.monotonic()))  # noqa: B010
    value = signer().sign(certificate=certificate, data=data)
    return Signature(
        algorithm=certificate.algorithm,
        value=value,
        certificate=certificate,
        signed_at=timezone.now(),
    )
