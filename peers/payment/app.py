"""The payment peer as a hand-written ASGI application: a mobile-payment gateway (WeChat
Pay API v3 style) and the medical-insurance platform (2207/2208). The wire protocol is
``PROTOCOL.md`` beside this file; this module follows its sections:

1. ``GET /v3/certificates``: the gateway's public key and its serial.
2. Merchant API under ``/v3/`` (HMAC ``Authorization``; every answer signed by the
   gateway): prepay, query, close, refund, refund query, daily bill.
3. Notifications: built when a payment or refund succeeds, stored, sent by
   :mod:`peers.payment.notifier` with retries on the protocol's schedule.
4. The gateway's signature on every answer and every notification.
5. ``/pay/{prepay_id}``: the page the patient's app opens, and the payment itself.
6. ``POST /fsi/api/callService``: the insurance platform (:mod:`peers.payment.insurance`).
7. Faults (``/_faults``), ``/_reset``, ``/_flush``, ``/_coverage`` and the ``/api/…``
   listings for humans and tests.

Configuration comes from the environment (``PAYMENT_PEER_*``, set by ``python -m
peers.payment``), read once when the first request (or ``application.setup()``) arrives.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime as dt
import hmac
import json
import math
import os
import random
import re
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import httpx

from peers.payment import insurance, pages
from peers.payment.crypto import (
    GatewayKey,
    encrypt_resource,
    insurance_signature,
    local_time,
    merchant_signature,
    random_digits,
    random_text,
    rfc3339,
)
from peers.payment.notifier import Notifier
from peers.payment.store import (
    DELIVERED,
    HELD,
    PENDING,
    SUPPRESSED,
    BillRow,
    NewNotification,
    Notification,
    Refund,
    Store,
    Transaction,
)

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

TIMESTAMP_WINDOW = 300
MAX_BODY_BYTES = 1024 * 1024
MAX_NONCE_LENGTH = 64
LISTING_LIMIT = 1000
#: Seconds between deliveries of a notification that failed (before ``--retry-scale``).
RETRY_SCHEDULE = (
    15,
    15,
    30,
    180,
    600,
    1200,
    1800,
    1800,
    1800,
    3600,
    10800,
    10800,
    10800,
    21600,
    21600,
)
ADMIN_PATHS = frozenset({"/_faults", "/_reset", "/_flush", "/_coverage"})
OUT_TRADE_NO = re.compile(r"[A-Za-z0-9_-]{6,32}")
OUT_REFUND_NO = re.compile(r"[A-Za-z0-9_|*@-]{1,64}")
BILL_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
AUTH_PARAM = re.compile(r'\s*([A-Za-z_]+)="([^"]*)"\s*(?:,|$)')
TRADE_PATH = re.compile(r"/v3/pay/transactions/out-trade-no/([^/]+)")
CLOSE_PATH = re.compile(r"/v3/pay/transactions/out-trade-no/([^/]+)/close")
REFUND_PATH = re.compile(r"/v3/refund/domestic/refunds/([^/]+)")
PAY_PATH = re.compile(r"/pay/([^/]+)")

TRANSACTION_SUCCESS = "TRANSACTION.SUCCESS"
REFUND_SUCCESS = "REFUND.SUCCESS"
TRADE_STATE_DESC = {
    "NOTPAY": "未支付",
    "SUCCESS": "支付成功",
    "CLOSED": "已关闭",
    "REFUND": "转入退款",
}
BILL_HEADER = "trade_time,out_trade_no,transaction_id,type,amount,out_refund_no,refund_id"


class ConfigError(ValueError):
    """The environment does not describe a usable peer."""


class Refusal(Exception):
    """A 4xx/5xx answer ``{"code", "message"}``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


# -- configuration -------------------------------------------------------------------


@dataclass(frozen=True)
class Merchant:
    mchid: str
    signing_secret: str
    apiv3_key: str


@dataclass(frozen=True)
class Institution:
    paasid: str
    secret: str


@dataclass(frozen=True)
class PeerConfig:
    db_path: str
    gateway_key_path: str
    merchants: dict[str, Merchant]
    institutions: dict[str, Institution]
    retry_scale: float = 1.0
    admin_token: str = ""
    public_url: str = ""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> PeerConfig:
        env = os.environ if environ is None else environ
        try:
            scale = float(env.get("PAYMENT_PEER_RETRY_SCALE", "1") or "1")
        except ValueError as exc:
            raise ConfigError("PAYMENT_PEER_RETRY_SCALE must be a number") from exc
        if not math.isfinite(scale) or scale < 0:
            raise ConfigError("PAYMENT_PEER_RETRY_SCALE must be a non-negative number")
        merchants = parse_merchants(env.get("PAYMENT_PEER_MERCHANTS", ""))
        institutions = parse_institutions(env.get("PAYMENT_PEER_INSURANCE", ""))
        if not merchants and not institutions:
            raise ConfigError(
                "nothing configured: pass --merchant MCHID:SIGNING_SECRET:APIV3KEY and/or "
                "--insurance PAASID:SECRET (or set PAYMENT_PEER_MERCHANTS/PAYMENT_PEER_INSURANCE)"
            )
        public_url = env.get("PAYMENT_PEER_PUBLIC_URL", "").rstrip("/")
        if public_url and urlsplit(public_url).scheme not in ("http", "https"):
            raise ConfigError("PAYMENT_PEER_PUBLIC_URL must be an http(s) URL")
        return cls(
            db_path=env.get("PAYMENT_PEER_DB") or "var/payment-peer.sqlite3",
            gateway_key_path=env.get("PAYMENT_PEER_GATEWAY_KEY") or "var/payment-gateway-key.pem",
            merchants=merchants,
            institutions=institutions,
            retry_scale=scale,
            admin_token=env.get("PAYMENT_PEER_ADMIN_TOKEN", ""),
            public_url=public_url,
        )


def _json_list(name: str, text: str) -> list[dict[str, Any]]:
    if not text.strip():
        return []
    try:
        items = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{name} is not JSON: {exc}") from exc
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise ConfigError(f"{name} must be a JSON list of objects")
    return items


def parse_merchants(text: str) -> dict[str, Merchant]:
    """``PAYMENT_PEER_MERCHANTS``: ``[{"mchid", "signing_secret", "apiv3_key"}]``."""
    merchants: dict[str, Merchant] = {}
    for item in _json_list("PAYMENT_PEER_MERCHANTS", text):
        mchid, secret, key = item.get("mchid"), item.get("signing_secret"), item.get("apiv3_key")
        if not (
            isinstance(mchid, str)
            and mchid
            and isinstance(secret, str)
            and secret
            and isinstance(key, str)
        ):
            raise ConfigError("each merchant needs a non-empty mchid, signing_secret, apiv3_key")
        if len(key) != 32 or not key.isascii():
            raise ConfigError(f"merchant {mchid}: APIV3KEY must be exactly 32 ASCII characters")
        if mchid in merchants:
            raise ConfigError(f"merchant {mchid} is configured twice")
        merchants[mchid] = Merchant(mchid, secret, key)
    return merchants


def parse_institutions(text: str) -> dict[str, Institution]:
    """``PAYMENT_PEER_INSURANCE``: ``[{"paasid", "secret"}]``."""
    institutions: dict[str, Institution] = {}
    for item in _json_list("PAYMENT_PEER_INSURANCE", text):
        paasid, secret = item.get("paasid"), item.get("secret")
        if not isinstance(paasid, str) or not paasid or not isinstance(secret, str) or not secret:
            raise ConfigError("each insurance institution needs a non-empty paasid and secret")
        if paasid in institutions:
            raise ConfigError(f"institution {paasid} is configured twice")
        institutions[paasid] = Institution(paasid, secret)
    return institutions


# -- faults --------------------------------------------------------------------------


@dataclass
class Faults:
    duplicate_notifications: int = 0
    hold_notifications: bool = False
    suppress_notifications: int = 0
    bad_signature: int = 0
    wrong_key: int = 0
    stale_timestamp: int = 0
    amount_delta: int = 0
    amount_delta_count: int = 0
    notify_delay_ms: float = 0.0
    refund_delay_ms: float = 0.0
    error_rate: float = 0.0
    seed: int | None = None
    latency_ms: float = 0.0
    bill_missing: frozenset[str] = frozenset()
    bill_amount_delta: dict[str, int] = field(default_factory=dict)
    bill_extra_rows: int = 0
    rng: random.Random = field(default_factory=random.SystemRandom, repr=False)

    COUNTS = (
        "duplicate_notifications",
        "suppress_notifications",
        "bad_signature",
        "wrong_key",
        "stale_timestamp",
        "amount_delta_count",
        "bill_extra_rows",
    )

    @classmethod
    def parse(cls, data: Any) -> Faults:
        if not isinstance(data, dict):
            raise ValueError("the faults must be a JSON object")
        known = {f.name for f in dataclasses.fields(cls)} - {"rng"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown fault(s): {', '.join(unknown)}")
        faults = cls()
        for name in cls.COUNTS:
            setattr(faults, name, _count(data, name))
        faults.amount_delta = _integer(data, "amount_delta")
        if faults.amount_delta and "amount_delta_count" not in data:
            faults.amount_delta_count = 1
        hold = data.get("hold_notifications", False)
        if not isinstance(hold, bool):
            raise ValueError("hold_notifications must be true or false")
        faults.hold_notifications = hold
        faults.notify_delay_ms = _number(data, "notify_delay_ms", 0.0, 86_400_000.0)
        faults.refund_delay_ms = _number(data, "refund_delay_ms", 0.0, 86_400_000.0)
        faults.latency_ms = _number(data, "latency_ms", 0.0, 600_000.0)
        faults.error_rate = _number(data, "error_rate", 0.0, 1.0)
        seed = data.get("seed")
        if seed is not None:
            if not isinstance(seed, int) or isinstance(seed, bool):
                raise ValueError("seed must be an integer")
            faults.seed = seed
            faults.rng = random.Random(seed)  # noqa: S311 - fault injection, not a secret
        missing = data.get("bill_missing", [])
        if not isinstance(missing, list) or not all(isinstance(x, str) for x in missing):
            raise ValueError("bill_missing must be a list of out_trade_no")
        faults.bill_missing = frozenset(missing)
        deltas = data.get("bill_amount_delta", {})
        if not isinstance(deltas, dict) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in deltas.values()
        ):
            raise ValueError("bill_amount_delta must map out_trade_no to an integer of fen")
        faults.bill_amount_delta = dict(deltas)
        return faults

    def describe(self) -> dict[str, Any]:
        return {
            "duplicate_notifications": self.duplicate_notifications,
            "hold_notifications": self.hold_notifications,
            "suppress_notifications": self.suppress_notifications,
            "bad_signature": self.bad_signature,
            "wrong_key": self.wrong_key,
            "stale_timestamp": self.stale_timestamp,
            "amount_delta": self.amount_delta,
            "amount_delta_count": self.amount_delta_count,
            "notify_delay_ms": self.notify_delay_ms,
            "refund_delay_ms": self.refund_delay_ms,
            "error_rate": self.error_rate,
            "seed": self.seed,
            "latency_ms": self.latency_ms,
            "bill_missing": sorted(self.bill_missing),
            "bill_amount_delta": self.bill_amount_delta,
            "bill_extra_rows": self.bill_extra_rows,
        }


def _integer(data: Mapping[str, Any], key: str) -> int:
    value = data.get(key, 0)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{key} must be an integer")
    return int(value)


def _count(data: Mapping[str, Any], key: str) -> int:
    value = _integer(data, key)
    if value < 0:
        raise ValueError(f"{key} must not be negative")
    return value


def _number(data: Mapping[str, Any], key: str, low: float, high: float) -> float:
    value = data.get(key, 0)
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{key} must be a number")
    number = float(value)
    if not math.isfinite(number) or not low <= number <= high:
        raise ValueError(f"{key} must be between {low:g} and {high:g}")
    return number


# -- HTTP plumbing -------------------------------------------------------------------


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json; charset=utf-8"
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


def _dumps(data: Any) -> bytes:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()


def json_response(status: int, data: Any) -> Response:
    return Response(status, _dumps(data))


def problem(status: int, code: str, message: str) -> Response:
    return json_response(status, {"code": code, "message": message})


def html_response(status: int, body: bytes) -> Response:
    return Response(
        status,
        body,
        content_type="text/html; charset=utf-8",
        headers=[
            (b"content-security-policy", pages.CONTENT_SECURITY_POLICY),
            (b"x-content-type-options", b"nosniff"),
        ],
    )


def _headers(scope: Scope) -> dict[str, str]:
    return {
        bytes(name).decode("latin-1").lower(): bytes(value).decode("latin-1")
        for name, value in scope.get("headers", [])
    }


def _query(scope: Scope) -> dict[str, str]:
    text = bytes(scope.get("query_string", b"")).decode("latin-1")
    return {key: values[-1] for key, values in parse_qs(text, keep_blank_values=True).items()}


def _signed_path(scope: Scope) -> str:
    """The path as the merchant signed it: the raw request target, query included."""
    raw = scope.get("raw_path")
    path = raw.decode("latin-1") if isinstance(raw, bytes) and raw else quote(str(scope["path"]))
    query = bytes(scope.get("query_string", b"")).decode("latin-1")
    return f"{path}?{query}" if query else path


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
            return problem(413, "INVALID_REQUEST", f"the body exceeds {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


@dataclass(frozen=True)
class MerchantRequest:
    scope: Scope
    param: str
    query: dict[str, str]
    body: bytes


MerchantHandler = Callable[[Merchant, MerchantRequest], Response]


# -- request fields ------------------------------------------------------------------


def _invalid(message: str) -> Refusal:
    return Refusal(400, "INVALID_REQUEST", message)


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except ValueError:
        raise _invalid("the body is not JSON") from None
    if not isinstance(data, dict):
        raise _invalid("the body must be a JSON object")
    return data


def _text(
    data: Mapping[str, Any],
    key: str,
    *,
    max_length: int = 256,
    pattern: re.Pattern[str] | None = None,
    required: bool = True,
) -> str:
    value = data.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or not value:
        raise _invalid(f"{key} must be a non-empty string")
    if len(value) > max_length:
        raise _invalid(f"{key} must be at most {max_length} characters")
    if pattern is not None and not pattern.fullmatch(value):
        raise _invalid(f"{key} has characters or a length not allowed")
    return value


def _url(data: Mapping[str, Any], key: str, *, required: bool = True) -> str:
    value = _text(data, key, required=required)
    if value:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise _invalid(f"{key} must be an http(s) URL")
    return value


def _fen(data: Mapping[str, Any], key: str) -> int:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise _invalid(f"amount.{key} must be a positive integer of fen")
    return value


def _amount(data: Mapping[str, Any]) -> dict[str, Any]:
    amount = data.get("amount")
    if not isinstance(amount, dict):
        raise _invalid("amount must be an object")
    if amount.get("currency", "CNY") != "CNY":
        raise _invalid("amount.currency must be CNY")
    return amount


# -- the peer ------------------------------------------------------------------------


class PaymentPeer:
    """One gateway and insurance platform: configuration, store, key, faults."""

    def __init__(self, config: PeerConfig, store: Store | None = None) -> None:
        self.config = config
        try:
            self.key = GatewayKey.load_or_create(config.gateway_key_path)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"gateway key {config.gateway_key_path}: {exc}") from exc
        self.other_key = GatewayKey.generate(serial_no=self.key.serial_no)
        self.store = store or Store(config.db_path)
        self.faults = Faults()
        self.coverage = insurance.Coverage()
        self.retry_delays = [seconds * config.retry_scale for seconds in RETRY_SCHEDULE]
        self.notifier = Notifier(self)
        self._fault_lock = threading.Lock()

    # -- ASGI ------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope.get("type")
        if kind == "lifespan":
            await self._lifespan(receive, send)
            return
        if kind != "http":
            if kind == "websocket":
                await receive()
                await send({"type": "websocket.close", "code": 1000})
            return
        self.notifier.ensure_started()
        body = await _read_body(receive)
        if body is None:
            return  # the client went away
        if isinstance(body, Response):
            response = body
        else:
            try:
                response = await self.dispatch(scope, body)
            except Exception:
                traceback.print_exc(file=sys.stderr)
                response = problem(500, "SYSTEM_ERROR", "internal error")
        await self._send_response(send, response)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.notifier.ensure_started()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.notifier.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _send_response(self, send: Send, response: Response) -> None:
        headers = [
            *(
                (name.lower().encode(), value.encode())
                for name, value in self.signature_headers(response.body).items()
            ),
            (b"request-id", str(uuid.uuid4()).encode()),
            (b"cache-control", b"no-store"),
            *response.headers,
        ]
        if response.status != 204:
            headers += [
                (b"content-type", response.content_type.encode()),
                (b"content-length", str(len(response.body)).encode()),
            ]
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        await send({"type": "http.response.body", "body": response.body})

    async def dispatch(self, scope: Scope, body: bytes) -> Response:
        method = str(scope.get("method", "GET")).upper()
        path = str(scope.get("path", "/"))
        if path.startswith("/v3/") and path != "/v3/certificates":
            return await self.merchant_api(scope, method, path, body)
        if path in ADMIN_PATHS:
            return await self.admin(scope, method, path, body)
        if path == "/fsi/api/callService":
            if method != "POST":
                return problem(405, "METHOD_NOT_ALLOWED", "POST /fsi/api/callService")
            return self.insurance_call(scope, body)
        match = PAY_PATH.fullmatch(path)
        if match:
            if method not in ("GET", "POST"):
                return problem(405, "METHOD_NOT_ALLOWED", "GET or POST /pay/{prepay_id}")
            return self.pay_page(scope, method, match.group(1))
        reads: dict[str, Callable[[], Response]] = {
            "/v3/certificates": self.certificates,
            "/api/transactions": self.list_transactions,
            "/api/refunds": self.list_refunds,
            "/api/settlements": self.list_settlements,
            "/api/notifications": self.list_notifications,
            "/api/stats": lambda: json_response(200, self.stats()),
            "/healthz": lambda: json_response(200, {"status": "ok"}),
            "/": self.index,
        }
        handler = reads.get(path)
        if handler is None:
            return problem(404, "NOT_FOUND", f"no such resource: {path}")
        if method != "GET":
            return problem(405, "METHOD_NOT_ALLOWED", f"only GET {path}")
        return handler()

    # -- section 4: the gateway's signature ------------------------------------------

    def signature_headers(self, body: bytes, *, delivery: bool = False) -> dict[str, str]:
        """``Pay-Timestamp``, ``Pay-Nonce``, ``Pay-Serial``, ``Pay-Signature`` over
        ``body``. For a notification delivery the signature faults are spent here."""
        key, timestamp, flip = self.key, int(time.time()), False
        if delivery:
            with self._fault_lock:
                faults = self.faults
                if faults.stale_timestamp > 0:
                    faults.stale_timestamp -= 1
                    timestamp -= 600
                if faults.wrong_key > 0:
                    faults.wrong_key -= 1
                    key = self.other_key
                if faults.bad_signature > 0:
                    faults.bad_signature -= 1
                    flip = True
        nonce = random_text(32)
        signature = bytearray(key.sign(str(timestamp), nonce, body))
        if flip:
            signature[len(signature) // 2] ^= 0xFF
        return {
            "Pay-Timestamp": str(timestamp),
            "Pay-Nonce": nonce,
            "Pay-Serial": key.serial_no,
            "Pay-Signature": base64.b64encode(bytes(signature)).decode(),
        }

    def certificates(self) -> Response:
        return json_response(
            200,
            {
                "data": [
                    {"serial_no": self.key.serial_no, "public_key_pem": self.key.public_key_pem}
                ]
            },
        )

    # -- section 2: the merchant API -------------------------------------------------

    def _merchant_route(self, path: str) -> tuple[dict[str, MerchantHandler], str] | None:
        if path == "/v3/pay/transactions/app":
            return {"POST": self.prepay}, ""
        if match := CLOSE_PATH.fullmatch(path):
            return {"POST": self.close}, match.group(1)
        if match := TRADE_PATH.fullmatch(path):
            return {"GET": self.query}, match.group(1)
        if path == "/v3/refund/domestic/refunds":
            return {"POST": self.create_refund}, ""
        if match := REFUND_PATH.fullmatch(path):
            return {"GET": self.query_refund}, match.group(1)
        if path == "/v3/bill/tradebill":
            return {"GET": self.bill}, ""
        return None

    async def merchant_api(self, scope: Scope, method: str, path: str, body: bytes) -> Response:
        faults = self.faults
        if faults.latency_ms > 0:
            await asyncio.sleep(faults.latency_ms / 1000)
        route = self._merchant_route(path)
        if route is None:
            return problem(404, "NOT_FOUND", f"no such resource: {path}")
        handlers, param = route
        handler = handlers.get(method)
        if handler is None:
            return problem(405, "METHOD_NOT_ALLOWED", f"{method} is not allowed here")
        if faults.error_rate > 0 and faults.rng.random() < faults.error_rate:
            self.store.bump("injected_5xx")
            return problem(500, "SYSTEM_ERROR", "系统错误，请稍后重试 (injected)")
        try:
            merchant = self.authenticate_merchant(scope, method, body)
            return handler(merchant, MerchantRequest(scope, param, _query(scope), body))
        except Refusal as refusal:
            return problem(refusal.status, refusal.code, refusal.message)

    def authenticate_merchant(self, scope: Scope, method: str, body: bytes) -> Merchant:
        def refuse(message: str) -> Refusal:
            self.store.bump("sign_error")
            return Refusal(401, "SIGN_ERROR", message)

        header = _headers(scope).get("authorization", "")
        scheme, _, params = header.strip().partition(" ")
        if scheme != "PAY-HMAC-SHA256":
            raise refuse(
                "Authorization must be PAY-HMAC-SHA256 mchid,nonce_str,timestamp,signature"
            )
        fields = dict(AUTH_PARAM.findall(params))
        missing = [k for k in ("mchid", "nonce_str", "timestamp", "signature") if not fields.get(k)]
        if missing:
            raise refuse(f"Authorization lacks {', '.join(missing)}")
        merchant = self.config.merchants.get(fields["mchid"])
        if merchant is None:
            raise refuse(f"unknown mchid {fields['mchid'][:64]!r}")
        timestamp, nonce = fields["timestamp"], fields["nonce_str"]
        if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > TIMESTAMP_WINDOW:
            raise refuse(f"the timestamp is more than {TIMESTAMP_WINDOW} s from the gateway clock")
        if len(nonce) > MAX_NONCE_LENGTH:
            raise refuse(f"nonce_str must be at most {MAX_NONCE_LENGTH} characters")
        expected = merchant_signature(
            merchant.signing_secret, method, _signed_path(scope), timestamp, nonce, body
        )
        if not hmac.compare_digest(expected.encode(), fields["signature"].encode()):
            raise refuse("the signature does not match")
        expires = int(timestamp) + TIMESTAMP_WINDOW + 1
        if not self.store.use_nonce(f"merchant:{merchant.mchid}", nonce, expires):
            raise refuse("this nonce_str was already used")
        return merchant

    @staticmethod
    def _check_mchid(merchant: Merchant, value: Any, *, required: bool = True) -> None:
        if value is None and not required:
            return
        if value != merchant.mchid:
            raise _invalid("mchid must be the mchid of the Authorization")

    def _expire(self, transaction: Transaction) -> Transaction:
        """A NOTPAY order past its ``time_expire`` is closed."""
        if (
            transaction.trade_state == "NOTPAY"
            and transaction.expire_epoch is not None
            and time.time() > transaction.expire_epoch
        ):
            return self.store.close_transaction(transaction.seq, rfc3339(time.time()))
        return transaction

    def _base_url(self, scope: Scope) -> str:
        if self.config.public_url:
            return self.config.public_url
        host = _headers(scope).get("host", "")
        if not host:
            server = scope.get("server") or ("127.0.0.1", 80)
            host = f"{server[0]}:{server[1]}"
        return f"{scope.get('scheme', 'http')}://{host}"

    def prepay(self, merchant: Merchant, request: MerchantRequest) -> Response:
        data = _json_object(request.body)
        self._check_mchid(merchant, data.get("mchid"))
        appid = _text(data, "appid", max_length=64)
        description = _text(data, "description", max_length=127)
        out_trade_no = _text(data, "out_trade_no", pattern=OUT_TRADE_NO)
        notify_url = _url(data, "notify_url")
        total = _fen(_amount(data), "total")
        attach = _text(data, "attach", max_length=128, required=False)
        time_expire = data.get("time_expire")
        expire_epoch: float | None = None
        if time_expire is not None:
            if not isinstance(time_expire, str):
                raise _invalid("time_expire must be an RFC 3339 time")
            try:
                expires = dt.datetime.fromisoformat(time_expire)
            except ValueError:
                raise _invalid("time_expire must be an RFC 3339 time") from None
            if expires.tzinfo is None:
                raise _invalid("time_expire must carry an offset")
            expire_epoch = expires.timestamp()
        now = time.time()
        transaction, created = self.store.create_transaction(
            mchid=merchant.mchid,
            out_trade_no=out_trade_no,
            appid=appid,
            description=description,
            notify_url=notify_url,
            total=total,
            attach=attach,
            time_expire=time_expire,
            expire_epoch=expire_epoch,
            prepay_id=f"wx{local_time(now):%d%H%M%S}{random_text(26).lower()}",
            transaction_id=None,
            trade_state="NOTPAY",
            created_at=rfc3339(now),
        )
        if not created:
            transaction = self._expire(transaction)
            if transaction.trade_state in ("SUCCESS", "REFUND"):
                raise Refusal(400, "ORDERPAID", "该订单已支付 · the order is already paid")
            if transaction.trade_state == "CLOSED":
                raise Refusal(400, "ORDER_CLOSED", "该订单已关闭 · the order is closed")
            if transaction.total != total:
                raise _invalid(
                    f"out_trade_no {out_trade_no} exists with another amount "
                    f"({transaction.total} fen)"
                )
        pay_url = f"{self._base_url(request.scope)}/pay/{transaction.prepay_id}"
        return json_response(200, {"prepay_id": transaction.prepay_id, "pay_url": pay_url})

    def _transaction(self, merchant: Merchant, out_trade_no: str) -> Transaction:
        transaction = self.store.transaction(merchant.mchid, out_trade_no)
        if transaction is None:
            raise Refusal(404, "ORDER_NOT_EXIST", f"订单不存在 · no order {out_trade_no[:64]}")
        return self._expire(transaction)

    def query(self, merchant: Merchant, request: MerchantRequest) -> Response:
        self._check_mchid(merchant, request.query.get("mchid"), required=False)
        transaction = self._transaction(merchant, request.param)
        return json_response(200, transaction_json(transaction))

    def close(self, merchant: Merchant, request: MerchantRequest) -> Response:
        data = _json_object(request.body)
        self._check_mchid(merchant, data.get("mchid"))
        transaction = self._transaction(merchant, request.param)
        if transaction.trade_state in ("SUCCESS", "REFUND"):
            raise Refusal(400, "ORDERPAID", "该订单已支付，不能关闭 · the order is paid")
        self.store.close_transaction(transaction.seq, rfc3339(time.time()))
        return Response(204)

    def create_refund(self, merchant: Merchant, request: MerchantRequest) -> Response:
        data = _json_object(request.body)
        self._check_mchid(merchant, data.get("mchid"), required=False)
        out_trade_no = _text(data, "out_trade_no", pattern=OUT_TRADE_NO)
        out_refund_no = _text(data, "out_refund_no", pattern=OUT_REFUND_NO)
        reason = _text(data, "reason", max_length=80, required=False)
        notify_url = _url(data, "notify_url", required=False)
        amount = _amount(data)
        refund_fen, total = _fen(amount, "refund"), _fen(amount, "total")

        def same(existing: Refund) -> Response:
            if existing.out_trade_no != out_trade_no or existing.refund != refund_fen:
                raise _invalid(f"out_refund_no {out_refund_no} was used for another refund")
            return json_response(200, refund_json(existing))

        existing = self.store.refund(merchant.mchid, out_refund_no)
        if existing is not None:
            return same(existing)
        transaction = self._transaction(merchant, out_trade_no)
        if transaction.trade_state not in ("SUCCESS", "REFUND"):
            raise Refusal(400, "TRADE_NOT_PAID", "订单未支付 · the order is not paid")
        if total != transaction.total:
            raise _invalid(f"amount.total must be the paid total ({transaction.total} fen)")
        now = time.time()
        refund, created = self.store.create_refund(
            mchid=merchant.mchid,
            out_refund_no=out_refund_no,
            out_trade_no=out_trade_no,
            transaction_id=transaction.transaction_id or "",
            refund_id=f"50{random_digits(6)}{local_time(now):%Y%m%d}{random_digits(13)}",
            reason=reason,
            notify_url=notify_url or transaction.notify_url,
            refund=refund_fen,
            total=total,
            status="PROCESSING",
            create_time=rfc3339(now),
            due_at=now + self.faults.refund_delay_ms / 1000,
            success_time=None,
            success_epoch=None,
        )
        if refund is None:
            raise Refusal(400, "NOT_ENOUGH", "可退款余额不足 · refunds would exceed the total")
        if not created:
            return same(refund)
        self.notifier.wake()
        return json_response(200, refund_json(refund))

    def query_refund(self, merchant: Merchant, request: MerchantRequest) -> Response:
        refund = self.store.refund(merchant.mchid, request.param)
        if refund is None:
            raise Refusal(
                404, "RESOURCE_NOT_EXISTS", f"退款单不存在 · no refund {request.param[:64]}"
            )
        return json_response(200, refund_json(refund))

    def bill(self, merchant: Merchant, request: MerchantRequest) -> Response:
        day = request.query.get("bill_date", "")
        try:
            if not BILL_DATE.fullmatch(day):
                raise ValueError(day)
            date = dt.date.fromisoformat(day)
        except ValueError:
            raise _invalid("bill_date must be YYYY-MM-DD") from None
        rows = self.store.bill_rows(merchant.mchid, day)
        faults = self.faults
        rows = [row for row in rows if row.out_trade_no not in faults.bill_missing]
        rows = [
            dataclasses.replace(row, amount=row.amount + faults.bill_amount_delta[row.out_trade_no])
            if row.out_trade_no in faults.bill_amount_delta
            else row
            for row in rows
        ]
        for index in range(faults.bill_extra_rows):
            rows.append(
                BillRow(
                    epoch=math.inf,
                    trade_time=f"{day}T23:59:{min(index, 59):02d}+08:00",
                    out_trade_no=f"EXTRA{date:%Y%m%d}{index + 1:04d}",
                    transaction_id=f"4200009999{date:%Y%m%d}{index + 1:010d}",
                    type="PAY",
                    amount=100 * (index + 1),
                    out_refund_no="",
                    refund_id="",
                )
            )
        rows.sort(key=lambda row: (row.trade_time, row.epoch))  # one offset: text order is time
        lines = [BILL_HEADER]
        lines += [
            ",".join(
                (
                    row.trade_time,
                    row.out_trade_no,
                    row.transaction_id,
                    row.type,
                    str(row.amount),
                    row.out_refund_no,
                    row.refund_id,
                )
            )
            for row in rows
        ]
        return Response(
            200, ("\n".join(lines) + "\n").encode(), content_type="text/csv; charset=utf-8"
        )

    # -- section 3: notifications ----------------------------------------------------

    def new_notification(
        self,
        *,
        mchid: str,
        event_type: str,
        out_trade_no: str,
        out_refund_no: str,
        notify_url: str,
        plaintext: dict[str, Any],
    ) -> NewNotification | None:
        """Build a notification (its body encrypted and fixed now), spending the
        notification faults: suppress, hold, delay, amount delta, duplicates."""
        merchant = self.config.merchants.get(mchid)
        if merchant is None:
            return None  # a merchant no longer configured: nobody to notify
        now = time.time()
        with self._fault_lock:
            faults = self.faults
            if faults.amount_delta and faults.amount_delta_count > 0:
                faults.amount_delta_count -= 1
                plaintext["amount"]["total"] += faults.amount_delta
            status = PENDING
            next_at: float | None = now + faults.notify_delay_ms / 1000
            if faults.suppress_notifications > 0:
                faults.suppress_notifications -= 1
                status, next_at = SUPPRESSED, None
            elif faults.hold_notifications:
                status, next_at = HELD, None
            duplicates = faults.duplicate_notifications
        kind = "transaction" if event_type == TRANSACTION_SUCCESS else "refund"
        identifier = str(uuid.uuid4())
        body = {
            "id": identifier,
            "create_time": rfc3339(now),
            "event_type": event_type,
            "resource_type": "encrypt-resource",
            "summary": "支付成功" if kind == "transaction" else "退款成功",
            "resource": encrypt_resource(merchant.apiv3_key, _dumps(plaintext), kind),
        }
        return NewNotification(
            id=identifier,
            mchid=mchid,
            event_type=event_type,
            out_trade_no=out_trade_no,
            out_refund_no=out_refund_no,
            notify_url=notify_url,
            body=_dumps(body).decode(),
            status=status,
            next_attempt_at=next_at,
            duplicates_left=duplicates,
            created_at=rfc3339(now),
        )

    async def deliver(self, note: Notification, client: httpx.AsyncClient) -> None:
        """POST the notification once and record the outcome (200/204 is success)."""
        body = note.body.encode()
        headers = {
            "Content-Type": "application/json",
            **self.signature_headers(body, delivery=True),
        }
        ok = False
        try:
            response = await client.post(note.notify_url, content=body, headers=headers)
        except httpx.TimeoutException:
            outcome = "timeout"
        except httpx.ConnectError:
            outcome = "connect error"
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            outcome = f"error: {type(exc).__name__}"
        else:
            outcome = str(response.status_code)
            ok = response.status_code in (200, 204)
        self.store.record_attempt(
            note.seq, ok=ok, outcome=outcome, now=time.time(), delays=self.retry_delays
        )

    def complete_due_refunds(self, now: float) -> None:
        for refund in self.store.due_refunds(now):
            done = time.time()
            plaintext = {
                "mchid": refund.mchid,
                "out_trade_no": refund.out_trade_no,
                "transaction_id": refund.transaction_id,
                "out_refund_no": refund.out_refund_no,
                "refund_id": refund.refund_id,
                "refund_status": "SUCCESS",
                "success_time": rfc3339(done),
                "amount": {
                    "total": refund.total,
                    "refund": refund.refund,
                    "payer_total": refund.total,
                    "payer_refund": refund.refund,
                },
            }
            note = self.new_notification(
                mchid=refund.mchid,
                event_type=REFUND_SUCCESS,
                out_trade_no=refund.out_trade_no,
                out_refund_no=refund.out_refund_no,
                notify_url=refund.notify_url,
                plaintext=plaintext,
            )
            self.store.complete_refund(
                refund.seq,
                success_time=str(plaintext["success_time"]),
                success_epoch=done,
                notification=note,
            )

    # -- section 5: the pay page -----------------------------------------------------

    def pay_page(self, scope: Scope, method: str, prepay_id: str) -> Response:
        wants_json = "application/json" in _headers(scope).get("accept", "")
        transaction = self.store.transaction_by_prepay(prepay_id)
        if transaction is None:
            if wants_json:
                return problem(404, "ORDER_NOT_EXIST", "no such prepay_id")
            return html_response(404, pages.not_found_page())
        transaction = self._expire(transaction)
        if method == "POST":
            if transaction.trade_state == "CLOSED":
                if wants_json:
                    return problem(409, "ORDER_CLOSED", "该订单已关闭 · the order is closed")
                return html_response(409, pages.closed_page(transaction))
            if transaction.trade_state == "NOTPAY":
                transaction = self.pay(transaction)
            if wants_json:
                return json_response(
                    200,
                    {
                        "transaction_id": transaction.transaction_id,
                        "trade_state": transaction.trade_state,
                    },
                )
            return html_response(200, pages.paid_page(transaction))
        if transaction.trade_state == "NOTPAY":
            return html_response(200, pages.pay_page(transaction))
        if transaction.trade_state == "CLOSED":
            return html_response(200, pages.closed_page(transaction))
        return html_response(200, pages.paid_page(transaction))

    def pay(self, transaction: Transaction) -> Transaction:
        now = time.time()
        paid = dataclasses.replace(
            transaction,
            transaction_id=f"4200{random_digits(6)}{local_time(now):%Y%m%d}{random_digits(10)}",
            trade_state="SUCCESS",
            success_time=rfc3339(now),
            success_epoch=now,
        )
        note = self.new_notification(
            mchid=paid.mchid,
            event_type=TRANSACTION_SUCCESS,
            out_trade_no=paid.out_trade_no,
            out_refund_no="",
            notify_url=paid.notify_url,
            plaintext=transaction_json(paid),
        )
        row, done = self.store.pay(
            transaction.seq,
            transaction_id=str(paid.transaction_id),
            success_time=str(paid.success_time),
            success_epoch=now,
            notification=note,
        )
        if done:
            self.notifier.wake()
        return row

    # -- section 6: the insurance platform -------------------------------------------

    def authenticate_institution(self, scope: Scope) -> Institution:
        def refuse(message: str) -> Refusal:
            self.store.bump("sign_error")
            return Refusal(401, "SIGN_ERROR", message)

        headers = _headers(scope)
        institution = self.config.institutions.get(headers.get("x-tif-paasid", ""))
        if institution is None:
            raise refuse("unknown x-tif-paasid")
        timestamp = headers.get("x-tif-timestamp", "")
        nonce = headers.get("x-tif-nonce", "")
        if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > TIMESTAMP_WINDOW:
            raise refuse(f"x-tif-timestamp is more than {TIMESTAMP_WINDOW} s from the platform")
        if not nonce or len(nonce) > MAX_NONCE_LENGTH:
            raise refuse(f"x-tif-nonce must be 1 to {MAX_NONCE_LENGTH} characters")
        expected = insurance_signature(institution.secret, timestamp, nonce)
        given = headers.get("x-tif-signature", "").lower()
        if not hmac.compare_digest(expected.encode(), given.encode()):
            raise refuse("x-tif-signature does not match")
        expires = int(timestamp) + TIMESTAMP_WINDOW + 1
        if not self.store.use_nonce(f"insurance:{institution.paasid}", nonce, expires):
            raise refuse("x-tif-nonce was already used")
        return institution

    def insurance_call(self, scope: Scope, body: bytes) -> Response:
        try:
            institution = self.authenticate_institution(scope)
        except Refusal as refusal:
            return problem(refusal.status, refusal.code, refusal.message)
        received = time.time()
        try:
            message = json.loads(body, parse_float=Decimal)
        except ValueError:
            return problem(400, "INVALID_REQUEST", "the body is not JSON")
        if not isinstance(message, dict):
            return problem(400, "INVALID_REQUEST", "the body must be a JSON object")
        infcode, err_msg, output = 0, "", {}
        try:
            output = insurance.handle(
                self.store, self.coverage, institution.paasid, message, received
            )
        except insurance.InsuranceRefusal as refusal:
            infcode, err_msg = -1, str(refusal)
        self.store.bump(f"insurance:{message.get('infno')}:{'ok' if infcode == 0 else 'refused'}")
        answer = insurance.answer(
            infcode=infcode, err_msg=err_msg, output=output, received=received, now=time.time()
        )
        return Response(200, answer)

    # -- section 7: faults and test API ----------------------------------------------

    async def admin(self, scope: Scope, method: str, path: str, body: bytes) -> Response:
        token = self.config.admin_token
        if token and not hmac.compare_digest(
            _headers(scope).get("x-admin-token", "").encode(), token.encode()
        ):
            return problem(401, "UNAUTHORIZED", "X-Admin-Token is missing or wrong")
        if path in ("/_reset", "/_flush") and method != "POST":
            return problem(405, "METHOD_NOT_ALLOWED", f"POST {path}")
        if path == "/_reset":
            self.store.reset()
            self.coverage = insurance.Coverage()
            return json_response(200, {"status": "reset"})
        if path == "/_flush":
            return json_response(200, {"flushed": await self.notifier.flush()})
        if method not in ("GET", "POST"):
            return problem(405, "METHOD_NOT_ALLOWED", f"GET or POST {path}")
        if path == "/_coverage":
            if method == "POST":
                try:
                    data = json.loads(body, parse_float=Decimal) if body.strip() else {}
                    self.coverage = self.coverage.updated(data)
                except ValueError as exc:
                    return problem(400, "INVALID_REQUEST", str(exc))
            return json_response(200, self.coverage.describe())
        if method == "POST":
            try:
                data = json.loads(body) if body.strip() else {}
                faults = Faults.parse(data)
            except ValueError as exc:
                return problem(400, "INVALID_REQUEST", str(exc))
            with self._fault_lock:
                self.faults = faults
        return json_response(200, self.faults.describe())

    def list_transactions(self) -> Response:
        rows = reversed(self.store.latest_transactions(LISTING_LIMIT))
        return json_response(200, {"results": [transaction_listing(t) for t in rows]})

    def list_refunds(self) -> Response:
        rows = reversed(self.store.latest_refunds(LISTING_LIMIT))
        return json_response(200, {"results": [refund_listing(r) for r in rows]})

    def list_settlements(self) -> Response:
        rows = reversed(self.store.latest_settlements(LISTING_LIMIT))
        results = [insurance.settlement_listing(s) for s in rows]
        return Response(200, insurance.dumps({"results": results}).encode())

    def list_notifications(self) -> Response:
        rows = reversed(self.store.latest_notifications(LISTING_LIMIT))
        return json_response(200, {"results": [notification_listing(n) for n in rows]})

    def stats(self) -> dict[str, Any]:
        counters = self.store.counters()
        return {
            "transactions": self.store.count_by("transactions", "trade_state"),
            "refunds": self.store.count_by("refunds", "status"),
            "notifications": self.store.count_by("notifications", "status"),
            "settlements": sum(self.store.count_by("settlements", "paasid").values()),
            "insurance_calls": {
                name.split(":", 1)[1]: value
                for name, value in counters.items()
                if name.startswith("insurance:")
            },
            "sign_errors": counters.get("sign_error", 0),
            "injected_5xx": counters.get("injected_5xx", 0),
            "faults": self.faults.describe(),
            "coverage": self.coverage.describe(),
            "gateway_key_serial": self.key.serial_no,
        }

    def index(self) -> Response:
        stats = self.stats()
        summary = (
            f"交易 Transactions: {stats['transactions']} · 退款 Refunds: {stats['refunds']} · "
            f"通知 Notifications: {stats['notifications']} · 医保结算 Settlements: "
            f"{stats['settlements']} · 密钥 Key serial: {self.key.serial_no}"
        )
        return html_response(200, pages.index_page(self.store.latest_transactions(100), summary))


# -- wire representations ------------------------------------------------------------


def transaction_json(t: Transaction) -> dict[str, Any]:
    """The **transaction** of PROTOCOL section 2 (also the TRANSACTION.SUCCESS plaintext)."""
    data: dict[str, Any] = {"mchid": t.mchid, "appid": t.appid, "out_trade_no": t.out_trade_no}
    if t.transaction_id:
        data["transaction_id"] = t.transaction_id
    data["trade_state"] = t.trade_state
    data["trade_state_desc"] = TRADE_STATE_DESC.get(t.trade_state, t.trade_state)
    if t.success_time:
        data["success_time"] = t.success_time
    data["amount"] = {
        "total": t.total,
        "payer_total": t.total,
        "currency": "CNY",
        "payer_currency": "CNY",
    }
    data["attach"] = t.attach
    return data


def refund_json(r: Refund) -> dict[str, Any]:
    """The **refund** of PROTOCOL section 2."""
    data: dict[str, Any] = {
        "refund_id": r.refund_id,
        "out_refund_no": r.out_refund_no,
        "out_trade_no": r.out_trade_no,
        "transaction_id": r.transaction_id,
        "status": r.status,
        "create_time": r.create_time,
    }
    if r.success_time:
        data["success_time"] = r.success_time
    data["amount"] = {
        "total": r.total,
        "refund": r.refund,
        "payer_total": r.total,
        "payer_refund": r.refund,
        "currency": "CNY",
    }
    return data


def transaction_listing(t: Transaction) -> dict[str, Any]:
    return {
        **transaction_json(t),
        "description": t.description,
        "prepay_id": t.prepay_id,
        "notify_url": t.notify_url,
        "time_expire": t.time_expire,
        "created_at": t.created_at,
        "closed_at": t.closed_at,
    }


def refund_listing(r: Refund) -> dict[str, Any]:
    return {**refund_json(r), "mchid": r.mchid, "reason": r.reason, "notify_url": r.notify_url}


def notification_listing(n: Notification) -> dict[str, Any]:
    last: int | str | None = n.last_status or None
    if isinstance(last, str) and last.isdigit():
        last = int(last)
    return {
        "id": n.id,
        "event_type": n.event_type,
        "out_trade_no": n.out_trade_no,
        "out_refund_no": n.out_refund_no or None,
        "attempts": n.attempts,
        "last_status": last,
        "delivered": n.status == DELIVERED,
        "deliveries": n.deliveries,
        "status": n.status,
        "notify_url": n.notify_url,
        "created_at": n.created_at,
    }


class LazyApplication:
    """``application``: builds the peer from the environment on first use, so importing
    this module has no side effects and ``python -m peers.payment`` can set the
    environment first (and call :meth:`setup` to fail fast on a bad configuration)."""

    def __init__(self) -> None:
        self._peer: PaymentPeer | None = None
        self._lock = threading.Lock()

    def setup(self) -> PaymentPeer:
        peer = self._peer
        if peer is None:
            with self._lock:
                if self._peer is None:
                    self._peer = PaymentPeer(PeerConfig.from_env())
                peer = self._peer
        return peer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.setup()(scope, receive, send)


application = LazyApplication()
