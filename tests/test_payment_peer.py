"""The bundled payment peer (``peers.payment``), over real HTTP.

One peer process per module (``python -m peers.payment``, retry schedule scaled by
0.001), reset before each test; notifications go to a small HTTP receiver in this
process that records the raw bytes and answers the status codes a test asks for. Every
request is built here by hand, as the hospital's side of the wire would (PROTOCOL.md):
the HMAC ``Authorization``, the verification of the gateway's ECDSA signature on the raw
bytes with the public key taken from the key file (pinned, never fetched), the AES-256-GCM
resource, the insurance platform's ``x-tif-*`` signature. Nothing from the backend or
from the peer is imported, and the Django database is not used.
"""

from __future__ import annotations

import base64
import binascii
import csv
import datetime as dt
import hashlib
import hmac
import io
import json
import re
import secrets
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import ROUND_FLOOR, Decimal
from html.parser import HTMLParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

ROOT = Path(__file__).resolve().parent.parent
SHANGHAI = ZoneInfo("Asia/Shanghai")
ADMIN_TOKEN = "payment-peer-admin"
RETRY_SCALE = "0.001"
WINDOW = 300


@dataclass(frozen=True)
class MerchantKeys:
    mchid: str
    signing_secret: str
    apiv3_key: str  # 32 ASCII characters: the AES-256 key of notification resources

    def spec(self) -> str:
        return f"{self.mchid}:{self.signing_secret}:{self.apiv3_key}"


@dataclass(frozen=True)
class Institution:
    paasid: str
    secret: str
    fixmedins_code: str = "H33010500001"


MERCHANT = MerchantKeys("1900000109", "merchant-hmac-secret", "k8Vn2Qx7Lm4Tz9Rb1Wc6Hy3Jd5Fg0Ps8")
OTHER_MERCHANT = MerchantKeys("1900000110", "other:secret", "Zz0Yy1Xx2Ww3Vv4Uu5Tt6Ss7Rr8Qq9Pp")
INSTITUTION = Institution("hz-ih-paas", "tif-secret-0001")


# -- the notification receiver ---------------------------------------------------------


@dataclass(frozen=True)
class Delivery:
    path: str
    headers: dict[str, str]  # lower-cased names
    body: bytes
    status: int  # what the receiver answered


class Receiver:
    """A real HTTP server answering each path with the statuses queued for it (then the
    path's default), recording every request's raw body and headers."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._deliveries: dict[str, list[Delivery]] = {}
        self._queued: dict[str, deque[int]] = {}
        self._default: dict[str, int] = {}
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                status = receiver._record(self.path, dict(self.headers.items()), body)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"

    def _record(self, path: str, headers: dict[str, str], body: bytes) -> int:
        with self._lock:
            queue = self._queued.get(path)
            status = queue.popleft() if queue else self._default.get(path, 200)
            lowered = {name.lower(): value for name, value in headers.items()}
            self._deliveries.setdefault(path, []).append(Delivery(path, lowered, body, status))
            self._lock.notify_all()
        return status

    def sink(self) -> Sink:
        return Sink(self, f"/notify/{secrets.token_hex(6)}")

    def deliveries(self, path: str) -> list[Delivery]:
        with self._lock:
            return list(self._deliveries.get(path, []))

    def wait(self, path: str, count: int, timeout: float) -> list[Delivery]:
        deadline = time.monotonic() + timeout
        with self._lock:
            while len(self._deliveries.get(path, [])) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._lock.wait(left)
            return list(self._deliveries.get(path, []))

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Sink:
    """One notify_url of its own on the receiver (a stray late delivery of an earlier
    test cannot land here)."""

    receiver: Receiver
    path: str

    @property
    def url(self) -> str:
        return self.receiver.base + self.path

    def answer(self, *statuses: int, then: int = 200) -> None:
        with self.receiver._lock:
            self.receiver._queued[self.path] = deque(statuses)
            self.receiver._default[self.path] = then

    def wait(self, count: int, timeout: float = 5.0) -> list[Delivery]:
        got = self.receiver.wait(self.path, count, timeout)
        assert len(got) >= count, f"expected {count} deliveries at {self.path}, got {len(got)}"
        return got

    @property
    def deliveries(self) -> list[Delivery]:
        return self.receiver.deliveries(self.path)


# -- the peer process ------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class PeerProcess:
    process: subprocess.Popen[str]
    url: str
    stderr: Path

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.process.stdout:
            self.process.stdout.close()


def start_peer(folder: Path, db: Path, key: Path, retry_scale: str = RETRY_SCALE) -> PeerProcess:
    port = _free_port()
    command = [
        sys.executable,
        "-m",
        "peers.payment",
        "--port",
        str(port),
        "--db",
        str(db),
        "--gateway-key",
        str(key),
        "--merchant",
        MERCHANT.spec(),
        "--merchant",
        OTHER_MERCHANT.spec(),
        "--insurance",
        f"{INSTITUTION.paasid}:{INSTITUTION.secret}",
        "--retry-scale",
        retry_scale,
        "--admin-token",
        ADMIN_TOKEN,
    ]
    stderr_path = folder / f"stderr-{port}.log"
    with stderr_path.open("w") as stderr:
        process = subprocess.Popen(
            command, cwd=ROOT, stdout=subprocess.PIPE, stderr=stderr, text=True
        )
    lines: list[str] = []
    reader = threading.Thread(
        target=lambda: lines.append(process.stdout.readline() if process.stdout else ""),
        daemon=True,
    )
    reader.start()
    reader.join(timeout=30)
    if not lines or "ready" not in lines[0]:
        process.kill()
        process.wait()
        pytest.fail(f"the payment peer did not start: {lines!r}\n{stderr_path.read_text()}")
    url = f"http://127.0.0.1:{port}"
    assert url in lines[0]
    return PeerProcess(process, url, stderr_path)


def pinned_key(path: Path) -> tuple[ec.EllipticCurvePublicKey, str]:
    """The gateway's public key, from the key file (as the hospital pins it at onboarding),
    and its serial: the first 32 hex digits of SHA-256 over the DER SubjectPublicKeyInfo."""
    private = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    public = private.public_key()
    der = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return public, hashlib.sha256(der).hexdigest()[:32]


@dataclass
class Peer:
    url: str
    client: httpx.Client
    public_key: ec.EllipticCurvePublicKey
    serial: str
    db: Path

    def admin(self, path: str, data: Any = None, method: str = "POST") -> httpx.Response:
        return self.client.request(method, path, json=data, headers={"X-Admin-Token": ADMIN_TOKEN})

    def faults(self, **faults: Any) -> dict[str, Any]:
        response = self.admin("/_faults", faults)
        assert response.status_code == 200, response.text
        return response.json()

    def notifications(self) -> list[dict[str, Any]]:
        return self.client.get("/api/notifications").json()["results"]

    def notification(self, out_trade_no: str, event_type: str) -> dict[str, Any]:
        found = [
            n
            for n in self.notifications()
            if n["out_trade_no"] == out_trade_no and n["event_type"] == event_type
        ]
        assert len(found) == 1, found
        return found[0]


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def peer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Peer]:
    folder = tmp_path_factory.mktemp("payment-peer")
    key = folder / "keys" / "gateway.pem"  # missing: the peer generates and writes it
    db = folder / "payment.sqlite3"
    running = start_peer(folder, db, key)
    public_key, serial = pinned_key(key)
    client = httpx.Client(base_url=running.url, timeout=10, trust_env=False)
    try:
        yield Peer(running.url, client, public_key, serial, db)
    finally:
        client.close()
        running.stop()


@pytest.fixture(autouse=True)
def clean(peer: Peer) -> None:
    assert peer.admin("/_faults", {}).status_code == 200
    assert peer.admin("/_reset").status_code == 200


@pytest.fixture
def sink(receiver: Receiver) -> Sink:
    return receiver.sink()


def wait_until(predicate: Callable[[], Any], timeout: float = 5.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what or predicate}")
        time.sleep(0.02)


def notification_when(
    peer: Peer,
    out_trade_no: str,
    condition: Callable[[dict[str, Any]], Any],
    event_type: str = "TRANSACTION.SUCCESS",
    timeout: float = 5.0,
) -> dict[str, Any]:
    """The peer's record of a notification, once ``condition`` holds for it."""

    def check() -> dict[str, Any] | None:
        record = peer.notification(out_trade_no, event_type)
        return record if condition(record) else None

    found: dict[str, Any] = wait_until(check, timeout, f"{event_type} of {out_trade_no}")
    return found


# -- the hospital's side of the gateway, by hand ---------------------------------------


def signature_problem(
    peer: Peer, headers: httpx.Headers | dict[str, str], body: bytes, *, now: float | None = None
) -> str | None:
    """Why the gateway's signature on these raw bytes does not hold, or None if it does.
    ``headers`` lookups are case-insensitive for httpx.Headers; dicts must be lower-cased."""
    timestamp = headers.get("pay-timestamp", "")
    nonce = headers.get("pay-nonce", "")
    serial = headers.get("pay-serial", "")
    signature = headers.get("pay-signature", "")
    if not (timestamp and nonce and serial and signature):
        return "missing headers"
    if serial != peer.serial:
        return "unknown serial"
    if abs((time.time() if now is None else now) - int(timestamp)) > WINDOW:
        return "stale timestamp"
    try:
        der = base64.b64decode(signature, validate=True)
        message = timestamp.encode() + b"\n" + nonce.encode() + b"\n" + body + b"\n"
        peer.public_key.verify(der, message, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, binascii.Error, ValueError):
        return "bad signature"
    return None


def authorization(
    merchant: MerchantKeys,
    method: str,
    path: str,
    body: bytes,
    *,
    timestamp: int | None = None,
    nonce: str | None = None,
    secret: str | None = None,
) -> str:
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    nonce_str = nonce or secrets.token_hex(16)
    message = f"{method}\n{path}\n{stamp}\n{nonce_str}\n".encode() + body + b"\n"
    key = (merchant.signing_secret if secret is None else secret).encode()
    signature = base64.b64encode(hmac.new(key, message, hashlib.sha256).digest()).decode()
    return (
        f'PAY-HMAC-SHA256 mchid="{merchant.mchid}",nonce_str="{nonce_str}",'
        f'timestamp="{stamp}",signature="{signature}"'
    )


def call(
    peer: Peer,
    method: str,
    path: str,
    payload: dict[str, Any] | None = None,
    *,
    merchant: MerchantKeys = MERCHANT,
    **signing: Any,
) -> httpx.Response:
    """One merchant API call. ``path`` includes the query string (it is signed as sent).
    Every answer, errors included, must carry the gateway's valid signature."""
    body = b"" if payload is None else json.dumps(payload, ensure_ascii=False).encode()
    headers = {"Authorization": authorization(merchant, method, path, body, **signing)}
    if payload is not None:
        headers["Content-Type"] = "application/json"
    response = peer.client.request(method, path, content=body, headers=headers)
    assert signature_problem(peer, response.headers, response.content) is None, response.text
    return response


def error_code(response: httpx.Response) -> tuple[int, str]:
    return response.status_code, response.json()["code"]


def decrypt(resource: dict[str, Any], merchant: MerchantKeys = MERCHANT) -> dict[str, Any]:
    assert resource["algorithm"] == "AEAD_AES_256_GCM"
    assert len(resource["nonce"]) == 12
    plain = AESGCM(merchant.apiv3_key.encode()).decrypt(
        resource["nonce"].encode(),
        base64.b64decode(resource["ciphertext"]),
        resource["associated_data"].encode(),
    )
    data = json.loads(plain)
    assert isinstance(data, dict)
    return data


def opened(peer: Peer, delivery: Delivery, merchant: MerchantKeys = MERCHANT) -> dict[str, Any]:
    """Verify a notification on its raw bytes, then parse and decrypt it: the plaintext."""
    assert signature_problem(peer, delivery.headers, delivery.body) is None
    notification = json.loads(delivery.body)
    return decrypt(notification["resource"], merchant)


def new_trade_no() -> str:
    return f"IH{secrets.token_hex(8)}"


def prepay(
    peer: Peer,
    notify_url: str,
    *,
    out_trade_no: str | None = None,
    total: int = 1234,
    merchant: MerchantKeys = MERCHANT,
    **extra: Any,
) -> dict[str, Any]:
    payload = {
        "mchid": merchant.mchid,
        "appid": "wx-ih-app",
        "description": "图文问诊 · consultation",
        "out_trade_no": out_trade_no or new_trade_no(),
        "notify_url": notify_url,
        "amount": {"total": total, "currency": "CNY"},
        **extra,
    }
    response = call(peer, "POST", "/v3/pay/transactions/app", payload, merchant=merchant)
    assert response.status_code == 200, response.text
    data = response.json()
    assert set(data) == {"prepay_id", "pay_url"}
    return {**data, "out_trade_no": payload["out_trade_no"]}


def pay(peer: Peer, prepay_id: str) -> dict[str, Any]:
    response = peer.client.post(f"/pay/{prepay_id}", headers={"Accept": "application/json"})
    assert response.status_code == 200, response.text
    return response.json()


def paid_order(peer: Peer, sink: Sink, *, total: int = 1234, **extra: Any) -> dict[str, Any]:
    order = prepay(peer, sink.url, total=total, **extra)
    return {**order, **pay(peer, order["prepay_id"])}


def query(peer: Peer, out_trade_no: str, merchant: MerchantKeys = MERCHANT) -> httpx.Response:
    path = f"/v3/pay/transactions/out-trade-no/{out_trade_no}?mchid={merchant.mchid}"
    return call(peer, "GET", path, merchant=merchant)


def refund(
    peer: Peer,
    out_trade_no: str,
    amount: int,
    *,
    total: int = 1234,
    out_refund_no: str | None = None,
    notify_url: str | None = None,
) -> httpx.Response:
    payload: dict[str, Any] = {
        "out_trade_no": out_trade_no,
        "out_refund_no": out_refund_no or f"RF{secrets.token_hex(8)}",
        "reason": "患者取消 · cancelled",
        "amount": {"refund": amount, "total": total, "currency": "CNY"},
    }
    if notify_url is not None:
        payload["notify_url"] = notify_url
    return call(peer, "POST", "/v3/refund/domestic/refunds", payload)


def bill(peer: Peer, day: str) -> httpx.Response:
    return call(peer, "GET", f"/v3/bill/tradebill?bill_date={day}")


def bill_rows(response: httpx.Response) -> list[dict[str, str]]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    text = response.content.decode("utf-8")
    assert text.splitlines()[0] == (
        "trade_time,out_trade_no,transaction_id,type,amount,out_refund_no,refund_id"
    )
    return list(csv.DictReader(io.StringIO(text)))


# -- section 1: the key ----------------------------------------------------------------


def test_certificates_answer_the_pinned_key(peer: Peer) -> None:
    response = peer.client.get("/v3/certificates")
    assert response.status_code == 200
    assert signature_problem(peer, response.headers, response.content) is None
    [certificate] = response.json()["data"]
    assert certificate["serial_no"] == peer.serial
    served = serialization.load_pem_public_key(certificate["public_key_pem"].encode())
    assert isinstance(served, ec.EllipticCurvePublicKey)
    assert served.public_numbers() == peer.public_key.public_numbers()


def test_health_and_unknown_paths_are_signed_too(peer: Peer) -> None:
    health = peer.client.get("/healthz")
    assert health.json() == {"status": "ok"}
    assert signature_problem(peer, health.headers, health.content) is None
    missing = call(peer, "GET", "/v3/nothing/here")
    assert missing.status_code == 404


# -- section 2: request authentication -------------------------------------------------


def test_a_signed_request_is_accepted(peer: Peer, sink: Sink) -> None:
    order = prepay(peer, sink.url)
    assert order["prepay_id"]
    assert order["pay_url"] == f"{peer.url}/pay/{order['prepay_id']}"


@pytest.mark.parametrize(
    ("secret", "skew", "why"),
    [
        ("not-the-secret", 0, "bad signature"),
        (None, -400, "stale timestamp"),
        (None, 400, "timestamp in the future"),
    ],
)
def test_refused_signatures_are_sign_errors(
    peer: Peer, sink: Sink, secret: str | None, skew: int, why: str
) -> None:
    out_trade_no = new_trade_no()
    payload = {
        "mchid": MERCHANT.mchid,
        "appid": "wx-ih-app",
        "description": "x",
        "out_trade_no": out_trade_no,
        "notify_url": sink.url,
        "amount": {"total": 100, "currency": "CNY"},
    }
    timestamp = int(time.time()) + skew
    response = call(
        peer, "POST", "/v3/pay/transactions/app", payload, secret=secret, timestamp=timestamp
    )
    assert error_code(response) == (401, "SIGN_ERROR"), why
    assert isinstance(response.json()["message"], str)
    assert error_code(query(peer, out_trade_no)) == (404, "ORDER_NOT_EXIST")


def test_missing_or_foreign_authorization(peer: Peer) -> None:
    path = f"/v3/pay/transactions/out-trade-no/{new_trade_no()}?mchid={MERCHANT.mchid}"
    bare = peer.client.get(path)
    assert error_code(bare) == (401, "SIGN_ERROR")
    assert signature_problem(peer, bare.headers, bare.content) is None
    stranger = MerchantKeys("1999999999", "whatever", "0" * 32)
    assert error_code(call(peer, "GET", path, merchant=stranger)) == (401, "SIGN_ERROR")
    # The query string is part of what is signed.
    header = authorization(MERCHANT, "GET", path, b"")
    tampered = peer.client.get(path + "x", headers={"Authorization": header})
    assert error_code(tampered) == (401, "SIGN_ERROR")


def test_a_nonce_is_used_once_per_merchant(peer: Peer) -> None:
    path = f"/v3/pay/transactions/out-trade-no/{new_trade_no()}"
    nonce = secrets.token_hex(16)
    first = call(peer, "GET", f"{path}?mchid={MERCHANT.mchid}", nonce=nonce)
    assert error_code(first) == (404, "ORDER_NOT_EXIST")  # authenticated, then not found
    again = call(peer, "GET", f"{path}?mchid={MERCHANT.mchid}", nonce=nonce)
    assert error_code(again) == (401, "SIGN_ERROR")
    other = call(
        peer, "GET", f"{path}?mchid={OTHER_MERCHANT.mchid}", nonce=nonce, merchant=OTHER_MERCHANT
    )
    assert error_code(other) == (404, "ORDER_NOT_EXIST")


# -- section 2: prepay, query, close ---------------------------------------------------


def test_prepay_is_idempotent_by_out_trade_no(peer: Peer, sink: Sink) -> None:
    first = prepay(peer, sink.url, total=1234)
    again = prepay(peer, sink.url, out_trade_no=first["out_trade_no"], total=1234)
    assert again["prepay_id"] == first["prepay_id"]
    conflict = call(
        peer,
        "POST",
        "/v3/pay/transactions/app",
        {
            "mchid": MERCHANT.mchid,
            "appid": "wx-ih-app",
            "description": "图文问诊",
            "out_trade_no": first["out_trade_no"],
            "notify_url": sink.url,
            "amount": {"total": 1235, "currency": "CNY"},
        },
    )
    assert error_code(conflict) == (400, "INVALID_REQUEST")
    # Another merchant's order with the same number is another order.
    other = prepay(peer, sink.url, out_trade_no=first["out_trade_no"], merchant=OTHER_MERCHANT)
    assert other["prepay_id"] != first["prepay_id"]


def test_prepay_of_a_paid_or_closed_order(peer: Peer, sink: Sink) -> None:
    paid = paid_order(peer, sink)
    body = {
        "mchid": MERCHANT.mchid,
        "appid": "wx-ih-app",
        "description": "图文问诊",
        "out_trade_no": paid["out_trade_no"],
        "notify_url": sink.url,
        "amount": {"total": 1234, "currency": "CNY"},
    }
    again = call(peer, "POST", "/v3/pay/transactions/app", body)
    assert error_code(again) == (400, "ORDERPAID")
    closed = prepay(peer, sink.url)
    close = call(
        peer,
        "POST",
        f"/v3/pay/transactions/out-trade-no/{closed['out_trade_no']}/close",
        {"mchid": MERCHANT.mchid},
    )
    assert close.status_code == 204
    body["out_trade_no"] = closed["out_trade_no"]
    assert error_code(call(peer, "POST", "/v3/pay/transactions/app", body)) == (
        400,
        "ORDER_CLOSED",
    )


@pytest.mark.parametrize(
    "change",
    [
        {"out_trade_no": "short"},
        {"out_trade_no": "has space 123"},
        {"out_trade_no": "x" * 33},
        {"amount": {"total": 0, "currency": "CNY"}},
        {"amount": {"total": 12.5, "currency": "CNY"}},
        {"amount": {"total": 100, "currency": "USD"}},
        {"notify_url": "ftp://example.com/x"},
        {"mchid": OTHER_MERCHANT.mchid},
        {"description": ""},
    ],
)
def test_prepay_validation(peer: Peer, sink: Sink, change: dict[str, Any]) -> None:
    body = {
        "mchid": MERCHANT.mchid,
        "appid": "wx-ih-app",
        "description": "图文问诊",
        "out_trade_no": new_trade_no(),
        "notify_url": sink.url,
        "amount": {"total": 100, "currency": "CNY"},
        **change,
    }
    assert error_code(call(peer, "POST", "/v3/pay/transactions/app", body)) == (
        400,
        "INVALID_REQUEST",
    )


def test_query_before_and_after_payment(peer: Peer, sink: Sink) -> None:
    order = prepay(peer, sink.url, total=2500, attach="visit-42")
    unpaid = query(peer, order["out_trade_no"])
    assert unpaid.status_code == 200
    assert unpaid.json() == {
        "mchid": MERCHANT.mchid,
        "appid": "wx-ih-app",
        "out_trade_no": order["out_trade_no"],
        "trade_state": "NOTPAY",
        "trade_state_desc": unpaid.json()["trade_state_desc"],  # a text for humans
        "amount": {"total": 2500, "payer_total": 2500, "currency": "CNY", "payer_currency": "CNY"},
        "attach": "visit-42",
    }
    result = pay(peer, order["prepay_id"])
    assert result["trade_state"] == "SUCCESS"
    paid = query(peer, order["out_trade_no"]).json()
    assert paid["trade_state"] == "SUCCESS"
    assert paid["transaction_id"] == result["transaction_id"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+08:00", paid["success_time"])
    assert error_code(query(peer, new_trade_no())) == (404, "ORDER_NOT_EXIST")
    # Orders are the merchant's own.
    assert error_code(query(peer, order["out_trade_no"], OTHER_MERCHANT)) == (
        404,
        "ORDER_NOT_EXIST",
    )


def test_close(peer: Peer, sink: Sink) -> None:
    order = prepay(peer, sink.url)
    path = f"/v3/pay/transactions/out-trade-no/{order['out_trade_no']}/close"
    closed = call(peer, "POST", path, {"mchid": MERCHANT.mchid})
    assert closed.status_code == 204
    assert closed.content == b""
    assert call(peer, "POST", path, {"mchid": MERCHANT.mchid}).status_code == 204
    assert query(peer, order["out_trade_no"]).json()["trade_state"] == "CLOSED"
    refused = peer.client.post(f"/pay/{order['prepay_id']}", headers={"Accept": "application/json"})
    assert refused.status_code == 409
    page = peer.client.post(f"/pay/{order['prepay_id']}")
    assert page.status_code == 409
    assert "text/html" in page.headers["content-type"]

    paid = paid_order(peer, sink)
    path = f"/v3/pay/transactions/out-trade-no/{paid['out_trade_no']}/close"
    assert error_code(call(peer, "POST", path, {"mchid": MERCHANT.mchid})) == (400, "ORDERPAID")


def test_an_expired_order_cannot_be_paid(peer: Peer, sink: Sink) -> None:
    past = (dt.datetime.now(SHANGHAI) - dt.timedelta(minutes=1)).isoformat(timespec="seconds")
    order = prepay(peer, sink.url, time_expire=past)
    response = peer.client.post(
        f"/pay/{order['prepay_id']}", headers={"Accept": "application/json"}
    )
    assert response.status_code == 409
    assert query(peer, order["out_trade_no"]).json()["trade_state"] == "CLOSED"


# -- section 5: the pay page -----------------------------------------------------------


class PageChecker(HTMLParser):
    """Balanced elements, and what an accessible pay page needs."""

    VOID = {"meta", "link", "br", "hr", "img", "input"}

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.problems: list[str] = []
        self.lang = ""
        self.headings: list[str] = []
        self.buttons: list[str] = []
        self.form_method = ""
        self.button_in_form = False
        self.external: list[str] = []
        self._text_target: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "html":
            self.lang = values.get("lang") or ""
        if tag == "form":
            self.form_method = (values.get("method") or "").lower()
        if tag == "button":
            self.button_in_form = "form" in self.stack
            self.buttons.append("")
            self._text_target = self.buttons
        if tag in ("h1", "h2"):
            self.headings.append("")
            self._text_target = self.headings
        for name in ("src", "href"):
            if values.get(name):
                self.external.append(str(values[name]))
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.problems.append(f"unbalanced </{tag}> in {self.stack}")
            return
        self.stack.pop()
        if tag in ("button", "h1", "h2"):
            self._text_target = None

    def handle_data(self, data: str) -> None:
        if self._text_target is not None:
            self._text_target[-1] += data


def check_page(response: httpx.Response) -> PageChecker:
    assert response.headers["content-type"].startswith("text/html")
    text = response.text
    assert text.lower().startswith("<!doctype html>")
    checker = PageChecker()
    checker.feed(text)
    checker.close()
    assert checker.problems == []
    assert checker.stack == []
    assert checker.lang == "zh-CN"
    assert checker.headings
    assert checker.external == []  # no external assets
    return checker


def test_pay_page_get_then_form_post(peer: Peer, sink: Sink) -> None:
    order = prepay(peer, sink.url, total=12345)
    page = peer.client.get(f"/pay/{order['prepay_id']}")
    assert page.status_code == 200
    checker = check_page(page)
    assert "123.45" in page.text
    assert MERCHANT.mchid in page.text
    assert checker.form_method == "post"
    assert checker.button_in_form
    assert [label.strip() for label in checker.buttons] == ["支付 / Pay"]

    # The button posts the form (a browser sends an empty urlencoded body).
    done = peer.client.post(
        f"/pay/{order['prepay_id']}",
        content=b"",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert done.status_code == 200
    check_page(done)
    paid = query(peer, order["out_trade_no"]).json()
    assert paid["trade_state"] == "SUCCESS"
    assert paid["transaction_id"] in done.text

    # Paying twice changes nothing.
    again = pay(peer, order["prepay_id"])
    assert again == {"transaction_id": paid["transaction_id"], "trade_state": "SUCCESS"}
    assert query(peer, order["out_trade_no"]).json()["success_time"] == paid["success_time"]
    assert len(sink.wait(1)) == 1
    time.sleep(0.2)
    assert len(sink.deliveries) == 1  # one payment, one notification

    assert peer.client.get("/pay/wx-no-such-prepay").status_code == 404


# -- section 3: notifications ----------------------------------------------------------


def test_payment_notification_verifies_and_decrypts(peer: Peer, sink: Sink) -> None:
    order = paid_order(peer, sink, total=880, attach="a&b")
    [delivery] = sink.wait(1)
    assert delivery.headers["content-type"].startswith("application/json")
    assert signature_problem(peer, delivery.headers, delivery.body) is None
    assert re.fullmatch(r"[A-Za-z0-9]{32}", delivery.headers["pay-nonce"])
    notification = json.loads(delivery.body)
    assert set(notification) == {
        "id",
        "create_time",
        "event_type",
        "resource_type",
        "summary",
        "resource",
    }
    assert notification["event_type"] == "TRANSACTION.SUCCESS"
    assert notification["resource_type"] == "encrypt-resource"
    assert notification["summary"] == "支付成功"
    assert notification["create_time"].endswith("+08:00")
    resource = notification["resource"]
    assert resource["original_type"] == resource["associated_data"] == "transaction"
    plaintext = decrypt(resource)
    assert plaintext == query(peer, order["out_trade_no"]).json()
    assert plaintext["transaction_id"] == order["transaction_id"]
    assert plaintext["amount"]["total"] == 880
    assert plaintext["attach"] == "a&b"
    # The wrong key does not open it.
    with pytest.raises(InvalidTag):
        decrypt(resource, OTHER_MERCHANT)

    record = notification_when(peer, order["out_trade_no"], lambda n: n["delivered"])
    assert record["id"] == notification["id"]
    assert record["attempts"] == 1
    assert record["deliveries"] == 1
    assert record["last_status"] == 200


def test_failed_deliveries_are_retried(peer: Peer, sink: Sink) -> None:
    sink.answer(500, 503, 404, then=204)
    order = paid_order(peer, sink)
    deliveries = sink.wait(4)
    assert [d.status for d in deliveries] == [500, 503, 404, 204]
    # The same notification (same bytes), freshly signed each time.
    assert len({d.body for d in deliveries}) == 1
    assert len({d.headers["pay-nonce"] for d in deliveries}) == 4
    assert all(signature_problem(peer, d.headers, d.body) is None for d in deliveries)
    record = notification_when(peer, order["out_trade_no"], lambda n: n["delivered"])
    assert (record["attempts"], record["deliveries"], record["last_status"]) == (4, 1, 204)
    time.sleep(0.2)
    assert len(sink.deliveries) == 4


def test_a_refused_connection_is_retried(peer: Peer) -> None:
    dead = f"http://127.0.0.1:{_free_port()}/notify"  # nobody listens there
    order = prepay(peer, dead)
    pay(peer, order["prepay_id"])
    record = notification_when(peer, order["out_trade_no"], lambda n: n["attempts"] >= 4)
    assert record["delivered"] is False
    assert isinstance(record["last_status"], str)  # an error, not an HTTP status
    assert record["status"] == "pending"


def test_the_gateway_gives_up_after_the_schedule(tmp_path: Path, receiver: Receiver) -> None:
    # 1 + 15 deliveries; the whole day-long schedule scaled down to under a second.
    sink = receiver.sink()
    sink.answer(then=500)
    running = start_peer(tmp_path, tmp_path / "db.sqlite3", tmp_path / "key.pem", "0.00001")
    try:
        with httpx.Client(base_url=running.url, timeout=10, trust_env=False) as client:
            public_key, serial = pinned_key(tmp_path / "key.pem")
            quick = Peer(running.url, client, public_key, serial, tmp_path / "db.sqlite3")
            order = paid_order(quick, sink)
            record = notification_when(
                quick, order["out_trade_no"], lambda n: n["status"] == "given_up", timeout=10
            )
            assert (record["attempts"], record["last_status"]) == (16, 500)
            time.sleep(0.3)
            assert len(sink.deliveries) == 16
    finally:
        running.stop()


# -- section 2: refunds ----------------------------------------------------------------


def test_refund_flow(peer: Peer, sink: Sink, receiver: Receiver) -> None:
    order = paid_order(peer, sink, total=1000)
    sink.wait(1)
    refunds = receiver.sink()

    first = refund(peer, order["out_trade_no"], 300, total=1000, notify_url=refunds.url)
    assert first.status_code == 200, first.text
    created = first.json()
    assert created["status"] in ("PROCESSING", "SUCCESS")
    assert created["transaction_id"] == order["transaction_id"]
    assert created["amount"] == {
        "total": 1000,
        "refund": 300,
        "payer_total": 1000,
        "payer_refund": 300,
        "currency": "CNY",
    }
    # Idempotent by out_refund_no.
    again = refund(
        peer,
        order["out_trade_no"],
        300,
        total=1000,
        out_refund_no=created["out_refund_no"],
        notify_url=refunds.url,
    )
    assert again.json()["refund_id"] == created["refund_id"]

    [delivery] = refunds.wait(1)
    notification = json.loads(delivery.body)
    assert notification["event_type"] == "REFUND.SUCCESS"
    assert notification["summary"] == "退款成功"
    assert notification["resource"]["associated_data"] == "refund"
    plaintext = opened(peer, delivery)
    assert plaintext == {
        "mchid": MERCHANT.mchid,
        "out_trade_no": order["out_trade_no"],
        "transaction_id": order["transaction_id"],
        "out_refund_no": created["out_refund_no"],
        "refund_id": created["refund_id"],
        "refund_status": "SUCCESS",
        "success_time": plaintext["success_time"],
        "amount": {"total": 1000, "refund": 300, "payer_total": 1000, "payer_refund": 300},
    }
    done = call(peer, "GET", f"/v3/refund/domestic/refunds/{created['out_refund_no']}").json()
    assert done["status"] == "SUCCESS"
    assert done["success_time"] == plaintext["success_time"]
    # Partly refunded: still SUCCESS.
    assert query(peer, order["out_trade_no"]).json()["trade_state"] == "SUCCESS"

    too_much = refund(peer, order["out_trade_no"], 701, total=1000)
    assert error_code(too_much) == (400, "NOT_ENOUGH")
    wrong_total = refund(peer, order["out_trade_no"], 100, total=999)
    assert error_code(wrong_total) == (400, "INVALID_REQUEST")
    # The same out_refund_no for another amount is refused.
    reused = refund(
        peer, order["out_trade_no"], 200, total=1000, out_refund_no=created["out_refund_no"]
    )
    assert error_code(reused) == (400, "INVALID_REQUEST")

    # The rest, without a notify_url: the payment's notify_url is used.
    rest = refund(peer, order["out_trade_no"], 700, total=1000)
    assert rest.status_code == 200, rest.text
    second = sink.wait(2)[1]
    assert opened(peer, second)["out_refund_no"] == rest.json()["out_refund_no"]
    wait_until(lambda: query(peer, order["out_trade_no"]).json()["trade_state"] == "REFUND")
    assert error_code(refund(peer, order["out_trade_no"], 1, total=1000)) == (400, "NOT_ENOUGH")


def test_refund_errors(peer: Peer, sink: Sink) -> None:
    unpaid = prepay(peer, sink.url)
    assert error_code(refund(peer, unpaid["out_trade_no"], 100)) == (400, "TRADE_NOT_PAID")
    assert error_code(refund(peer, new_trade_no(), 100))[0] == 404
    missing = call(peer, "GET", "/v3/refund/domestic/refunds/RF-nothing")
    assert error_code(missing) == (404, "RESOURCE_NOT_EXISTS")


def test_refund_delay(peer: Peer, sink: Sink) -> None:
    order = paid_order(peer, sink, total=500)
    peer.faults(refund_delay_ms=400)
    created = refund(peer, order["out_trade_no"], 500, total=500).json()
    assert created["status"] == "PROCESSING"
    assert "success_time" not in created
    path = f"/v3/refund/domestic/refunds/{created['out_refund_no']}"
    assert call(peer, "GET", path).json()["status"] == "PROCESSING"
    wait_until(lambda: call(peer, "GET", path).json()["status"] == "SUCCESS")
    assert query(peer, order["out_trade_no"]).json()["trade_state"] == "REFUND"


# -- section 2: the daily bill ---------------------------------------------------------


def test_daily_bill(peer: Peer, sink: Sink) -> None:
    first = paid_order(peer, sink, total=1000)
    second = paid_order(peer, sink, total=2500)
    unpaid = prepay(peer, sink.url, total=700)
    refunded = refund(peer, first["out_trade_no"], 400, total=1000).json()
    path = f"/v3/refund/domestic/refunds/{refunded['out_refund_no']}"
    done = wait_until(lambda: (r := call(peer, "GET", path).json())["status"] == "SUCCESS" and r)
    paid_at = {
        order["out_trade_no"]: query(peer, order["out_trade_no"]).json()["success_time"]
        for order in (first, second)
    }
    day = paid_at[first["out_trade_no"]][:10]
    expected = [
        {
            "trade_time": paid_at[first["out_trade_no"]],
            "out_trade_no": first["out_trade_no"],
            "transaction_id": first["transaction_id"],
            "type": "PAY",
            "amount": "1000",
            "out_refund_no": "",
            "refund_id": "",
        },
        {
            "trade_time": paid_at[second["out_trade_no"]],
            "out_trade_no": second["out_trade_no"],
            "transaction_id": second["transaction_id"],
            "type": "PAY",
            "amount": "2500",
            "out_refund_no": "",
            "refund_id": "",
        },
        {
            "trade_time": done["success_time"],
            "out_trade_no": first["out_trade_no"],
            "transaction_id": first["transaction_id"],
            "type": "REFUND",
            "amount": "400",
            "out_refund_no": refunded["out_refund_no"],
            "refund_id": refunded["refund_id"],
        },
    ]
    expected = [row for row in expected if row["trade_time"].startswith(day)]  # midnight
    rows = bill_rows(bill(peer, day))  # signed (checked by call)
    assert rows == expected
    assert unpaid["out_trade_no"] not in {row["out_trade_no"] for row in rows}
    # Another merchant's bill does not hold ours.
    other = call(peer, "GET", f"/v3/bill/tradebill?bill_date={day}", merchant=OTHER_MERCHANT)
    assert bill_rows(other) == []
    # A day with nothing: the header line alone.
    empty = bill(peer, "2001-01-01")
    assert empty.content == (
        b"trade_time,out_trade_no,transaction_id,type,amount,out_refund_no,refund_id\n"
    )
    assert error_code(bill(peer, "2026-13-01")) == (400, "INVALID_REQUEST")
    assert error_code(call(peer, "GET", "/v3/bill/tradebill")) == (400, "INVALID_REQUEST")


# -- section 7: notification faults ----------------------------------------------------


def test_duplicate_notifications(peer: Peer, sink: Sink) -> None:
    peer.faults(duplicate_notifications=2)
    order = paid_order(peer, sink)
    deliveries = sink.wait(3)
    assert len({d.body for d in deliveries}) == 1
    assert all(signature_problem(peer, d.headers, d.body) is None for d in deliveries)
    record = notification_when(peer, order["out_trade_no"], lambda n: n["deliveries"] == 3)
    assert record["delivered"] is True
    time.sleep(0.2)
    assert len(sink.deliveries) == 3


def test_held_notifications_are_flushed_newest_first(peer: Peer, sink: Sink) -> None:
    peer.faults(hold_notifications=True)
    orders = [paid_order(peer, sink, total=100 + n) for n in range(3)]
    time.sleep(0.3)
    assert sink.deliveries == []
    assert {n["status"] for n in peer.notifications()} == {"held"}
    assert peer.client.post("/_flush").status_code == 401  # needs the admin token
    flushed = peer.admin("/_flush")
    assert flushed.json() == {"flushed": 3}
    deliveries = sink.wait(3)  # each first delivery was awaited by the flush
    got = [opened(peer, d)["out_trade_no"] for d in deliveries]
    assert got == [order["out_trade_no"] for order in reversed(orders)]
    assert all(n["delivered"] for n in peer.notifications())
    assert peer.admin("/_flush").json() == {"flushed": 0}


def test_suppressed_notifications_are_never_sent(peer: Peer, sink: Sink) -> None:
    peer.faults(suppress_notifications=1)
    silent = paid_order(peer, sink)
    heard = paid_order(peer, sink)
    [delivery] = sink.wait(1)
    assert opened(peer, delivery)["out_trade_no"] == heard["out_trade_no"]
    time.sleep(0.3)
    assert len(sink.deliveries) == 1
    record = peer.notification(silent["out_trade_no"], "TRANSACTION.SUCCESS")
    assert (record["delivered"], record["attempts"]) == (False, 0)
    # The merchant has to query.
    assert query(peer, silent["out_trade_no"]).json()["trade_state"] == "SUCCESS"
    assert peer.admin("/_faults", method="GET").json()["suppress_notifications"] == 0


@pytest.mark.parametrize(
    ("fault", "why"),
    [("bad_signature", "bad signature"), ("wrong_key", "bad signature")],
)
def test_badly_signed_deliveries(peer: Peer, sink: Sink, fault: str, why: str) -> None:
    peer.faults(**{fault: 1})
    # A merchant that verifies refuses the bad one (401); the retry is signed properly.
    sink.answer(401)
    paid_order(peer, sink)
    bad, good = sink.wait(2)
    assert bad.body == good.body
    assert bad.headers["pay-serial"] == peer.serial  # same serial, even with another key
    assert signature_problem(peer, bad.headers, bad.body) == why
    assert signature_problem(peer, good.headers, good.body) is None
    assert peer.admin("/_faults", method="GET").json()[fault] == 0


def test_stale_timestamp_delivery(peer: Peer, sink: Sink) -> None:
    peer.faults(stale_timestamp=1)
    sink.answer(401)
    paid_order(peer, sink)
    stale, fresh = sink.wait(2)
    assert signature_problem(peer, stale.headers, stale.body) == "stale timestamp"
    age = time.time() - int(stale.headers["pay-timestamp"])
    assert 590 < age < 620
    # Correctly signed for that (old) timestamp.
    then = int(stale.headers["pay-timestamp"])
    assert signature_problem(peer, stale.headers, stale.body, now=then) is None
    assert signature_problem(peer, fresh.headers, fresh.body) is None


def test_amount_delta(peer: Peer, sink: Sink) -> None:
    peer.faults(amount_delta=5)
    assert peer.admin("/_faults", method="GET").json()["amount_delta_count"] == 1
    first = paid_order(peer, sink, total=1000)
    [one] = sink.wait(1)
    second = paid_order(peer, sink, total=1000)
    two = sink.wait(2)[1]
    assert opened(peer, one)["amount"]["total"] == 1005  # still verifies and decrypts
    assert opened(peer, two)["amount"]["total"] == 1000
    assert query(peer, first["out_trade_no"]).json()["amount"]["total"] == 1000
    assert opened(peer, two)["out_trade_no"] == second["out_trade_no"]

    peer.faults(amount_delta=-100, amount_delta_count=2)
    deltas = []
    for n in range(3):
        paid_order(peer, sink, total=1000)
        deltas.append(opened(peer, sink.wait(3 + n)[2 + n])["amount"]["total"])
    assert deltas == [900, 900, 1000]


def test_notify_delay(peer: Peer, sink: Sink) -> None:
    peer.faults(notify_delay_ms=500)
    paid_order(peer, sink)
    paid_at = time.monotonic()
    time.sleep(0.25)
    assert sink.deliveries == []
    sink.wait(1)
    assert time.monotonic() - paid_at >= 0.45


# -- section 7: merchant API faults ----------------------------------------------------


def test_error_rate_with_a_seed_is_replayable(peer: Peer) -> None:
    path = f"/v3/pay/transactions/out-trade-no/{new_trade_no()}?mchid={MERCHANT.mchid}"

    def outcomes() -> list[int]:
        peer.faults(error_rate=0.5, seed=11)
        return [call(peer, "GET", path).status_code for _ in range(24)]

    first = outcomes()
    assert set(first) == {404, 500}  # both kinds, in a fixed order
    assert outcomes() == first
    answer = None
    for _ in range(24):
        answer = call(peer, "GET", path)
        if answer.status_code == 500:
            break
    assert answer is not None
    assert error_code(answer) == (500, "SYSTEM_ERROR")  # and signed (checked by call)
    peer.faults(error_rate=1.0)
    # Injected before anything is done: the nonce is not spent, the order not created.
    nonce = secrets.token_hex(16)
    assert call(peer, "GET", path, nonce=nonce).status_code == 500
    peer.faults()
    assert call(peer, "GET", path, nonce=nonce).status_code == 404
    # The insurance platform is not the merchant API.
    peer.faults(error_rate=1.0)
    assert answer_of(insurance_call(peer, "2207", Visit().data()))["infcode"] == 0


def test_latency(peer: Peer) -> None:
    peer.faults(latency_ms=300)
    started = time.monotonic()
    call(peer, "GET", f"/v3/pay/transactions/out-trade-no/{new_trade_no()}")
    assert time.monotonic() - started >= 0.3


def test_bill_faults(peer: Peer, sink: Sink) -> None:
    orders = [paid_order(peer, sink, total=total) for total in (100, 200, 300)]
    day = query(peer, orders[0]["out_trade_no"]).json()["success_time"][:10]
    honest = bill_rows(bill(peer, day))
    peer.faults(
        bill_missing=[orders[0]["out_trade_no"]],
        bill_amount_delta={orders[1]["out_trade_no"]: -1},
        bill_extra_rows=2,
    )
    rows = bill_rows(bill(peer, day))
    known = {order["out_trade_no"] for order in orders}
    by_trade = {row["out_trade_no"]: row for row in rows}
    assert orders[0]["out_trade_no"] not in by_trade
    if orders[1]["out_trade_no"] in {row["out_trade_no"] for row in honest}:
        assert by_trade[orders[1]["out_trade_no"]]["amount"] == "199"
    if orders[2]["out_trade_no"] in {row["out_trade_no"] for row in honest}:
        assert by_trade[orders[2]["out_trade_no"]]["amount"] == "300"
    extra = [row for row in rows if row["out_trade_no"] not in known]
    assert len(extra) == 2
    assert all(row["type"] == "PAY" and row["trade_time"].startswith(day) for row in extra)
    assert [row["trade_time"] for row in rows] == sorted(row["trade_time"] for row in rows)
    peer.faults()
    assert bill_rows(bill(peer, day)) == honest


# -- section 7: the test API -----------------------------------------------------------


def test_admin_endpoints_need_the_token(peer: Peer) -> None:
    for method, path in (
        ("GET", "/_faults"),
        ("POST", "/_faults"),
        ("POST", "/_reset"),
        ("POST", "/_flush"),
        ("POST", "/_coverage"),
    ):
        response = peer.client.request(method, path, json={})
        assert response.status_code == 401, (method, path)
    bad = peer.admin("/_faults", {"no_such_fault": 1})
    assert error_code(bad) == (400, "INVALID_REQUEST")
    assert error_code(peer.admin("/_faults", {"error_rate": 2})) == (400, "INVALID_REQUEST")
    shown = peer.faults(duplicate_notifications=1, seed=3, bill_missing=["A"])
    assert shown["duplicate_notifications"] == 1
    assert shown["seed"] == 3
    cleared = {**shown, "duplicate_notifications": 0, "seed": None, "bill_missing": []}
    assert peer.faults() == cleared


def test_index_lists_transactions_escaped(peer: Peer, sink: Sink) -> None:
    order = prepay(peer, sink.url, total=4200)
    body = {
        "mchid": MERCHANT.mchid,
        "appid": "wx-ih-app",
        "description": "<script>alert(1)</script>",
        "out_trade_no": new_trade_no(),
        "notify_url": sink.url,
        "amount": {"total": 1, "currency": "CNY"},
    }
    assert call(peer, "POST", "/v3/pay/transactions/app", body).status_code == 200
    page = peer.client.get("/")
    assert page.status_code == 200
    check_page(page)
    assert order["out_trade_no"] in page.text
    assert "42.00" in page.text
    assert "<script>" not in page.text
    assert "&lt;script&gt;" in page.text
    listing = peer.client.get("/api/transactions").json()["results"]
    assert [t["out_trade_no"] for t in listing] == [order["out_trade_no"], body["out_trade_no"]]
    stats = peer.client.get("/api/stats").json()
    assert stats["transactions"] == {"NOTPAY": 2}


def test_reset_empties_the_store(peer: Peer, sink: Sink) -> None:
    order = paid_order(peer, sink)
    sink.wait(1)
    assert peer.admin("/_reset").json() == {"status": "reset"}
    assert error_code(query(peer, order["out_trade_no"])) == (404, "ORDER_NOT_EXIST")
    assert peer.notifications() == []
    with sqlite3.connect(peer.db) as db:
        assert db.execute("SELECT COUNT(*) FROM transactions").fetchone()[0] == 0


# -- section 6: the insurance platform -------------------------------------------------


def yuan(fen: int) -> Decimal:
    return (Decimal(fen) / 100).quantize(Decimal("0.01"))


def insurance_call(
    peer: Peer,
    infno: str,
    data: dict[str, Any],
    *,
    institution: Institution = INSTITUTION,
    secret: str | None = None,
    timestamp: int | None = None,
    nonce: str | None = None,
) -> httpx.Response:
    now = dt.datetime.now(SHANGHAI)
    message = {
        "infno": infno,
        "msgid": f"{institution.fixmedins_code}{now:%Y%m%d%H%M%S}{secrets.randbelow(10**4):04d}",
        "infver": "V1.0",
        "inf_time": f"{now:%Y-%m-%d %H:%M:%S}",
        "fixmedins_code": institution.fixmedins_code,
        "fixmedins_name": "杭州示范互联网医院",
        "opter": "ih",
        "opter_name": "互联网医院",
        "input": {"data": data},
    }
    # Decimal yuan as JSON numbers: two decimals survive a float's shortest repr.
    body = json.dumps(message, ensure_ascii=False, default=float).encode()
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    nonce_value = nonce or secrets.token_hex(16)
    key = institution.secret if secret is None else secret
    signature = hashlib.sha256((stamp + key + nonce_value + stamp).encode()).hexdigest()
    return peer.client.post(
        "/fsi/api/callService",
        content=body,
        headers={
            "Content-Type": "application/json",
            "x-tif-paasid": institution.paasid,
            "x-tif-timestamp": stamp,
            "x-tif-nonce": nonce_value,
            "x-tif-signature": signature,
        },
    )


@dataclass
class Visit:
    cert_no: str = field(default_factory=lambda: f"33010619900101{secrets.randbelow(10**4):04d}")
    ipt_otp_no: str = field(default_factory=lambda: f"OTP{secrets.token_hex(6)}")
    items: list[tuple[str, int, int]] = field(
        default_factory=lambda: [("110200001", 2550, 2), ("250101001", 1999, 1)]
    )  # (code, unit price in fen, count)

    @property
    def total(self) -> int:
        return sum(price * count for _, price, count in self.items)

    def data(self, *, medfee: int | None = None) -> dict[str, Any]:
        return {
            "mdtrt_cert_type": "02",
            "mdtrt_cert_no": self.cert_no,
            "psn_name": "张三",
            "ipt_otp_no": self.ipt_otp_no,
            "medfee_sumamt": yuan(self.total if medfee is None else medfee),
            "insutype": "310",
            "med_type": "11",
            "fee_details": [
                {
                    "feedetl_sn": f"{self.ipt_otp_no}-{n}",
                    "medins_list_codg": code,
                    "pric": yuan(price),
                    "cnt": count,
                    "det_item_fee_sumamt": yuan(price * count),
                }
                for n, (code, price, count) in enumerate(self.items, start=1)
            ],
        }


def answer_of(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    data = json.loads(response.content, parse_float=Decimal)
    keys = {"infcode", "inf_refmsgid", "refmsg_time", "respond_time", "err_msg", "output"}
    assert set(data) == keys
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", data["respond_time"])
    return dict(data)


def fen(amount: Decimal) -> int:
    assert isinstance(amount, Decimal)
    assert amount == amount.quantize(Decimal("0.01"))
    return int(amount * 100)


def expected_split(total: int, balance: int, fund_ratio: str = "0.7", account_ratio: str = "0.5"):
    fund = int((total * Decimal(fund_ratio)).to_integral_value(rounding=ROUND_FLOOR))
    share = int(((total - fund) * Decimal(account_ratio)).to_integral_value(rounding=ROUND_FLOOR))
    account = min(balance, share)
    return fund, account, total - fund - account


def test_settlement_splits_and_adds_up(peer: Peer) -> None:
    visit = Visit()
    response = insurance_call(peer, "2207", visit.data())
    data = answer_of(response)
    assert (data["infcode"], data["err_msg"]) == (0, "")
    info = data["output"]["setlinfo"]
    total = visit.total  # 2550*2 + 1999 = 7099 fen
    assert fen(info["medfee_sumamt"]) == total
    parts = (fen(info["fund_pay_sumamt"]), fen(info["acct_pay"]), fen(info["psn_cash_pay"]))
    assert sum(parts) == total
    assert parts == expected_split(total, 50_000)
    assert info["psn_name"] == "张三"
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", info["setl_time"])
    # Yuan go out as raw JSON numbers with exactly two decimals.
    assert '"medfee_sumamt":70.99' in response.text
    for key in ("fund_pay_sumamt", "acct_pay", "psn_cash_pay"):
        assert re.search(rf'"{key}":\d+\.\d\d[,}}]', response.text), key


def test_settlement_is_idempotent_by_ipt_otp_no(peer: Peer) -> None:
    visit = Visit()
    first = answer_of(insurance_call(peer, "2207", visit.data()))["output"]["setlinfo"]
    again = answer_of(insurance_call(peer, "2207", visit.data()))["output"]["setlinfo"]
    assert again == first
    assert len(peer.client.get("/api/settlements").json()["results"]) == 1
    other_cert = Visit(ipt_otp_no=visit.ipt_otp_no)
    refused = answer_of(insurance_call(peer, "2207", other_cert.data()))
    assert refused["infcode"] == -1


def test_account_balance_goes_down_and_a_reversal_restores_it(peer: Peer) -> None:
    coverage = peer.admin("/_coverage", {"account_balance": 1500})
    assert coverage.json()["account_balance"] == 1500
    assert coverage.json()["fund_ratio"] == 0.7  # missing keys keep their value
    cert = "330106199001011234"
    first = Visit(cert_no=cert, items=[("A", 10000, 1)])  # account share 1500: takes it all
    one = answer_of(insurance_call(peer, "2207", first.data()))["output"]["setlinfo"]
    assert (fen(one["fund_pay_sumamt"]), fen(one["acct_pay"]), fen(one["psn_cash_pay"])) == (
        7000,
        1500,
        1500,
    )
    second = Visit(cert_no=cert, items=[("A", 10000, 1)])
    two = answer_of(insurance_call(peer, "2207", second.data()))["output"]["setlinfo"]
    assert (fen(two["acct_pay"]), fen(two["psn_cash_pay"])) == (0, 3000)  # balance spent

    reversal = {"setl_id": one["setl_id"], "mdtrt_id": one["mdtrt_id"], "psn_no": one["psn_no"]}
    response = insurance_call(peer, "2208", reversal)
    reversed_ = answer_of(response)
    assert reversed_["infcode"] == 0
    info = reversed_["output"]["setlinfo"]
    assert info["setl_id"] != one["setl_id"]
    amounts = ("medfee_sumamt", "fund_pay_sumamt", "acct_pay", "psn_cash_pay")
    assert [fen(info[k]) for k in amounts] == [-10000, -7000, -1500, -1500]
    assert '"medfee_sumamt":-100.00' in response.text
    # Reversing twice answers the same reversal.
    assert answer_of(insurance_call(peer, "2208", reversal))["output"] == reversed_["output"]
    # The balance is back.
    third = Visit(cert_no=cert, items=[("A", 10000, 1)])
    three = answer_of(insurance_call(peer, "2207", third.data()))["output"]["setlinfo"]
    assert fen(three["acct_pay"]) == 1500


def test_coverage_ratios(peer: Peer) -> None:
    peer.admin("/_coverage", {"fund_ratio": 0.5, "account_ratio": 0.25})
    visit = Visit(items=[("A", 333, 3)])  # 999 fen
    info = answer_of(insurance_call(peer, "2207", visit.data()))["output"]["setlinfo"]
    parts = (fen(info["fund_pay_sumamt"]), fen(info["acct_pay"]), fen(info["psn_cash_pay"]))
    assert parts == expected_split(999, 50_000, "0.5", "0.25") == (499, 125, 375)
    assert error_code(peer.admin("/_coverage", {"fund_ratio": 1.5})) == (400, "INVALID_REQUEST")


def test_settlement_refusals(peer: Peer) -> None:
    visit = Visit()
    mismatch = answer_of(insurance_call(peer, "2207", visit.data(medfee=visit.total + 1)))
    assert mismatch["infcode"] == -1
    assert mismatch["err_msg"]
    assert mismatch["output"] == {}

    peer.admin("/_coverage", {"uninsured": ["110101200001011234"]})
    uninsured = Visit(cert_no="110101200001011234")
    refused = answer_of(insurance_call(peer, "2207", uninsured.data()))
    assert (refused["infcode"], refused["err_msg"]) == (-1, "参保信息不存在")

    unknown = answer_of(
        insurance_call(peer, "2208", {"setl_id": "S-none", "mdtrt_id": "M", "psn_no": "P"})
    )
    assert unknown["infcode"] == -1
    assert answer_of(insurance_call(peer, "9999", {}))["infcode"] == -1
    assert peer.client.get("/api/settlements").json()["results"] == []


def test_insurance_signature(peer: Peer) -> None:
    visit = Visit()
    bad = insurance_call(peer, "2207", visit.data(), secret="wrong")
    assert error_code(bad) == (401, "SIGN_ERROR")
    stale = insurance_call(peer, "2207", visit.data(), timestamp=int(time.time()) - 400)
    assert error_code(stale) == (401, "SIGN_ERROR")
    stranger = Institution("someone-else", INSTITUTION.secret)
    assert error_code(insurance_call(peer, "2207", visit.data(), institution=stranger)) == (
        401,
        "SIGN_ERROR",
    )
    nonce = secrets.token_hex(16)
    assert answer_of(insurance_call(peer, "2207", visit.data(), nonce=nonce))["infcode"] == 0
    replay = insurance_call(peer, "2207", visit.data(), nonce=nonce)
    assert error_code(replay) == (401, "SIGN_ERROR")


# -- restart -----------------------------------------------------------------------------


def test_restart_keeps_the_store_and_resumes_pending_notifications(
    tmp_path: Path, receiver: Receiver
) -> None:
    db, key = tmp_path / "peer.sqlite3", tmp_path / "gateway.pem"
    sink = receiver.sink()
    sink.answer(then=500)  # the merchant is down
    running = start_peer(tmp_path, db, key)
    public_key, serial = pinned_key(key)
    try:
        with httpx.Client(base_url=running.url, timeout=10, trust_env=False) as client:
            first = Peer(running.url, client, public_key, serial, db)
            order = paid_order(first, sink, total=777)
            sink.wait(2)  # failed twice
            nonce = secrets.token_hex(16)
            assert query(first, order["out_trade_no"]).status_code == 200
            empty_bill = call(first, "GET", "/v3/bill/tradebill?bill_date=2001-01-01", nonce=nonce)
            assert empty_bill.status_code == 200
    finally:
        running.stop()
    failed = len(sink.deliveries)
    sink.answer(then=200)  # the merchant is back

    running = start_peer(tmp_path, db, key)  # another port, the same store and key
    try:
        assert pinned_key(key)[1] == serial  # the key file was kept, not regenerated
        with httpx.Client(base_url=running.url, timeout=10, trust_env=False) as client:
            second = Peer(running.url, client, public_key, serial, db)
            # Resumed without being asked: the next delivery is answered 200.
            deliveries = sink.wait(failed + 1, timeout=10)
            assert deliveries[-1].status == 200
            assert opened(second, deliveries[-1])["out_trade_no"] == order["out_trade_no"]
            record = notification_when(second, order["out_trade_no"], lambda n: n["delivered"])
            # (A delivery cut short by the stop may have reached the merchant unrecorded.)
            assert 3 <= record["attempts"] <= len(sink.deliveries)
            kept = query(second, order["out_trade_no"]).json()
            assert (kept["trade_state"], kept["amount"]["total"]) == ("SUCCESS", 777)
            assert kept["transaction_id"] == order["transaction_id"]
            # Nonces survive too.
            replay = call(second, "GET", "/v3/bill/tradebill?bill_date=2001-01-01", nonce=nonce)
            assert error_code(replay) == (401, "SIGN_ERROR")
    finally:
        running.stop()
