"""Province adapters: how one record goes over the wire to a provincial platform.

Every adapter takes the same ``WireRecord`` and answers one ``Outcome``: acknowledged
(with the platform's ack id), refused for good (4xx: a dead letter with the platform's
code), or to be retried (5xx, timeout, connection error, 408, 429). Two protocols ship:

- ``json_hmac``: CONTRACT section 6. ``POST {base}/records`` with the JSON body, and
  ``X-App-Id``, ``X-Timestamp``, ``X-Nonce``, ``X-Signature`` = hex HMAC-SHA256 keyed by
  the app secret over ``METHOD\\nPATH\\nTIMESTAMP\\nNONCE\\nhex(SHA-256(body))``.
- ``nhsa_sm4``: the envelope style of the national medical-insurance interfaces.
  ``POST {base}/nhsa/records`` with ``{"appId","version","timestamp","nonce","encType":
  "SM4","signType":"HMAC-SM3","encData","signData"}``: ``encData`` is base64 of the
  JSON body encrypted with SM4-ECB/PKCS#7 under the issued key, ``signData`` the hex
  HMAC-SM3 (keyed by the app secret) of the other fields as sorted ``k=v`` joined by
  ``&``. The answer is ``{"code": 0, "message", "data": {"status", "ackId"}}``.

Connections are pooled per process (one ``httpx.Client``), which matters: opening a
connection per record is ten times slower.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx
from cryptography.hazmat.primitives import hashes, padding
from cryptography.hazmat.primitives import hmac as crypto_hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

RETRYABLE_4XX = frozenset({408, 425, 429})


@dataclass(frozen=True)
class WireRecord:
    record_id: str
    record_type: str
    occurred_at: str
    hospital_code: str
    payload: dict[str, Any]
    payload_signature: dict[str, Any]

    def body(self) -> bytes:
        return json.dumps(
            {
                "record_id": self.record_id,
                "record_type": self.record_type,
                "occurred_at": self.occurred_at,
                "hospital_code": self.hospital_code,
                "payload": self.payload,
                "payload_signature": self.payload_signature,
            },
            ensure_ascii=False,
            separators=(",", ":"),
        ).encode()


@dataclass(frozen=True)
class Endpoint:
    base_url: str
    app_id: str
    app_secret: str
    sm4_key: str
    timeout: float


@dataclass(frozen=True)
class Outcome:
    kind: str  # "ack", "refused" or "retry"
    status_code: int | None = None
    ack_id: str = ""
    code: str = ""
    message: str = ""


class ProvinceAdapter(Protocol):
    def send(self, *, endpoint: Endpoint, record: WireRecord) -> Outcome: ...


_local = threading.local()


def http_client() -> httpx.Client:
    """One pooled client per thread (Celery's prefork children each have their own)."""
    client: httpx.Client | None = getattr(_local, "client", None)
    if client is None:
        client = httpx.Client(
            limits=httpx.Limits(max_keepalive_connections=20, max_connections=50),
            headers={"User-Agent": "internet-hospital-outbox/1"},
        )
        _local.client = client
    return client


def _url(base: str, path: str) -> tuple[str, str]:
    full = base.rstrip("/") + path
    return full, urlsplit(full).path


def _post(endpoint: Endpoint, url: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
    return http_client().post(
        url,
        content=body,
        headers={"Content-Type": "application/json", **headers},
        timeout=endpoint.timeout,
    )


def _classify(response: httpx.Response, ack: tuple[str, str] | None) -> Outcome:
    status = response.status_code
    if 200 <= status < 300 and ack is not None:
        return Outcome("ack", status, ack_id=ack[1])
    try:
        body = response.json()
    except ValueError:
        body = {}
    code = str(body.get("code", "")) if isinstance(body, dict) else ""
    message = str(body.get("message", "")) if isinstance(body, dict) else ""
    if 400 <= status < 500 and status not in RETRYABLE_4XX:
        return Outcome("refused", status, code=code or f"http_{status}", message=message[:500])
    return Outcome("retry", status, code=code, message=(message or response.text)[:500])


def hmac_signature(
    secret: str, method: str, path: str, timestamp: str, nonce: str, body: bytes
) -> str:
    digest = hashlib.sha256(body).hexdigest()
    message = f"{method}\n{path}\n{timestamp}\n{nonce}\n{digest}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


class JsonHmacAdapter:
    def send(self, *, endpoint: Endpoint, record: WireRecord) -> Outcome:
        url, path = _url(endpoint.base_url, "/records")
        body = record.body()
        timestamp = str(int(time.time()))
        nonce = secrets.token_hex(16)
        headers = {
            "X-App-Id": endpoint.app_id,
            "X-Timestamp": timestamp,
            "X-Nonce": nonce,
            "X-Signature": hmac_signature(
                endpoint.app_secret, "POST", path, timestamp, nonce, body
            ),
        }
        try:
            response = _post(endpoint, url, body, headers)
        except httpx.HTTPError as exc:
            return Outcome("retry", None, message=f"{type(exc).__name__}: {exc}"[:500])
        ack = None
        if 200 <= response.status_code < 300:
            try:
                answer = response.json()
                if answer.get("status") in ("accepted", "duplicate") and answer.get("ack_id"):
                    ack = (str(answer["status"]), str(answer["ack_id"]))
            except (ValueError, AttributeError):
                ack = None
            if ack is None:
                return Outcome("retry", response.status_code, message="malformed acknowledgement")
        return _classify(response, ack)


def sm4_encrypt(key_hex: str, plaintext: bytes) -> bytes:
    padder = padding.PKCS7(128).padder()
    padded = padder.update(plaintext) + padder.finalize()
    encryptor = Cipher(algorithms.SM4(bytes.fromhex(key_hex)), modes.ECB()).encryptor()  # noqa: S305
    return encryptor.update(padded) + encryptor.finalize()


def sm4_decrypt(key_hex: str, ciphertext: bytes) -> bytes:
    decryptor = Cipher(algorithms.SM4(bytes.fromhex(key_hex)), modes.ECB()).decryptor()  # noqa: S305
    padded = decryptor.update(ciphertext) + decryptor.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    return unpadder.update(padded) + unpadder.finalize()


def sm3_sign(secret: str, fields: dict[str, str]) -> str:
    """HMAC-SM3 over the sorted ``k=v`` string of the envelope's fields."""
    text = "&".join(f"{k}={fields[k]}" for k in sorted(fields) if fields[k] != "")
    mac = crypto_hmac.HMAC(secret.encode(), hashes.SM3())
    mac.update(text.encode())
    return mac.finalize().hex()


class NhsaSm4Adapter:
    def send(self, *, endpoint: Endpoint, record: WireRecord) -> Outcome:
        url, _ = _url(endpoint.base_url, "/nhsa/records")
        fields = {
            "appId": endpoint.app_id,
            "version": "1.0.0",
            "timestamp": str(int(time.time() * 1000)),
            "nonce": secrets.token_hex(16),
            "encType": "SM4",
            "signType": "HMAC-SM3",
            "encData": base64.b64encode(sm4_encrypt(endpoint.sm4_key, record.body())).decode(),
        }
        envelope = {**fields, "signData": sm3_sign(endpoint.app_secret, fields)}
        body = json.dumps(envelope, separators=(",", ":")).encode()
        try:
            response = _post(endpoint, url, body, {})
        except httpx.HTTPError as exc:
            return Outcome("retry", None, message=f"{type(exc).__name__}: {exc}"[:500])
        ack = None
        if 200 <= response.status_code < 300:
            try:
                answer = response.json()
                data = answer.get("data") or {}
                if answer.get("code") == 0 and data.get("ackId"):
                    ack = (str(data.get("status", "accepted")), str(data["ackId"]))
                elif answer.get("code") not in (0, None):
                    return Outcome(
                        "refused",
                        response.status_code,
                        code=str(answer["code"]),
                        message=str(answer.get("message", ""))[:500],
                    )
            except (ValueError, AttributeError):
                ack = None
            if ack is None:
                return Outcome("retry", response.status_code, message="malformed acknowledgement")
        return _classify(response, ack)


ADAPTERS: dict[str, ProvinceAdapter] = {
    "json_hmac": JsonHmacAdapter(),
    "nhsa_sm4": NhsaSm4Adapter(),
}
