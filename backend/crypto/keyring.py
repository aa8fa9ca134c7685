"""Keys for field encryption (AES-256-GCM) and blind indexes (HMAC-SHA256).

``FIELD_ENCRYPTION_KEYS`` is ``keyid:base64key[,keyid:base64key...]``; the first key
encrypts, every listed key decrypts, so keys rotate by prepending a new one and running
``manage.py rotate_field_keys``. ``BLIND_INDEX_KEY`` is one base64 key of its own.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
from dataclasses import dataclass
from functools import cache

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

_KEY_ID = re.compile(r"^[A-Za-z0-9_-]{1,16}$")
_FORMAT = "v1"


class DecryptionError(Exception):
    """A stored ciphertext could not be decrypted (wrong key, tampered, or unknown key id)."""


@dataclass(frozen=True)
class KeyRing:
    active_id: str
    keys: dict[str, bytes]
    index_key: bytes

    def encrypt(self, plaintext: str, *, context: str) -> str:
        nonce = os.urandom(12)
        aad = f"{self.active_id}|{context}".encode()
        sealed = AESGCM(self.keys[self.active_id]).encrypt(nonce, plaintext.encode(), aad)
        token = base64.urlsafe_b64encode(nonce + sealed).decode()
        return f"{_FORMAT}:{self.active_id}:{token}"

    def decrypt(self, stored: str, *, context: str) -> str:
        try:
            fmt, key_id, token = stored.split(":", 2)
        except ValueError as exc:
            raise DecryptionError("not an encrypted value") from exc
        if fmt != _FORMAT:
            raise DecryptionError(f"unknown ciphertext format {fmt!r}")
        key = self.keys.get(key_id)
        if key is None:
            raise DecryptionError(f"unknown key id {key_id!r}")
        raw = base64.urlsafe_b64decode(token.encode())
        try:
            plain = AESGCM(key).decrypt(raw[:12], raw[12:], f"{key_id}|{context}".encode())
        except Exception as exc:  # cryptography raises InvalidTag
            raise DecryptionError("ciphertext failed authentication") from exc
        return plain.decode()

    @staticmethod
    def key_id_of(stored: str) -> str:
        return stored.split(":", 2)[1]

    def blind_index(self, normalized: str, *, purpose: str) -> str:
        """A keyed hash for exact-match lookup; the purpose separates columns."""
        mac = hmac.new(self.index_key, f"{purpose}\x00{normalized}".encode(), hashlib.sha256)
        return mac.hexdigest()


def _b64key(value: str, *, what: str) -> bytes:
    try:
        key = base64.b64decode(value.encode(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImproperlyConfigured(f"{what} is not valid base64") from exc
    if len(key) != 32:
        raise ImproperlyConfigured(f"{what} must decode to 32 bytes, got {len(key)}")
    return key


def parse_keyring(encryption_keys: str, index_key: str) -> KeyRing:
    keys: dict[str, bytes] = {}
    order: list[str] = []
    for item in encryption_keys.split(","):
        item = item.strip()
        if not item:
            continue
        key_id, sep, b64 = item.partition(":")
        if not sep or not _KEY_ID.match(key_id):
            raise ImproperlyConfigured(
                "FIELD_ENCRYPTION_KEYS entries must look like keyid:base64key "
                "(key id: letters, digits, _ or -, at most 16)"
            )
        if key_id in keys:
            raise ImproperlyConfigured(f"FIELD_ENCRYPTION_KEYS lists key id {key_id!r} twice")
        keys[key_id] = _b64key(b64, what=f"FIELD_ENCRYPTION_KEYS key {key_id!r}")
        order.append(key_id)
    if not order:
        raise ImproperlyConfigured("FIELD_ENCRYPTION_KEYS is empty")
    return KeyRing(
        active_id=order[0], keys=keys, index_key=_b64key(index_key, what="BLIND_INDEX_KEY")
    )


@cache
def keyring() -> KeyRing:
    return parse_keyring(settings.FIELD_ENCRYPTION_KEYS, settings.BLIND_INDEX_KEY)
