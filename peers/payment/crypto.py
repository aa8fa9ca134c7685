"""The payment peer's cryptography and clocks (PROTOCOL sections 1–4 and 6).

- The gateway's key: ECDSA P-256 in a PKCS#8 PEM file, generated when missing; its
  ``serial_no`` is the first 32 hex digits of SHA-256 over the DER SubjectPublicKeyInfo.
- The gateway signs ``TIMESTAMP\\nNONCE\\nBODY\\n`` (DER ECDSA-SHA256, base64).
- Merchants sign ``METHOD\\nPATH\\nTIMESTAMP\\nNONCE\\nBODY\\n`` with HMAC-SHA256 (base64).
- Notification resources: AES-256-GCM under the API v3 key, 12-character nonce, tag
  appended, base64.
- The insurance platform's gateway signature: hex SHA-256 of
  ``timestamp + SECRET + nonce + timestamp``.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import os
import secrets
import string
from dataclasses import dataclass
from pathlib import Path
from zoneinfo import ZoneInfo

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

SHANGHAI = ZoneInfo("Asia/Shanghai")
ALPHANUMERIC = string.ascii_letters + string.digits


def random_text(length: int) -> str:
    return "".join(secrets.choice(ALPHANUMERIC) for _ in range(length))


def random_digits(length: int) -> str:
    return "".join(secrets.choice(string.digits) for _ in range(length))


def local_time(epoch: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(epoch, SHANGHAI)


def rfc3339(epoch: float) -> str:
    """``2026-12-05T15:04:05+08:00``."""
    return local_time(epoch).isoformat(timespec="seconds")


def insurance_time(epoch: float) -> str:
    """``2026-12-05 15:04:05`` (Asia/Shanghai), the insurance platform's format."""
    return local_time(epoch).strftime("%Y-%m-%d %H:%M:%S")


# -- the gateway's key ---------------------------------------------------------------


def key_serial(public_key: ec.EllipticCurvePublicKey) -> str:
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()[:32]


@dataclass(frozen=True)
class GatewayKey:
    private_key: ec.EllipticCurvePrivateKey
    serial_no: str

    @classmethod
    def generate(cls, serial_no: str | None = None) -> GatewayKey:
        """A fresh key; ``serial_no`` forces a serial (the ``wrong_key`` fault)."""
        key = ec.generate_private_key(ec.SECP256R1())
        return cls(key, serial_no or key_serial(key.public_key()))

    @classmethod
    def load_or_create(cls, path: str) -> GatewayKey:
        """Load the PKCS#8 PEM at ``path``; generate and write one (mode 0600) if the
        file does not exist. Raises ValueError for a file that is not a P-256 key."""
        file = Path(path)
        if not file.exists():
            key = ec.generate_private_key(ec.SECP256R1())
            pem = key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            file.parent.mkdir(parents=True, exist_ok=True)
            try:
                descriptor = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                pass  # another process wrote it first: use that one
            else:
                with os.fdopen(descriptor, "wb") as handle:
                    handle.write(pem)
        loaded = serialization.load_pem_private_key(file.read_bytes(), password=None)
        if not isinstance(loaded, ec.EllipticCurvePrivateKey) or not isinstance(
            loaded.curve, ec.SECP256R1
        ):
            raise ValueError(f"{path} is not an ECDSA P-256 private key")
        return cls(loaded, key_serial(loaded.public_key()))

    @property
    def public_key_pem(self) -> str:
        return (
            self.private_key.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )

    def sign(self, timestamp: str, nonce: str, body: bytes) -> bytes:
        """The DER signature over ``TIMESTAMP\\nNONCE\\nBODY\\n``."""
        message = timestamp.encode() + b"\n" + nonce.encode() + b"\n" + body + b"\n"
        return self.private_key.sign(message, ec.ECDSA(hashes.SHA256()))


# -- the merchant's HMAC -------------------------------------------------------------


def merchant_signature(
    secret: str, method: str, path: str, timestamp: str, nonce: str, body: bytes
) -> str:
    message = f"{method}\n{path}\n{timestamp}\n{nonce}\n".encode() + body + b"\n"
    return base64.b64encode(hmac.new(secret.encode(), message, hashlib.sha256).digest()).decode()


# -- notification resources ----------------------------------------------------------


def encrypt_resource(api_v3_key: str, plaintext: bytes, associated_data: str) -> dict[str, str]:
    nonce = random_text(12)
    ciphertext = AESGCM(api_v3_key.encode()).encrypt(
        nonce.encode(), plaintext, associated_data.encode()
    )
    return {
        "algorithm": "AEAD_AES_256_GCM",
        "original_type": associated_data,
        "associated_data": associated_data,
        "nonce": nonce,
        "ciphertext": base64.b64encode(ciphertext).decode(),
    }


# -- the insurance platform ----------------------------------------------------------


def insurance_signature(secret: str, timestamp: str, nonce: str) -> str:
    return hashlib.sha256((timestamp + secret + nonce + timestamp).encode()).hexdigest()
