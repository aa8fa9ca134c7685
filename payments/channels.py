"""The payment channels behind one interface: how we talk to a mobile-payment gateway
and to the medical-insurance platform. Wire formats: ``peers/payment/PROTOCOL.md``.

- ``Gateway`` (WeChat Pay API v3 style, which Alipay's v3 mirrors): our requests carry an
  HMAC ``Authorization``; every answer and every notification is signed by the gateway's
  ECDSA P-256 key, which we pinned at onboarding, over ``timestamp\\nnonce\\nbody\\n``;
  notification resources are AES-256-GCM encrypted with our API v3 key.
- ``Insurance`` (national platform, 2207 settle / 2208 reverse): yuan with two decimals
  on the wire, fen here.

Nothing here touches the database: the services pass what the connections hold and
decide what an answer means. Network errors surface as ``ChannelError``.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import json
import secrets
import threading
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import httpx
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

SHANGHAI = ZoneInfo("Asia/Shanghai")
#: How far a signed timestamp may be from our clock.
TIMESTAMP_WINDOW_SECONDS = 300

_local = threading.local()


def http_client() -> httpx.Client:
    """One pooled client per thread."""
    client: httpx.Client | None = getattr(_local, "client", None)
    if client is None:
        client = httpx.Client(
            limits=httpx.Limits(max_keepalive_connections=10, max_connections=20),
            headers={"User-Agent": "internet-hospital-payments/1"},
        )
        _local.client = client
    return client


class ChannelError(Exception):
    """The channel could not be reached or answered something we cannot use. ``code``
    is the channel's own code where it gave one; ``retryable`` says whether trying again
    later can help."""

    def __init__(self, message: str, *, code: str = "", retryable: bool = True) -> None:
        super().__init__(message)
        self.code = code
        self.retryable = retryable


class BadSignature(Exception):
    """A signature, key serial or timestamp that does not verify."""


# --- The gateway's signature ---------------------------------------------------------


def key_serial(public_key: ec.EllipticCurvePublicKey) -> str:
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()[:32]


def load_public_key(pem: str) -> ec.EllipticCurvePublicKey:
    key = serialization.load_pem_public_key(pem.encode())
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise ValueError("the gateway key must be an ECDSA P-256 public key")
    return key


def verify_signed(
    *,
    public_key: ec.EllipticCurvePublicKey,
    headers: dict[str, str],
    body: bytes,
    now: float | None = None,
) -> None:
    """Check the gateway's signature on the raw bytes, before anything is parsed.
    ``headers`` must be lower-cased."""
    timestamp = headers.get("pay-timestamp", "")
    nonce = headers.get("pay-nonce", "")
    serial = headers.get("pay-serial", "")
    signature = headers.get("pay-signature", "")
    if not (timestamp and nonce and serial and signature):
        raise BadSignature("the gateway's signature headers are missing")
    if serial != key_serial(public_key):
        raise BadSignature(f"unknown gateway key serial {serial[:40]!r}")
    try:
        sent = int(timestamp)
    except ValueError as exc:
        raise BadSignature("the timestamp is not a number") from exc
    if abs((now if now is not None else time.time()) - sent) > TIMESTAMP_WINDOW_SECONDS:
        raise BadSignature("the timestamp is outside the 300 s window")
    try:
        der = base64.b64decode(signature, validate=True)
        public_key.verify(
            der,
            timestamp.encode() + b"\n" + nonce.encode() + b"\n" + body + b"\n",
            ec.ECDSA(hashes.SHA256()),
        )
    except (InvalidSignature, binascii.Error, ValueError) as exc:
        raise BadSignature("the signature does not verify") from exc


def decrypt_resource(*, api_v3_key: str, resource: dict[str, Any]) -> dict[str, Any]:
    """Open an ``encrypt-resource`` (AEAD_AES_256_GCM); raises ValueError if it fails."""
    if resource.get("algorithm") != "AEAD_AES_256_GCM":
        raise ValueError(f"unsupported algorithm {resource.get('algorithm')!r}")
    try:
        nonce = str(resource["nonce"]).encode()
        aad = str(resource.get("associated_data") or "").encode()
        ciphertext = base64.b64decode(str(resource["ciphertext"]), validate=True)
        plain = AESGCM(api_v3_key.encode()).decrypt(nonce, ciphertext, aad)
        data = json.loads(plain)
    except (KeyError, InvalidTag, binascii.Error, ValueError) as exc:
        raise ValueError("the resource does not decrypt") from exc
    if not isinstance(data, dict):
        raise ValueError("the resource is not a JSON object")
    return data


# --- Gateway client -------------------------------------------------------------------


@dataclass(frozen=True)
class GatewayConfig:
    base_url: str
    mchid: str
    appid: str
    signing_secret: str
    api_v3_key: str
    public_key_pem: str
    timeout: float = 5.0


@dataclass(frozen=True)
class Prepay:
    prepay_id: str
    pay_url: str


class Gateway:
    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.public_key = load_public_key(config.public_key_pem)

    def _authorization(self, method: str, path: str, body: bytes) -> str:
        timestamp = str(int(time.time()))
        nonce = secrets.token_hex(16)
        message = f"{method}\n{path}\n{timestamp}\n{nonce}\n".encode() + body + b"\n"
        signature = base64.b64encode(
            hmac.new(self.config.signing_secret.encode(), message, hashlib.sha256).digest()
        ).decode()
        return (
            f'PAY-HMAC-SHA256 mchid="{self.config.mchid}",nonce_str="{nonce}",'
            f'timestamp="{timestamp}",signature="{signature}"'
        )

    def request(
        self, method: str, path: str, payload: dict[str, Any] | None = None
    ) -> tuple[int, bytes]:
        """One signed call; the answer's signature is verified before it is returned."""
        body = b"" if payload is None else json.dumps(payload, ensure_ascii=False).encode()
        url = self.config.base_url.rstrip("/") + path
        split = urlsplit(url)
        signed_path = split.path + (f"?{split.query}" if split.query else "")
        headers = {"Authorization": self._authorization(method, signed_path, body)}
        if payload is not None:
            headers["Content-Type"] = "application/json"
        try:
            response = http_client().request(
                method, url, content=body, headers=headers, timeout=self.config.timeout
            )
        except httpx.HTTPError as exc:
            raise ChannelError(f"gateway unreachable: {type(exc).__name__}: {exc}") from exc
        try:
            verify_signed(
                public_key=self.public_key,
                headers={k.lower(): v for k, v in response.headers.items()},
                body=response.content,
            )
        except BadSignature as exc:
            raise ChannelError(f"the gateway's answer is not signed by it: {exc}") from exc
        return response.status_code, response.content

    def _json(self, method: str, path: str, payload: dict[str, Any] | None = None) -> Any:
        status, content = self.request(method, path, payload)
        data = json.loads(content) if content else {}
        if status >= 400:
            code = str(data.get("code", "")) if isinstance(data, dict) else ""
            message = str(data.get("message", "")) if isinstance(data, dict) else ""
            raise ChannelError(
                f"gateway answered {status} {code}: {message}", code=code, retryable=status >= 500
            )
        return data

    def prepay(
        self, *, out_trade_no: str, amount: int, description: str, notify_url: str
    ) -> Prepay:
        data = self._json(
            "POST",
            "/v3/pay/transactions/app",
            {
                "mchid": self.config.mchid,
                "appid": self.config.appid,
                "description": description,
                "out_trade_no": out_trade_no,
                "notify_url": notify_url,
                "amount": {"total": amount, "currency": "CNY"},
            },
        )
        return Prepay(prepay_id=str(data["prepay_id"]), pay_url=str(data.get("pay_url", "")))

    def query(self, *, out_trade_no: str) -> dict[str, Any] | None:
        """The transaction, or None when the gateway does not know it."""
        try:
            data = self._json(
                "GET",
                f"/v3/pay/transactions/out-trade-no/{out_trade_no}?mchid={self.config.mchid}",
            )
        except ChannelError as exc:
            if exc.code == "ORDER_NOT_EXIST":
                return None
            raise
        return dict(data)

    def close(self, *, out_trade_no: str) -> None:
        self._json(
            "POST",
            f"/v3/pay/transactions/out-trade-no/{out_trade_no}/close",
            {"mchid": self.config.mchid},
        )

    def refund(
        self,
        *,
        out_trade_no: str,
        out_refund_no: str,
        amount: int,
        total: int,
        reason: str,
        notify_url: str,
    ) -> dict[str, Any]:
        return dict(
            self._json(
                "POST",
                "/v3/refund/domestic/refunds",
                {
                    "out_trade_no": out_trade_no,
                    "out_refund_no": out_refund_no,
                    "reason": reason,
                    "notify_url": notify_url,
                    "amount": {"refund": amount, "total": total, "currency": "CNY"},
                },
            )
        )

    def refund_query(self, *, out_refund_no: str) -> dict[str, Any]:
        return dict(self._json("GET", f"/v3/refund/domestic/refunds/{out_refund_no}"))

    def bill(self, *, day: dt.date) -> list[dict[str, str]]:
        status, content = self.request("GET", f"/v3/bill/tradebill?bill_date={day.isoformat()}")
        if status != 200:
            raise ChannelError(f"the bill for {day} could not be fetched ({status})")
        lines = content.decode("utf-8").splitlines()
        if not lines:
            raise ChannelError("the bill is empty, not even a header")
        header = lines[0].split(",")
        return [dict(zip(header, line.split(","), strict=True)) for line in lines[1:] if line]


# --- Insurance platform ---------------------------------------------------------------


@dataclass(frozen=True)
class InsuranceConfig:
    base_url: str
    paasid: str
    secret: str
    fixmedins_code: str
    fixmedins_name: str
    timeout: float = 10.0


@dataclass(frozen=True)
class Settlement:
    setl_id: str
    mdtrt_id: str
    psn_no: str
    medfee_sumamt: int
    fund_pay_sumamt: int
    acct_pay: int
    psn_cash_pay: int


def yuan(fen: int) -> Decimal:
    return (Decimal(fen) / 100).quantize(Decimal("0.01"))


def fen(amount: Any) -> int:
    value = Decimal(str(amount)) * 100
    if value != value.to_integral_value():
        raise ChannelError(f"amount {amount} has more than two decimals", retryable=False)
    return int(value)


class _YuanEncoder(json.JSONEncoder):
    def default(self, o: Any) -> Any:
        if isinstance(o, Decimal):
            return float(o)  # two decimals always survive a float round trip
        return super().default(o)


class Insurance:
    def __init__(self, config: InsuranceConfig) -> None:
        self.config = config

    def call(self, infno: str, data: dict[str, Any]) -> dict[str, Any]:
        now = dt.datetime.now(tz=SHANGHAI)
        serial = f"{secrets.randbelow(10**4):04d}"
        body = json.dumps(
            {
                "infno": infno,
                "msgid": f"{self.config.fixmedins_code}{now:%Y%m%d%H%M%S}{serial}",
                "infver": "V1.0",
                "inf_time": f"{now:%Y-%m-%d %H:%M:%S}",
                "fixmedins_code": self.config.fixmedins_code,
                "fixmedins_name": self.config.fixmedins_name,
                "opter": "internet-hospital",
                "opter_name": "互联网医院",
                "input": {"data": data},
            },
            cls=_YuanEncoder,
            ensure_ascii=False,
        ).encode()
        timestamp = str(int(time.time()))
        nonce = secrets.token_hex(16)
        signature = hashlib.sha256(
            (timestamp + self.config.secret + nonce + timestamp).encode()
        ).hexdigest()
        try:
            response = http_client().post(
                self.config.base_url.rstrip("/") + "/fsi/api/callService",
                content=body,
                headers={
                    "Content-Type": "application/json",
                    "x-tif-paasid": self.config.paasid,
                    "x-tif-timestamp": timestamp,
                    "x-tif-nonce": nonce,
                    "x-tif-signature": signature,
                },
                timeout=self.config.timeout,
            )
        except httpx.HTTPError as exc:
            raise ChannelError(f"insurance platform unreachable: {exc}") from exc
        if response.status_code != 200:
            raise ChannelError(
                f"insurance platform answered {response.status_code}",
                retryable=response.status_code >= 500,
            )
        answer = json.loads(response.content, parse_float=Decimal)
        if answer.get("infcode") != 0:
            raise ChannelError(
                f"insurance platform refused ({infno}): {answer.get('err_msg', '')}",
                code=str(answer.get("infcode")),
                retryable=False,
            )
        return dict(answer.get("output") or {})

    def settle(
        self,
        *,
        ipt_otp_no: str,
        cert_no: str,
        name: str,
        items: list[dict[str, Any]],
    ) -> Settlement:
        total = sum(int(item["amount"]) for item in items)
        output = self.call(
            "2207",
            {
                "mdtrt_cert_type": "02",
                "mdtrt_cert_no": cert_no,
                "psn_name": name,
                "ipt_otp_no": ipt_otp_no,
                "medfee_sumamt": yuan(total),
                "insutype": "310",
                "med_type": "11",
                "fee_details": [
                    {
                        "feedetl_sn": f"{ipt_otp_no}-{n}",
                        "medins_list_codg": str(item["code"]),
                        "pric": yuan(int(item["unit_price"])),
                        "cnt": int(item["quantity"]),
                        "det_item_fee_sumamt": yuan(int(item["amount"])),
                    }
                    for n, item in enumerate(items, start=1)
                ],
            },
        )
        info = output.get("setlinfo") or {}
        try:
            settlement = Settlement(
                setl_id=str(info["setl_id"]),
                mdtrt_id=str(info["mdtrt_id"]),
                psn_no=str(info["psn_no"]),
                medfee_sumamt=fen(info["medfee_sumamt"]),
                fund_pay_sumamt=fen(info["fund_pay_sumamt"]),
                acct_pay=fen(info["acct_pay"]),
                psn_cash_pay=fen(info["psn_cash_pay"]),
            )
        except KeyError as exc:
            raise ChannelError(f"the settlement lacks {exc}", retryable=False) from exc
        parts = settlement.fund_pay_sumamt + settlement.acct_pay + settlement.psn_cash_pay
        if settlement.medfee_sumamt != total or parts != total:
            raise ChannelError(
                f"the settlement does not add up: total {total}, platform "
                f"{settlement.medfee_sumamt}, parts {parts}",
                retryable=False,
            )
        return settlement

    def reverse(self, *, setl_id: str, mdtrt_id: str, psn_no: str) -> str:
        output = self.call("2208", {"setl_id": setl_id, "mdtrt_id": mdtrt_id, "psn_no": psn_no})
        info = output.get("setlinfo") or {}
        return str(info.get("setl_id", ""))
