"""Offline verification of a signed prescription bundle.

This module is deliberately standalone: it needs only ``cryptography`` (42 or later) and
``rfc8785`` and imports nothing from the project, so a pharmacy integrator can copy this
one file; it runs on Python 3.8 and later.
The server verifies with the same code before a review and before a claim.

    python -m prescriptions.verify bundle.json [--root hospital-root.pem] [--review-optional]

Exit status 0 and a JSON summary when the bundle is genuine; 1 and the reason otherwise.
Pin the hospital's root certificate with ``--root`` (its SHA-256 fingerprint is also
published by the hospital); without it the root inside the bundle is trusted as given.

What is checked (docs/prescription-signing.md has the format):
1. ``signed_content`` is RFC 8785 canonical JSON and names this prescription and version.
2. The doctor's certificate is issued by the hospital root, has the role ``doctor``,
   names the prescriber's practice certificate number and the hospital's USCC, was valid
   when the signature was made, and was not revoked before it (per the root's signed CRL,
   which must be newer than the signature).
3. The doctor's signature verifies over the exact signed bytes, and was made on the
   prescription's issue day (Asia/Shanghai).
4. The pharmacist's review names the SHA-256 of the doctor's signature, says
   ``approved``, is signed by a ``pharmacist`` certificate of the same root (same checks)
   and was made after the doctor's signature.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import datetime as dt
import hashlib
import json
import re
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import rfc8785
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

BUNDLE_FORMAT = "ih-prescription-bundle/1"
CHINA = dt.timezone(dt.timedelta(hours=8), "Asia/Shanghai")
#: Largest clock difference tolerated between the issue time and the signature time.
CLOCK_SKEW = dt.timedelta(minutes=5)
ORGANIZATION_IDENTIFIER = x509.ObjectIdentifier("2.5.4.97")


class VerificationError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class SignerInfo:
    name: str
    role: str
    practice_certificate_number: str
    certificate_serial: str
    certificate_sha256: str
    signed_at: dt.datetime


@dataclass(frozen=True)
class Verified:
    prescription_id: str
    version: int
    content: dict[str, Any]
    doctor: SignerInfo
    pharmacist: SignerInfo | None
    root_sha256: str
    valid_until: dt.datetime | None
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        def signer(info: SignerInfo | None) -> dict[str, Any] | None:
            if info is None:
                return None
            return {
                "name": info.name,
                "role": info.role,
                "practice_certificate_number": info.practice_certificate_number,
                "certificate_serial": info.certificate_serial,
                "certificate_sha256": info.certificate_sha256,
                "signed_at": info.signed_at.isoformat(),
            }

        return {
            "valid": True,
            "prescription_id": self.prescription_id,
            "version": self.version,
            "doctor": signer(self.doctor),
            "pharmacist": signer(self.pharmacist),
            "root_sha256": self.root_sha256,
            "valid_until": self.valid_until.isoformat() if self.valid_until else None,
            "warnings": self.warnings,
        }


# --- Helpers --------------------------------------------------------------------------------


if sys.version_info >= (3, 11):  # noqa: UP036 (the file is copied into older Pythons)

    def _decode64(text: str) -> bytes:
        return binascii.a2b_base64(text, strict_mode=True)  # checked in C

else:  # pharmacy systems on older Pythons

    def _decode64(text: str) -> bytes:
        return base64.b64decode(text, validate=True)


def _b64(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise VerificationError("malformed_bundle", f"{what} is missing or not a string")
    try:
        return _decode64(value)
    except (binascii.Error, ValueError) as exc:
        raise VerificationError("malformed_bundle", f"{what} is not valid base64") from exc


def _time(value: Any, what: str) -> dt.datetime:
    if not isinstance(value, str):
        raise VerificationError("malformed_bundle", f"{what} is missing")
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise VerificationError("malformed_bundle", f"{what} is not an RFC 3339 time") from exc
    if parsed.tzinfo is None:
        raise VerificationError("malformed_bundle", f"{what} has no UTC offset")
    return parsed


#: Integers a JSON number (an IEEE double) carries exactly: RFC 8785 prints them as is.
_SAFE_INTEGER = 2**53 - 1


#: An escaped surrogate (half of a character beyond the Basic Multilingual Plane).
_ESCAPED_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]")
#: The lead bytes of UTF-8's four-byte sequences: exactly the characters beyond the BMP.
_FOUR_BYTE_LEADS = (b"\xf0", b"\xf1", b"\xf2", b"\xf3", b"\xf4")


def _within_bmp(raw: bytes) -> bool:
    """No character beyond the Basic Multilingual Plane in ``raw`` (valid UTF-8), raw or
    as an escaped surrogate. UTF-8 writes exactly those with a four-byte sequence; the
    escape search runs only if ``raw`` has an escape at all."""
    for lead in _FOUR_BYTE_LEADS:
        if lead in raw:
            return False
    return b"\\u" not in raw or _ESCAPED_SURROGATE.search(raw) is None


class _Outside(Exception):
    """A number the standard library would not print as RFC 8785 does."""


def _int(text: str) -> int:
    value = int(text)
    if not -_SAFE_INTEGER <= value <= _SAFE_INTEGER:
        raise _Outside
    return value


def _float(text: str) -> float:
    raise _Outside


#: Built once: ``json.loads``/``json.dumps`` with options build a new one per call.
_STRICT_DECODER = json.JSONDecoder(parse_int=_int, parse_float=_float)
_SORTED_ENCODER = json.JSONEncoder(sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def _canonical_json(raw: bytes, what: str) -> dict[str, Any]:
    """Parse ``raw`` and require it to be RFC 8785 canonical JSON. Where the standard
    library's C encoder prints RFC 8785's bytes (no floats, integers within 2**53 - 1,
    no character beyond the Basic Multilingual Plane, so key order by code point is key
    order by UTF-16 unit, and both escape strings alike), it is used: what the server
    signs always qualifies. Anything else is printed by ``rfc8785``."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise VerificationError("not_canonical", f"{what} is not JSON") from exc
    fast = _within_bmp(raw)
    content: Any = None
    if fast:
        try:
            content = _STRICT_DECODER.decode(text)
        except _Outside:
            fast = False
        except ValueError as exc:
            raise VerificationError("not_canonical", f"{what} is not JSON") from exc
    if not fast:
        try:
            content = json.loads(text)
        except ValueError as exc:
            raise VerificationError("not_canonical", f"{what} is not JSON") from exc
    if not isinstance(content, dict):
        raise VerificationError("not_canonical", f"{what} is not a JSON object")
    try:
        canonical = _SORTED_ENCODER.encode(content).encode() if fast else rfc8785.dumps(content)
    except (ValueError, TypeError) as exc:  # numbers outside I-JSON's range
        raise VerificationError("not_canonical", f"{what} has values JSON cannot carry") from exc
    if canonical != raw:
        raise VerificationError("not_canonical", f"{what} is not RFC 8785 canonical JSON")
    return content


@lru_cache(maxsize=256)
def _certificate(pem: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem.encode())
    except ValueError as exc:
        raise VerificationError("malformed_bundle", "a certificate is not valid PEM") from exc


def _attribute(certificate: x509.Certificate, oid: x509.ObjectIdentifier) -> str:
    values = certificate.subject.get_attributes_for_oid(oid)
    return str(values[0].value) if values else ""


@lru_cache(maxsize=256)
def _issued_by(leaf_pem: str, root_pem: str) -> bool:
    """The leaf is a signing certificate directly issued by the root CA (cached: the
    same doctors' certificates appear in many bundles)."""
    leaf, root = _certificate(leaf_pem), _certificate(root_pem)
    try:
        leaf.verify_directly_issued_by(root)
    except (ValueError, TypeError, InvalidSignature):
        return False
    constraints = leaf.extensions.get_extension_for_class(x509.BasicConstraints).value
    usage = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    return not constraints.ca and usage.digital_signature


@dataclass(frozen=True)
class _Revocations:
    """What a root's revocation list says, checked and read once."""

    last_update: dt.datetime
    revoked_at: dict[int, dt.datetime]


def _crl(crl_b64: Any, root_pem: str) -> _Revocations:
    if not isinstance(crl_b64, str):
        raise VerificationError("malformed_bundle", "crl is missing or not a string")
    return _revocations(crl_b64, root_pem)


@lru_cache(maxsize=64)
def _revocations(crl_b64: str, root_pem: str) -> _Revocations:
    root = _certificate(root_pem)
    try:
        crl = x509.load_der_x509_crl(_b64(crl_b64, "crl"))
    except ValueError as exc:
        raise VerificationError("crl_invalid", "the revocation list is not valid DER") from exc
    public = root.public_key()
    if crl.issuer != root.subject or not crl.is_signature_valid(public):  # type: ignore[arg-type]
        raise VerificationError("crl_invalid", "the revocation list is not signed by the root")
    return _Revocations(
        last_update=crl.last_update_utc,
        revoked_at={entry.serial_number: entry.revocation_date_utc for entry in crl},
    )


@dataclass(frozen=True)
class _Leaf:
    """What a signing certificate says, read once (the same doctors' and pharmacists'
    certificates appear in many bundles)."""

    certificate: x509.Certificate
    public_key: Any
    title: str
    name: str
    practice_certificate_number: str
    organisation: str
    serial_number: int
    serial_hex: str
    sha256: str
    not_before: dt.datetime
    not_after: dt.datetime


@lru_cache(maxsize=256)
def _leaf(pem: str) -> _Leaf:
    certificate = _certificate(pem)
    return _Leaf(
        certificate=certificate,
        public_key=certificate.public_key(),
        title=_attribute(certificate, NameOID.TITLE),
        name=_attribute(certificate, NameOID.COMMON_NAME),
        practice_certificate_number=_attribute(certificate, NameOID.SERIAL_NUMBER),
        organisation=_attribute(certificate, ORGANIZATION_IDENTIFIER),
        serial_number=certificate.serial_number,
        serial_hex=format(certificate.serial_number, "x"),
        sha256=certificate.fingerprint(hashes.SHA256()).hex(),
        not_before=certificate.not_valid_before_utc,
        not_after=certificate.not_valid_after_utc,
    )


@lru_cache(maxsize=64)
def _fingerprint(pem: str) -> str:
    return _certificate(pem).fingerprint(hashes.SHA256()).hex()


_ECDSA_SHA256 = ec.ECDSA(hashes.SHA256())


def _signature_valid(public: Any, signature: bytes, data: bytes) -> bool:
    try:
        if isinstance(public, ec.EllipticCurvePublicKey):
            public.verify(signature, data, _ECDSA_SHA256)
        elif isinstance(public, ed25519.Ed25519PublicKey):
            public.verify(signature, data)
        else:
            return False
    except InvalidSignature:
        return False
    return True


def _check_signer(
    block: Any,
    *,
    what: str,
    role: str,
    data: bytes,
    root_pem: str,
    crl: _Revocations,
) -> tuple[SignerInfo, bytes, _Leaf]:
    if not isinstance(block, dict):
        raise VerificationError("malformed_bundle", f"{what} is missing")
    chain = block.get("certificate_chain")
    if not (isinstance(chain, list) and len(chain) == 2 and all(isinstance(c, str) for c in chain)):
        raise VerificationError(
            "malformed_bundle", f"{what}: certificate_chain must be [signer, root] PEM"
        )
    if chain[1] != root_pem and chain[1].strip() != root_pem.strip():
        raise VerificationError("chain_invalid", f"{what}: the chain ends at another root")
    leaf_pem = chain[0]
    facts = _leaf(leaf_pem)
    if not _issued_by(leaf_pem, root_pem):
        raise VerificationError(
            "chain_invalid", f"{what}: the certificate is not a signing certificate of the root"
        )
    if facts.title != role:
        raise VerificationError(
            "wrong_role",
            f"{what}: signed with a {facts.title or 'non-personal'} "
            f"certificate, a {role}'s is required",
        )
    signed_at = _time(block.get("signed_at"), f"{what}.signed_at")
    if not facts.not_before <= signed_at <= facts.not_after:
        raise VerificationError(
            "certificate_expired", f"{what}: the certificate was not valid at {signed_at}"
        )
    if crl.last_update < signed_at:
        raise VerificationError(
            "crl_invalid", "the revocation list is older than the signature; fetch a newer one"
        )
    revoked_at = crl.revoked_at.get(facts.serial_number)
    if revoked_at is not None and revoked_at <= signed_at:
        raise VerificationError(
            "certificate_revoked", f"{what}: the certificate was revoked at {revoked_at}"
        )
    signature = _b64(block.get("value"), f"{what}.value")
    if not _signature_valid(facts.public_key, signature, data):
        raise VerificationError("signature_invalid", f"{what}: the signature does not verify")
    info = SignerInfo(
        name=facts.name,
        role=role,
        practice_certificate_number=facts.practice_certificate_number,
        certificate_serial=facts.serial_hex,
        certificate_sha256=facts.sha256,
        signed_at=signed_at,
    )
    return info, signature, facts


def _root(bundle: dict[str, Any], trusted_roots: set[str] | None) -> tuple[str, str]:
    root_pem = bundle.get("root_certificate")
    if not isinstance(root_pem, str):
        raise VerificationError("malformed_bundle", "root_certificate is missing")
    _certificate(root_pem)  # parses, or refuses
    fingerprint = _fingerprint(root_pem)
    if trusted_roots is not None and fingerprint not in trusted_roots:
        raise VerificationError(
            "untrusted_root", f"the bundle's root {fingerprint} is not a trusted hospital root"
        )
    return root_pem, fingerprint


# --- The verification ---------------------------------------------------------------------


def verify_bundle(
    bundle: dict[str, Any],
    *,
    trusted_roots: set[str] | None = None,
    require_review: bool = True,
) -> Verified:
    """Verify a bundle; raise ``VerificationError`` with a stable code if it is not genuine.

    ``trusted_roots`` holds SHA-256 fingerprints (hex) of hospital root certificates.
    """
    if not isinstance(bundle, dict) or bundle.get("format") != BUNDLE_FORMAT:
        raise VerificationError("malformed_bundle", f"not an {BUNDLE_FORMAT} bundle")
    root_pem, root_sha256 = _root(bundle, trusted_roots)
    crl = _crl(bundle.get("crl"), root_pem)

    signed = _b64(bundle.get("signed_content"), "signed_content")
    content = _canonical_json(signed, "signed_content")
    if content.get("id") != bundle.get("prescription_id") or content.get("version") != bundle.get(
        "version"
    ):
        raise VerificationError(
            "content_mismatch", "the signed content names another prescription or version"
        )
    doctor, doctor_signature, doctor_leaf = _check_signer(
        bundle.get("doctor_signature"),
        what="doctor_signature",
        role="doctor",
        data=signed,
        root_pem=root_pem,
        crl=crl,
    )
    prescriber = content.get("doctor") or {}
    if prescriber.get("practice_certificate_number") != doctor.practice_certificate_number:
        raise VerificationError(
            "content_mismatch", "the prescriber is not the holder of the signing certificate"
        )
    hospital = content.get("hospital") or {}
    if hospital.get("uscc") != doctor_leaf.organisation:
        raise VerificationError(
            "content_mismatch", "the certificate belongs to another institution"
        )
    issued_at = _time(content.get("issued_at"), "issued_at")
    if issued_at.astimezone(CHINA).date() != doctor.signed_at.astimezone(CHINA).date() or (
        issued_at - doctor.signed_at > CLOCK_SKEW
    ):
        raise VerificationError(
            "signing_day_mismatch",
            f"signed at {doctor.signed_at.isoformat()} but issued at {issued_at.isoformat()}",
        )
    validity = content.get("validity") or {}
    valid_until = _time(validity["valid_until"], "valid_until") if validity else None

    pharmacist = None
    review = bundle.get("review")
    if review is None:
        if require_review:
            raise VerificationError("review_missing", "the pharmacist's review is missing")
    else:
        if not isinstance(review, dict):
            raise VerificationError("malformed_bundle", "review is not an object")
        review_bytes = _b64(review.get("content"), "review.content")
        statement = _canonical_json(review_bytes, "review.content")
        expected = {
            "type": "pharmacist_review",
            "prescription_id": content["id"],
            "version": content["version"],
            "doctor_signature_sha256": hashlib.sha256(doctor_signature).hexdigest(),
            "result": "approved",
        }
        for key, value in expected.items():
            if statement.get(key) != value:
                raise VerificationError(
                    "review_mismatch", f"the review does not approve this signature ({key})"
                )
        pharmacist, _, _ = _check_signer(
            review.get("signature"),
            what="review.signature",
            role="pharmacist",
            data=review_bytes,
            root_pem=root_pem,
            crl=crl,
        )
        reviewer = statement.get("pharmacist") or {}
        if reviewer.get("practice_certificate_number") != pharmacist.practice_certificate_number:
            raise VerificationError(
                "review_mismatch", "the reviewer is not the holder of the signing certificate"
            )
        if pharmacist.signed_at < doctor.signed_at:
            raise VerificationError("review_mismatch", "the review predates the signature")
    return Verified(
        prescription_id=str(content["id"]),
        version=int(content["version"]),
        content=content,
        doctor=doctor,
        pharmacist=pharmacist,
        root_sha256=root_sha256,
        valid_until=valid_until,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m prescriptions.verify",
        description="Verify a signed prescription bundle offline.",
    )
    parser.add_argument("bundle", help="the bundle JSON file ('-' for stdin)")
    parser.add_argument(
        "--root",
        action="append",
        default=[],
        help="a trusted hospital root certificate (PEM file); repeat for several",
    )
    parser.add_argument(
        "--review-optional",
        action="store_true",
        help="accept a bundle without the pharmacist's review (signed, not yet active)",
    )
    args = parser.parse_args(argv)
    try:
        with sys.stdin if args.bundle == "-" else open(args.bundle, encoding="utf-8") as fh:
            bundle = json.load(fh)
        trusted = None
        if args.root:
            trusted = set()
            for path in args.root:
                with open(path, encoding="utf-8") as fh:
                    trusted.add(_certificate(fh.read()).fingerprint(hashes.SHA256()).hex())
        verified = verify_bundle(
            bundle, trusted_roots=trusted, require_review=not args.review_optional
        )
    except VerificationError as exc:
        print(json.dumps({"valid": False, "code": exc.code, "reason": exc.message}))
        return 1
    except (OSError, ValueError) as exc:
        print(json.dumps({"valid": False, "code": "unreadable", "reason": str(exc)}))
        return 1
    print(json.dumps(verified.summary(), ensure_ascii=False, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
