"""The provincial regulatory platform, receiving side, as a hand-written ASGI application.

It accepts exactly what the hospital's province adapters send (CONTRACT section 6):

- ``POST /records`` (``json_hmac``): the JSON record, with ``X-App-Id``, ``X-Timestamp``
  (unix seconds), ``X-Nonce`` and ``X-Signature`` = hex HMAC-SHA256 keyed by the app
  secret over ``POST\\n{path}\\n{timestamp}\\n{nonce}\\n{hex sha256(body)}``. Answers 200
  ``{"status": "accepted"|"duplicate", "ack_id"}`` or 4xx/5xx ``{"code", "message"}``.
- ``POST /nhsa/records`` (``nhsa_sm4``): the envelope ``{"appId", "version",
  "timestamp" (ms), "nonce", "encType": "SM4", "signType": "HMAC-SM3", "encData",
  "signData"}``; ``encData`` is base64 of SM4-ECB/PKCS#7 of the same JSON record under the
  app's key, ``signData`` hex HMAC-SM3 (app secret) of the other non-empty fields as sorted
  ``k=v`` joined by ``&``. Answers 200 ``{"code": 0, "message": "success", "data":
  {"status", "ackId"}}``, or 4xx/5xx ``{"code": "<reason>", "message"}``.

Checks, in order: the app is known (401 ``unknown_app``), the timestamp is inside the
window (401 ``stale_timestamp``), the HMAC/SM3 signature is right (401 ``bad_signature``),
the nonce is new for this app (401 ``nonce_reused``; checked after the signature so that
an unauthenticated request cannot burn a nonce), the body parses (400 ``malformed``), the
hospital is the app's (403 ``wrong_hospital``), the record is new (else 200 ``duplicate``
with the first ``ack_id``), the hospital seal signs the payload (422
``unknown_certificate`` / ``bad_payload_signature``). Then it is stored.

Configuration comes from the environment, read once when the first request (or
``application.setup()``) arrives: ``PEER_DB``, ``PEER_APPS``, ``PEER_TIMESTAMP_WINDOW``,
``PEER_ADMIN_TOKEN``. Faults are injected with ``/_faults`` (see README.md).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime as dt
import hashlib
import hmac
import html
import json
import math
import os
import random
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import rfc8785
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, padding
from cryptography.hazmat.primitives import hmac as crypto_hmac
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from peers.regulator.store import Store, StoredCertificate, StoredRecord

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
PublicKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey

JSON_PATH = "/records"
NHSA_PATH = "/nhsa/records"
ADMIN_PATHS = frozenset({"/_faults", "/_reset"})
MAX_BODY_BYTES = 8 * 1024 * 1024
MAX_NONCE_LENGTH = 128
MAX_RECORD_ID_LENGTH = 200
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
ECDSA_ALGORITHMS = frozenset({"ecdsa-p256-sha256", "ecdsa-sha256", "es256"})
ED25519_ALGORITHMS = frozenset({"ed25519", "eddsa"})
INSTITUTION_FILING = "filing.institution"


class ConfigError(ValueError):
    """The environment does not describe a usable peer."""


class Refusal(Exception):
    """A 4xx answer: the request is refused for good."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


# -- configuration -------------------------------------------------------------------


@dataclass(frozen=True)
class AppCredentials:
    app_id: str
    app_secret: str
    hospital_code: str = ""
    sm4_key: str = ""


@dataclass(frozen=True)
class PeerConfig:
    db_path: str
    apps: dict[str, AppCredentials]
    window: float = 300.0
    admin_token: str = ""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> PeerConfig:
        env = os.environ if environ is None else environ
        try:
            window = float(env.get("PEER_TIMESTAMP_WINDOW", "300") or "300")
        except ValueError as exc:
            raise ConfigError("PEER_TIMESTAMP_WINDOW must be a number of seconds") from exc
        if not math.isfinite(window) or window <= 0:
            raise ConfigError("PEER_TIMESTAMP_WINDOW must be positive")
        return cls(
            db_path=env.get("PEER_DB") or "var/regulator-peer.sqlite3",
            apps=parse_apps(env.get("PEER_APPS", "")),
            window=window,
            admin_token=env.get("PEER_ADMIN_TOKEN", ""),
        )


def parse_apps(text: str) -> dict[str, AppCredentials]:
    """``PEER_APPS``: a JSON list of ``{"app_id", "app_secret", "hospital_code"?,
    "sm4_key"?}``."""
    if not text.strip():
        raise ConfigError("no apps configured: pass --app APP_ID:SECRET… or set PEER_APPS")
    try:
        items = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"PEER_APPS is not JSON: {exc}") from exc
    if not isinstance(items, list) or not items:
        raise ConfigError("PEER_APPS must be a non-empty JSON list")
    apps: dict[str, AppCredentials] = {}
    for item in items:
        if not isinstance(item, dict):
            raise ConfigError("each PEER_APPS entry must be an object")
        app_id, secret = item.get("app_id"), item.get("app_secret")
        hospital_code, sm4_key = item.get("hospital_code") or "", item.get("sm4_key") or ""
        if not isinstance(app_id, str) or not app_id or not isinstance(secret, str) or not secret:
            raise ConfigError("each PEER_APPS entry needs a non-empty app_id and app_secret")
        if not isinstance(hospital_code, str) or not isinstance(sm4_key, str):
            raise ConfigError(f"app {app_id}: hospital_code and sm4_key must be strings")
        if sm4_key and not _is_sm4_key(sm4_key):
            raise ConfigError(f"app {app_id}: sm4_key must be 32 hex digits (16 bytes)")
        if app_id in apps:
            raise ConfigError(f"app {app_id} is configured twice")
        apps[app_id] = AppCredentials(app_id, secret, hospital_code, sm4_key.lower())
    return apps


def _is_sm4_key(text: str) -> bool:
    try:
        return len(bytes.fromhex(text)) == 16
    except ValueError:
        return False


# -- faults --------------------------------------------------------------------------


@dataclass
class Refuse:
    code: str
    message: str
    count: int
    record_types: tuple[str, ...] | None = None
    status: int = 422

    def matches(self, record_type: str) -> bool:
        return self.count > 0 and (self.record_types is None or record_type in self.record_types)

    def describe(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "message": self.message,
            "count": self.count,
            "record_types": list(self.record_types) if self.record_types is not None else None,
            "status": self.status,
        }


@dataclass
class Faults:
    error_rate: float = 0.0
    lose_ack_rate: float = 0.0
    latency_ms: float = 0.0
    refuse: Refuse | None = None
    down_until: float = 0.0  # time.monotonic()
    hang_seconds: float = 0.0
    seed: int | None = None  # replayable draws for error_rate and lose_ack_rate
    rng: random.Random = field(default_factory=random.SystemRandom, repr=False)

    @classmethod
    def parse(cls, data: Any) -> Faults:
        if not isinstance(data, dict):
            raise ValueError("the faults must be a JSON object")
        known = {
            "error_rate",
            "lose_ack_rate",
            "latency_ms",
            "refuse",
            "down_for_seconds",
            "hang_seconds",
            "seed",
        }
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown fault(s): {', '.join(unknown)}")
        faults = cls(
            error_rate=_number(data, "error_rate", 0.0, 1.0),
            lose_ack_rate=_number(data, "lose_ack_rate", 0.0, 1.0),
            latency_ms=_number(data, "latency_ms", 0.0, 600_000.0),
            hang_seconds=_number(data, "hang_seconds", 0.0, 3600.0),
        )
        seed = data.get("seed")
        if seed is not None:
            if not isinstance(seed, int) or isinstance(seed, bool):
                raise ValueError("seed must be an integer")
            faults.seed = seed
            faults.rng = random.Random(seed)  # noqa: S311 - fault injection, not a secret
        down = _number(data, "down_for_seconds", 0.0, 86_400.0)
        if down:
            faults.down_until = time.monotonic() + down
        refuse = data.get("refuse")
        if refuse is not None:
            faults.refuse = _parse_refuse(refuse)
        return faults

    def down_remaining(self) -> float:
        return max(0.0, self.down_until - time.monotonic())

    def describe(self) -> dict[str, Any]:
        return {
            "error_rate": self.error_rate,
            "lose_ack_rate": self.lose_ack_rate,
            "latency_ms": self.latency_ms,
            "refuse": self.refuse.describe() if self.refuse and self.refuse.count > 0 else None,
            "down_for_seconds": round(self.down_remaining(), 3),
            "hang_seconds": self.hang_seconds,
            "seed": self.seed,
        }


def _number(data: dict[str, Any], key: str, low: float, high: float) -> float:
    value = data.get(key, 0)
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{key} must be a number")
    number = float(value)
    if not math.isfinite(number) or not low <= number <= high:
        raise ValueError(f"{key} must be between {low:g} and {high:g}")
    return number


def _parse_refuse(refuse: Any) -> Refuse:
    if not isinstance(refuse, dict):
        raise ValueError("refuse must be an object")
    code = refuse.get("code")
    message = refuse.get("message", "refused by the platform")
    count = refuse.get("count", 1)
    status = refuse.get("status", 422)
    types = refuse.get("record_types")
    if not isinstance(code, str) or not code:
        raise ValueError("refuse.code must be a non-empty string")
    if not isinstance(message, str):
        raise ValueError("refuse.message must be a string")
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ValueError("refuse.count must be a non-negative integer")
    if isinstance(status, bool) or not isinstance(status, int) or not 400 <= status <= 499:
        raise ValueError("refuse.status must be a 4xx status")
    if types is not None and (
        not isinstance(types, list) or not all(isinstance(t, str) for t in types)
    ):
        raise ValueError("refuse.record_types must be a list of strings")
    return Refuse(code, message, count, tuple(types) if types is not None else None, status)


# -- crypto helpers ------------------------------------------------------------------


def hmac_sha256_signature(
    secret: str, method: str, path: str, timestamp: str, nonce: str, body: bytes
) -> str:
    digest = hashlib.sha256(body).hexdigest()
    message = f"{method}\n{path}\n{timestamp}\n{nonce}\n{digest}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def hmac_sm3_signature(secret: str, fields: Mapping[str, str]) -> str:
    text = "&".join(f"{k}={fields[k]}" for k in sorted(fields) if fields[k] != "")
    mac = crypto_hmac.HMAC(secret.encode(), hashes.SM3())
    mac.update(text.encode())
    return mac.finalize().hex()


def sm4_decrypt(key_hex: str, ciphertext: bytes) -> bytes:
    decryptor = Cipher(algorithms.SM4(bytes.fromhex(key_hex)), modes.ECB()).decryptor()  # noqa: S305
    padded = decryptor.update(ciphertext) + decryptor.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    return unpadder.update(padded) + unpadder.finalize()


def verify_seal(key: PublicKey, alg: str, signature: bytes, data: bytes) -> bool:
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            if alg.lower() not in ECDSA_ALGORITHMS or not isinstance(key.curve, ec.SECP256R1):
                return False
            key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
            return True
        if isinstance(key, ed25519.Ed25519PublicKey):
            if alg.lower() not in ED25519_ALGORITHMS:
                return False
            key.verify(signature, data)
            return True
    except InvalidSignature:
        return False
    return False


def _now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# -- HTTP plumbing -------------------------------------------------------------------


@dataclass
class Response:
    status: int
    body: bytes
    content_type: str = "application/json; charset=utf-8"
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


def json_response(
    status: int, data: Any, headers: list[tuple[bytes, bytes]] | None = None
) -> Response:
    body = json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()
    return Response(status, body, headers=headers or [])


def problem(status: int, code: str, message: str) -> Response:
    return json_response(status, {"code": code, "message": message})


@dataclass(frozen=True)
class Receipt:
    status: str  # "accepted" or "duplicate"
    ack_id: str
    created: bool


_HTML_PAGE = """<!doctype html>
<html lang="zh-CN"><head><meta charset="utf-8">
<title>省级互联网医院监管平台（模拟） · Provincial regulatory platform (peer)</title>
<style>
body{{font-family:system-ui,sans-serif;margin:1.5rem;color:#222}}
table{{border-collapse:collapse;width:100%;font-size:.85rem}}
th,td{{border:1px solid #ccc;padding:.25rem .4rem;text-align:left;vertical-align:top}}
th{{background:#f3f3f3}} code{{white-space:pre-wrap;word-break:break-all}}
.meta{{color:#555}}
</style></head><body>
<h1>省级互联网医院监管平台（模拟） <small>Provincial regulatory platform (peer)</small></h1>
<p class="meta">已接收记录 Records received: {total} · 重复 Duplicates: {duplicates} ·
拒收 Refusals: {refusals} · 注入的 5xx Injected 5xx: {injected} ·
故障 Faults: <code>{faults}</code></p>
<h2>最近 100 条 · Latest 100</h2>
<table><thead><tr>
<th>序号 Seq</th><th>记录编号 Record id</th><th>类型 Type</th><th>机构 Hospital</th>
<th>发生时间 Occurred</th><th>接收时间 Received</th><th>回执 Ack</th><th>内容 Payload</th>
</tr></thead><tbody>
{rows}
</tbody></table></body></html>
"""


def _html_row(record: StoredRecord) -> str:
    payload = json.dumps(record.body.get("payload"), ensure_ascii=False, sort_keys=True)
    if len(payload) > 400:
        payload = payload[:400] + "…"
    cells = [
        str(record.seq),
        record.record_id,
        record.record_type,
        record.hospital_code,
        record.occurred_at,
        record.received_at,
        record.ack_id,
    ]
    tds = "".join(f"<td>{html.escape(cell, quote=True)}</td>" for cell in cells)
    return f"<tr>{tds}<td><code>{html.escape(payload, quote=True)}</code></td></tr>"


# -- the platform --------------------------------------------------------------------


class RegulatorPeer:
    """One platform: its configuration, its store, the faults currently injected."""

    def __init__(self, config: PeerConfig, store: Store | None = None) -> None:
        self.config = config
        self.store = store or Store(config.db_path)
        self.faults = Faults()
        self._keys: dict[str, tuple[str, PublicKey]] = {}

    # -- ASGI ------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope.get("type")
        if kind == "lifespan":
            await _lifespan(receive, send)
            return
        if kind != "http":
            if kind == "websocket":
                await receive()
                await send({"type": "websocket.close", "code": 1000})
            return
        body = await _read_body(receive)
        if body is None:
            return  # the client went away
        if isinstance(body, Response):
            response = body
        else:
            response = await self.dispatch(scope, body)
        await _send_response(send, response)

    async def dispatch(self, scope: Scope, body: bytes) -> Response:
        method = str(scope.get("method", "GET")).upper()
        path = str(scope.get("path", "/"))
        if path in ADMIN_PATHS:
            return self.admin(scope, method, path, body)
        faults = self.faults
        if faults.down_remaining() > 0:
            self.store.bump("injected_5xx:down")
            retry_after = str(max(1, math.ceil(faults.down_remaining()))).encode()
            return json_response(
                503,
                {"code": "unavailable", "message": "the platform is down for maintenance"},
                headers=[(b"retry-after", retry_after)],
            )
        if faults.latency_ms > 0:
            await asyncio.sleep(faults.latency_ms / 1000)
        routes: dict[str, dict[str, Callable[[], Awaitable[Response]]]] = {
            JSON_PATH: {"POST": lambda: self.records(scope, body, "json_hmac")},
            NHSA_PATH: {"POST": lambda: self.records(scope, body, "nhsa_sm4")},
            "/api/records": {"GET": lambda: _ready(self.listing(scope))},
            "/api/stats": {"GET": lambda: _ready(json_response(200, self.stats()))},
            "/healthz": {"GET": lambda: _ready(json_response(200, {"status": "ok"}))},
            "/": {"GET": lambda: _ready(self.page())},
        }
        handlers = routes.get(path)
        if handlers is None:
            return problem(404, "not_found", f"no such resource: {path}")
        handler = handlers.get(method)
        if handler is None:
            return json_response(
                405,
                {"code": "method_not_allowed", "message": f"{method} is not allowed here"},
                headers=[(b"allow", ", ".join(handlers).encode())],
            )
        return await handler()

    # -- receiving -------------------------------------------------------------------

    async def records(self, scope: Scope, body: bytes, protocol: str) -> Response:
        faults = self.faults
        if faults.error_rate > 0 and faults.rng.random() < faults.error_rate:
            self.store.bump("injected_5xx:error_rate")
            response = problem(500, "internal_error", "internal error (injected)")
        else:
            try:
                if protocol == "json_hmac":
                    app, plain = self.authenticate_json(scope, body)
                else:
                    app, plain = self.authenticate_nhsa(body)
                receipt = self.receive(app, protocol, plain)
            except Refusal as refusal:
                self.store.bump(f"refusal:{refusal.code}")
                response = problem(refusal.status, refusal.code, refusal.message)
            else:
                if (
                    receipt.created
                    and faults.lose_ack_rate > 0
                    and faults.rng.random() < faults.lose_ack_rate
                ):
                    self.store.bump("injected_5xx:lose_ack")
                    response = problem(
                        500, "internal_error", "internal error after storing (injected)"
                    )
                elif protocol == "json_hmac":
                    response = json_response(
                        200, {"status": receipt.status, "ack_id": receipt.ack_id}
                    )
                else:
                    response = json_response(
                        200,
                        {
                            "code": 0,
                            "message": "success",
                            "data": {"status": receipt.status, "ackId": receipt.ack_id},
                        },
                    )
        if faults.hang_seconds > 0:
            await asyncio.sleep(faults.hang_seconds)
        return response

    def _app(self, app_id: str) -> AppCredentials:
        app = self.config.apps.get(app_id)
        if app is None:
            raise Refusal(401, "unknown_app", f"unknown app id {app_id[:64]!r}")
        return app

    def _check_timestamp(self, seconds: float) -> None:
        if not math.isfinite(seconds) or abs(time.time() - seconds) > self.config.window:
            raise Refusal(
                401,
                "stale_timestamp",
                f"the timestamp is more than {self.config.window:g} s from the platform's clock",
            )

    def _use_nonce(self, app: AppCredentials, nonce: str, seconds: float) -> None:
        if not self.store.use_nonce(app.app_id, nonce, seconds + self.config.window + 1):
            raise Refusal(401, "nonce_reused", "this nonce was already used")

    def authenticate_json(self, scope: Scope, body: bytes) -> tuple[AppCredentials, bytes]:
        headers = _headers(scope)
        app = self._app(headers.get("x-app-id", ""))
        timestamp = headers.get("x-timestamp", "")
        try:
            seconds = int(timestamp)
        except ValueError:
            raise Refusal(400, "malformed", "X-Timestamp must be unix seconds") from None
        self._check_timestamp(seconds)
        nonce = headers.get("x-nonce", "")
        if not nonce or len(nonce) > MAX_NONCE_LENGTH:
            raise Refusal(400, "malformed", f"X-Nonce must be 1 to {MAX_NONCE_LENGTH} characters")
        raw_path = scope.get("raw_path")
        path = raw_path.decode("latin-1") if isinstance(raw_path, bytes) else str(scope["path"])
        path = path.split("?", 1)[0]
        expected = hmac_sha256_signature(app.app_secret, "POST", path, timestamp, nonce, body)
        if not hmac.compare_digest(expected, headers.get("x-signature", "").lower()):
            raise Refusal(401, "bad_signature", "X-Signature does not match")
        self._use_nonce(app, nonce, seconds)
        return app, body

    def authenticate_nhsa(self, body: bytes) -> tuple[AppCredentials, bytes]:
        try:
            envelope = json.loads(body)
        except ValueError:
            raise Refusal(400, "malformed", "the envelope is not JSON") from None
        if not isinstance(envelope, dict):
            raise Refusal(400, "malformed", "the envelope must be a JSON object")
        fields: dict[str, str] = {}
        for key, value in envelope.items():
            if value is None:
                fields[key] = ""
            elif isinstance(value, str):
                fields[key] = value
            elif isinstance(value, int) and not isinstance(value, bool):
                fields[key] = str(value)
            else:
                raise Refusal(400, "malformed", f"envelope field {key!r} must be a string")
        required = ("appId", "timestamp", "nonce", "encType", "signType", "encData", "signData")
        missing = [key for key in required if not fields.get(key)]
        if missing:
            raise Refusal(400, "malformed", f"the envelope lacks {', '.join(missing)}")
        app = self._app(fields["appId"])
        if not app.sm4_key:
            raise Refusal(401, "unknown_app", "this app is not enabled for the SM4 envelope")
        if fields["encType"] != "SM4" or fields["signType"] != "HMAC-SM3":
            raise Refusal(400, "malformed", "encType must be SM4 and signType HMAC-SM3")
        try:
            seconds = int(fields["timestamp"]) / 1000
        except ValueError:
            raise Refusal(400, "malformed", "timestamp must be unix milliseconds") from None
        self._check_timestamp(seconds)
        nonce = fields["nonce"]
        if len(nonce) > MAX_NONCE_LENGTH:
            raise Refusal(400, "malformed", f"nonce must be at most {MAX_NONCE_LENGTH} characters")
        signed = {key: value for key, value in fields.items() if key != "signData"}
        expected = hmac_sm3_signature(app.app_secret, signed)
        if not hmac.compare_digest(expected, fields["signData"].lower()):
            raise Refusal(401, "bad_signature", "signData does not match")
        self._use_nonce(app, nonce, seconds)
        try:
            plain = sm4_decrypt(app.sm4_key, base64.b64decode(fields["encData"], validate=True))
        except (binascii.Error, ValueError):
            raise Refusal(400, "malformed", "encData does not decrypt") from None
        return app, plain

    def receive(self, app: AppCredentials, protocol: str, raw: bytes) -> Receipt:
        record = _parse_record(raw)
        record_id = record["record_id"]
        record_type = record["record_type"]
        hospital_code = record["hospital_code"]
        if app.hospital_code and hospital_code != app.hospital_code:
            raise Refusal(
                403,
                "wrong_hospital",
                f"app {app.app_id} reports for hospital {app.hospital_code}, not {hospital_code}",
            )
        existing = self.store.find(record_id)
        if existing is not None:
            self.store.bump("duplicates")
            return Receipt("duplicate", existing.ack_id, created=False)
        certificate = self._verify_payload(record)
        refuse = self.faults.refuse
        if refuse is not None and refuse.matches(record_type):
            refuse.count -= 1
            if refuse.count <= 0:
                self.faults.refuse = None
            raise Refusal(refuse.status, refuse.code, refuse.message)
        inserted = self.store.insert(
            record_id=record_id,
            app_id=app.app_id,
            protocol=protocol,
            record_type=record_type,
            hospital_code=hospital_code,
            occurred_at=record["occurred_at"],
            received_at=_now_iso(),
            body=record,
            certificate=certificate,
        )
        if not inserted.created:
            self.store.bump("duplicates")
            return Receipt("duplicate", inserted.ack_id, created=False)
        return Receipt("accepted", inserted.ack_id, created=True)

    def _verify_payload(self, record: dict[str, Any]) -> StoredCertificate | None:
        """Check the hospital seal over the payload; answer the certificate to file, if any."""
        signature = record["payload_signature"]
        payload = record["payload"]
        hospital_code = record["hospital_code"]
        cert_sha256 = signature["cert_sha256"].lower()
        try:
            value = base64.b64decode(signature["value"], validate=True)
        except (binascii.Error, ValueError):
            raise Refusal(
                422, "bad_payload_signature", "payload_signature.value is not base64"
            ) from None
        to_file: StoredCertificate | None = None
        if record["record_type"] == INSTITUTION_FILING:
            pem = payload.get("seal_certificate_pem")
            if not isinstance(pem, str) or not pem:
                raise Refusal(
                    422, "bad_payload_signature", "the filing carries no seal_certificate_pem"
                )
            try:
                certificate = x509.load_pem_x509_certificate(pem.encode())
                key = certificate.public_key()
            except ValueError:
                raise Refusal(
                    422, "bad_payload_signature", "seal_certificate_pem is not a certificate"
                ) from None
            if certificate.fingerprint(hashes.SHA256()).hex() != cert_sha256:
                raise Refusal(
                    422,
                    "bad_payload_signature",
                    "cert_sha256 is not the fingerprint of seal_certificate_pem",
                )
            if not isinstance(key, ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey):
                raise Refusal(422, "bad_payload_signature", "unsupported seal key type")
            known = self.store.certificate(cert_sha256)
            if known is not None and known.hospital_code != hospital_code:
                raise Refusal(
                    422,
                    "certificate_conflict",
                    "this seal certificate is filed for another hospital",
                )
            to_file = StoredCertificate(cert_sha256, hospital_code, pem)
        else:
            key = self._filed_key(cert_sha256, hospital_code)
        try:
            data = rfc8785.dumps(payload)
        except (rfc8785.CanonicalizationError, TypeError, ValueError):
            raise Refusal(
                422, "bad_payload_signature", "the payload has no RFC 8785 canonical form"
            ) from None
        if not verify_seal(key, signature["alg"], value, data):
            raise Refusal(
                422,
                "bad_payload_signature",
                "the seal signature does not verify over the canonical payload",
            )
        if to_file is not None:
            self._keys[cert_sha256] = (hospital_code, key)
        return to_file

    def _filed_key(self, cert_sha256: str, hospital_code: str) -> PublicKey:
        cached = self._keys.get(cert_sha256)
        if cached is None:
            stored = self.store.certificate(cert_sha256)
            if stored is not None:
                key = x509.load_pem_x509_certificate(stored.pem.encode()).public_key()
                if isinstance(key, ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey):
                    cached = (stored.hospital_code, key)
                    self._keys[cert_sha256] = cached
        if cached is None or cached[0] != hospital_code:
            raise Refusal(
                422,
                "unknown_certificate",
                f"no seal certificate {cert_sha256[:16]}… is filed for hospital {hospital_code}",
            )
        return cached[1]

    # -- reading ---------------------------------------------------------------------

    def listing(self, scope: Scope) -> Response:
        query = parse_qs(bytes(scope.get("query_string", b"")).decode("latin-1"))
        try:
            after = int(query.get("after", ["0"])[-1] or 0)
            limit = int(query.get("limit", [str(DEFAULT_LIMIT)])[-1] or DEFAULT_LIMIT)
        except ValueError:
            return problem(400, "malformed", "after and limit must be integers")
        if after < 0 or limit < 1:
            return problem(400, "malformed", "after must be >= 0 and limit >= 1")
        records = self.store.after(after, min(limit, MAX_LIMIT))
        return json_response(
            200,
            {
                "results": [record.as_listing() for record in records],
                "next_after": records[-1].seq if records else after,
            },
        )

    def stats(self) -> dict[str, Any]:
        by_type = self.store.counts_by_type()
        counters = self.store.counters()
        refusals = {
            name.split(":", 1)[1]: value
            for name, value in counters.items()
            if name.startswith("refusal:")
        }
        injected = {
            name.split(":", 1)[1]: value
            for name, value in counters.items()
            if name.startswith("injected_5xx:")
        }
        return {
            "total": sum(by_type.values()),
            "by_record_type": by_type,
            "duplicates": counters.get("duplicates", 0),
            "refusals": {"total": sum(refusals.values()), "by_code": refusals},
            "injected_5xx": {
                "total": sum(injected.values()),
                "error_rate": injected.get("error_rate", 0),
                "lose_ack": injected.get("lose_ack", 0),
                "down": injected.get("down", 0),
            },
            "certificates": self.store.certificate_count(),
            "faults": self.faults.describe(),
        }

    def page(self) -> Response:
        stats = self.stats()
        rows = "\n".join(_html_row(record) for record in self.store.latest(100))
        text = _HTML_PAGE.format(
            total=stats["total"],
            duplicates=stats["duplicates"],
            refusals=stats["refusals"]["total"],
            injected=stats["injected_5xx"]["total"],
            faults=html.escape(json.dumps(stats["faults"], ensure_ascii=False), quote=True),
            rows=rows or '<tr><td colspan="8">（暂无 none yet）</td></tr>',
        )
        return Response(
            200,
            text.encode(),
            content_type="text/html; charset=utf-8",
            headers=[
                (b"content-security-policy", b"default-src 'none'; style-src 'unsafe-inline'"),
                (b"x-content-type-options", b"nosniff"),
            ],
        )

    # -- admin -----------------------------------------------------------------------

    def admin(self, scope: Scope, method: str, path: str, body: bytes) -> Response:
        token = self.config.admin_token
        if token and not hmac.compare_digest(
            _headers(scope).get("x-admin-token", "").encode(), token.encode()
        ):
            return problem(401, "unauthorized", "X-Admin-Token is missing or wrong")
        if path == "/_reset":
            if method != "POST":
                return problem(405, "method_not_allowed", "POST /_reset")
            self.store.reset()
            self._keys.clear()
            return json_response(200, {"status": "reset"})
        if method == "GET":
            return json_response(200, self.faults.describe())
        if method != "POST":
            return problem(405, "method_not_allowed", "GET or POST /_faults")
        try:
            data = json.loads(body) if body.strip() else {}
            self.faults = Faults.parse(data)
        except ValueError as exc:
            return problem(400, "malformed", str(exc))
        return json_response(200, self.faults.describe())


async def _ready(response: Response) -> Response:
    return response


def _headers(scope: Scope) -> dict[str, str]:
    return {
        bytes(name).decode("latin-1").lower(): bytes(value).decode("latin-1")
        for name, value in scope.get("headers", [])
    }


async def _read_body(receive: Receive) -> bytes | Response | None:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return problem(413, "too_large", f"the body exceeds {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _send_response(send: Send, response: Response) -> None:
    headers = [
        (b"content-type", response.content_type.encode()),
        (b"content-length", str(len(response.body)).encode()),
        (b"cache-control", b"no-store"),
        *response.headers,
    ]
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    await send({"type": "http.response.body", "body": response.body})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def _parse_record(raw: bytes) -> dict[str, Any]:
    try:
        record = json.loads(raw)
    except ValueError:
        raise Refusal(400, "malformed", "the body is not JSON") from None
    if not isinstance(record, dict):
        raise Refusal(400, "malformed", "the body must be a JSON object")
    for key in ("record_id", "record_type", "occurred_at", "hospital_code"):
        if not isinstance(record.get(key), str) or not record[key]:
            raise Refusal(400, "malformed", f"{key} must be a non-empty string")
    if len(record["record_id"]) > MAX_RECORD_ID_LENGTH:
        raise Refusal(400, "malformed", "record_id is too long")
    if not isinstance(record.get("payload"), dict):
        raise Refusal(400, "malformed", "payload must be an object")
    signature = record.get("payload_signature")
    if not isinstance(signature, dict) or not all(
        isinstance(signature.get(key), str) and signature[key]
        for key in ("alg", "cert_sha256", "value")
    ):
        raise Refusal(
            400, "malformed", "payload_signature needs alg, cert_sha256 and value strings"
        )
    return record


class LazyApplication:
    """``application``: builds the peer from the environment on first use, so importing
    this module has no side effects and ``python -m peers.regulator`` can set the
    environment first (and call :meth:`setup` to fail fast on a bad configuration)."""

    def __init__(self) -> None:
        self._peer: RegulatorPeer | None = None
        self._lock = threading.Lock()

    def setup(self) -> RegulatorPeer:
        peer = self._peer
        if peer is None:
            with self._lock:
                if self._peer is None:
                    self._peer = RegulatorPeer(PeerConfig.from_env())
                peer = self._peer
        return peer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.setup()(scope, receive, send)


application = LazyApplication()
