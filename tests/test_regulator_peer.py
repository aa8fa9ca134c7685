"""The bundled provincial regulatory platform (``peers.regulator``), over real HTTP.

One peer process per module (``python -m peers.regulator``), reset before each test. Every
request is built here by hand, as the other side of the wire would: HMAC-SHA256 with
hashlib, SM4/HMAC-SM3 with cryptography, and a self-made institution seal certificate
signing the RFC 8785 form of each payload. Nothing from the backend is imported.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import secrets
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import rfc8785
from cryptography import x509
from cryptography.hazmat.primitives import hashes, padding, serialization
from cryptography.hazmat.primitives import hmac as crypto_hmac
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.x509.oid import NameOID

ROOT = Path(__file__).resolve().parent.parent
HOSPITAL = "H330100001"
OTHER_HOSPITAL = "H330200002"
ADMIN_TOKEN = "peer-admin-token"


@dataclass(frozen=True)
class App:
    app_id: str
    secret: str
    sm4_key: str = ""
    hospital_code: str = ""

    def spec(self) -> str:
        return f"{self.app_id}:{self.secret}:{self.sm4_key}:{self.hospital_code}"


# JSON_APP speaks only json_hmac (no SM4 key); SM4_APP both; OPEN_APP both, any hospital.
JSON_APP = App("JSON-APP", "json-secret", "", HOSPITAL)
SM4_APP = App("SM4-APP", "sm4-secret", "0123456789abcdeffedcba9876543210", HOSPITAL)
OPEN_APP = App("OPEN-APP", "open-secret", "00112233445566778899aabbccddeeff", "")
PROTOCOLS = ["json_hmac", "nhsa_sm4"]


# -- the peer process ----------------------------------------------------------------


@dataclass
class Peer:
    url: str
    client: httpx.Client
    db: Path

    def admin(self, path: str, data: Any = None, method: str = "POST") -> httpx.Response:
        return self.client.request(method, path, json=data, headers={"X-Admin-Token": ADMIN_TOKEN})

    def faults(self, **faults: Any) -> dict[str, Any]:
        response = self.admin("/_faults", faults)
        assert response.status_code == 200, response.text
        return response.json()

    def listing(self, after: int = 0, limit: int = 100) -> dict[str, Any]:
        response = self.client.get("/api/records", params={"after": after, "limit": limit})
        assert response.status_code == 200, response.text
        return response.json()

    def stats(self) -> dict[str, Any]:
        return self.client.get("/api/stats").json()

    def rows(self, record_id: str | None = None) -> int:
        """Rows in the peer's own SQLite store (read directly, beside the peer)."""
        with sqlite3.connect(self.db) as db:
            if record_id is None:
                return int(db.execute("SELECT COUNT(*) FROM records").fetchone()[0])
            query = "SELECT COUNT(*) FROM records WHERE record_id = ?"
            return int(db.execute(query, (record_id,)).fetchone()[0])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def peer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Peer]:
    folder = tmp_path_factory.mktemp("regulator-peer")
    db = folder / "regulator.sqlite3"
    port = _free_port()
    command = [sys.executable, "-m", "peers.regulator", "--port", str(port), "--db", str(db)]
    for app in (JSON_APP, SM4_APP, OPEN_APP):
        command += ["--app", app.spec()]
    command += ["--admin-token", ADMIN_TOKEN]
    with (folder / "stderr.log").open("w") as stderr:
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
        errors = (folder / "stderr.log").read_text()
        pytest.fail(f"the regulator peer did not start: {lines!r}\n{errors}")
    url = f"http://127.0.0.1:{port}"
    assert url in lines[0]
    client = httpx.Client(base_url=url, timeout=10)
    try:
        yield Peer(url, client, db)
    finally:
        client.close()
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout:
            process.stdout.close()


@pytest.fixture(autouse=True)
def clean(peer: Peer) -> None:
    assert peer.admin("/_faults", {}).status_code == 200
    assert peer.admin("/_reset").status_code == 200


# -- the hospital's side, by hand ----------------------------------------------------


@dataclass(frozen=True)
class Seal:
    key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
    pem: str
    fingerprint: str
    alg: str

    def sign(self, payload: dict[str, Any]) -> dict[str, str]:
        data = rfc8785.dumps(payload)
        if isinstance(self.key, ec.EllipticCurvePrivateKey):
            value = self.key.sign(data, ec.ECDSA(hashes.SHA256()))
        else:
            value = self.key.sign(data)
        return {
            "alg": self.alg,
            "cert_sha256": self.fingerprint,
            "value": base64.b64encode(value).decode(),
        }


def make_seal(kind: str = "ecdsa", name: str = "示范互联网医院 电子印章") -> Seal:
    key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
    if kind == "ecdsa":
        key, alg = ec.generate_private_key(ec.SECP256R1()), "ecdsa-p256-sha256"
    else:
        key, alg = ed25519.Ed25519PrivateKey.generate(), "ed25519"
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=365))
        .sign(key, hashes.SHA256() if kind == "ecdsa" else None)
    )
    return Seal(
        key=key,
        pem=certificate.public_bytes(serialization.Encoding.PEM).decode(),
        fingerprint=hashlib.sha256(
            certificate.public_bytes(serialization.Encoding.DER)
        ).hexdigest(),
        alg=alg,
    )


SEAL = make_seal()
OTHER_SEAL = make_seal(name="另一家医院")


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def record(
    record_type: str,
    payload: dict[str, Any],
    seal: Seal = SEAL,
    *,
    hospital: str = HOSPITAL,
    record_id: str | None = None,
) -> dict[str, Any]:
    return {
        "record_id": record_id or f"rec-{secrets.token_hex(8)}",
        "record_type": record_type,
        "occurred_at": _now(),
        "hospital_code": hospital,
        "payload": payload,
        "payload_signature": seal.sign(payload),
    }


def filing(seal: Seal = SEAL, *, hospital: str = HOSPITAL) -> dict[str, Any]:
    payload = {
        "platform_id": "IH-330100-0001",
        "uscc": "91330100MA2B3C4D5E",
        "name": "杭州示范互联网医院",
        "practice_licence_number": "PDY330100-0001",
        "practice_licence_valid_until": "2030-12-31",
        "seal_certificate_pem": seal.pem,
    }
    return record("filing.institution", payload, seal, hospital=hospital)


def alert(seal: Seal = SEAL, *, hospital: str = HOSPITAL, **details: Any) -> dict[str, Any]:
    payload = {
        "alert_id": f"AL-{secrets.token_hex(4)}",
        "kind": "prescription",
        "rule": "R-DOSE-01",
        "raised_at": _now(),
        "details": details,
    }
    return record("alert", payload, seal, hospital=hospital)


def encode(body: dict[str, Any] | bytes) -> bytes:
    if isinstance(body, bytes):
        return body
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def send_json(
    peer: Peer,
    body: dict[str, Any] | bytes,
    *,
    app: App = JSON_APP,
    timestamp: int | None = None,
    nonce: str | None = None,
    secret: str | None = None,
    tamper: bytes | None = None,
    timeout: float | None = None,
) -> httpx.Response:
    raw = encode(body)
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    nonce = nonce or secrets.token_hex(16)
    digest = hashlib.sha256(raw).hexdigest()
    message = f"POST\n/records\n{stamp}\n{nonce}\n{digest}".encode()
    signature = hmac.new((secret or app.secret).encode(), message, hashlib.sha256).hexdigest()
    headers = {
        "Content-Type": "application/json",
        "X-App-Id": app.app_id,
        "X-Timestamp": stamp,
        "X-Nonce": nonce,
        "X-Signature": signature,
    }
    return peer.client.post(
        "/records",
        content=tamper if tamper is not None else raw,
        headers=headers,
        timeout=timeout if timeout is not None else 10,
    )


def sm4_encrypt(key_hex: str, plaintext: bytes) -> bytes:
    padder = padding.PKCS7(128).padder()
    padded = padder.update(plaintext) + padder.finalize()
    encryptor = Cipher(algorithms.SM4(bytes.fromhex(key_hex)), modes.ECB()).encryptor()  # noqa: S305
    return encryptor.update(padded) + encryptor.finalize()


def sm3_sign(secret: str, fields: dict[str, str]) -> str:
    text = "&".join(f"{k}={fields[k]}" for k in sorted(fields) if fields[k] != "")
    mac = crypto_hmac.HMAC(secret.encode(), hashes.SM3())
    mac.update(text.encode())
    return mac.finalize().hex()


def envelope(
    body: dict[str, Any] | bytes,
    *,
    app: App = SM4_APP,
    timestamp_ms: int | None = None,
    nonce: str | None = None,
    key: str | None = None,
    **overrides: str,
) -> dict[str, str]:
    fields = {
        "appId": app.app_id,
        "version": "1.0.0",
        "timestamp": str(int(time.time() * 1000) if timestamp_ms is None else timestamp_ms),
        "nonce": nonce or secrets.token_hex(16),
        "encType": "SM4",
        "signType": "HMAC-SM3",
        "encData": base64.b64encode(
            sm4_encrypt(key or app.sm4_key or "00" * 16, encode(body))
        ).decode(),
    }
    fields.update(overrides)
    return {**fields, "signData": sm3_sign(app.secret, fields)}


def send_nhsa(
    peer: Peer,
    body: dict[str, Any] | bytes,
    *,
    raw: bytes | None = None,
    timeout: float | None = None,
    **options: Any,
) -> httpx.Response:
    content = raw if raw is not None else encode(dict(envelope(body, **options)))
    return peer.client.post(
        "/nhsa/records",
        content=content,
        headers={"Content-Type": "application/json"},
        timeout=timeout if timeout is not None else 10,
    )


@dataclass(frozen=True)
class Answer:
    http: int
    status: str = ""
    ack_id: str = ""
    code: str = ""


def answer(response: httpx.Response, protocol: str) -> Answer:
    data = response.json()
    if response.status_code != 200:
        assert isinstance(data.get("code"), str), data
        assert isinstance(data.get("message"), str), data
        return Answer(response.status_code, code=data["code"])
    if protocol == "json_hmac":
        assert set(data) == {"status", "ack_id"}, data
        return Answer(200, data["status"], data["ack_id"])
    assert data["code"] == 0, data
    assert data["message"] == "success"
    return Answer(200, data["data"]["status"], data["data"]["ackId"])


def send(
    peer: Peer, body: dict[str, Any] | bytes, protocol: str, *, app: App | None = None, **kw: Any
) -> Answer:
    if protocol == "json_hmac":
        return answer(send_json(peer, body, app=app or JSON_APP, **kw), protocol)
    return answer(send_nhsa(peer, body, app=app or SM4_APP, **kw), protocol)


def file_seal(peer: Peer, seal: Seal = SEAL, *, hospital: str = HOSPITAL) -> Answer:
    app = JSON_APP if hospital == HOSPITAL else OPEN_APP
    result = send(peer, filing(seal, hospital=hospital), "json_hmac", app=app)
    assert result.status == "accepted", result
    return result


# -- receiving -----------------------------------------------------------------------


def test_health_and_empty_store(peer: Peer) -> None:
    assert peer.client.get("/healthz").json() == {"status": "ok"}
    assert peer.listing() == {"results": [], "next_after": 0}
    assert peer.client.get("/nowhere").status_code == 404
    assert peer.client.get("/records").status_code == 405


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_accepted_records_are_stored_in_order(peer: Peer, protocol: str) -> None:
    first = filing()
    second = alert(note="首次")
    one = send(peer, first, protocol)
    two = send(peer, second, protocol)
    assert one.status == two.status == "accepted"
    assert one.ack_id != two.ack_id

    results = peer.listing()["results"]
    assert [row["seq"] for row in results] == [1, 2]
    assert [row["record_id"] for row in results] == [first["record_id"], second["record_id"]]
    assert [row["ack_id"] for row in results] == [one.ack_id, two.ack_id]
    assert results[1]["payload"] == second["payload"]
    assert results[1]["record_type"] == "alert"
    assert results[1]["hospital_code"] == HOSPITAL
    assert results[1]["occurred_at"] == second["occurred_at"]
    assert results[1]["received_at"].endswith("Z")
    assert peer.stats()["certificates"] == 1


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_duplicate_answers_the_original_ack_without_a_second_row(peer: Peer, protocol: str) -> None:
    body = filing()
    first = send(peer, body, protocol)
    again = send(peer, body, protocol)  # a retry: fresh timestamp and nonce
    assert first.status == "accepted"
    assert again == Answer(200, "duplicate", first.ack_id)
    # The same record over the other protocol is still the same record.
    other = "nhsa_sm4" if protocol == "json_hmac" else "json_hmac"
    assert send(peer, body, other) == Answer(200, "duplicate", first.ack_id)
    assert peer.rows(body["record_id"]) == 1
    assert peer.rows() == 1
    assert peer.stats()["duplicates"] == 2


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_unknown_app(peer: Peer, protocol: str) -> None:
    stranger = App("NOBODY", "whatever", SM4_APP.sm4_key)
    assert send(peer, filing(), protocol, app=stranger) == Answer(401, code="unknown_app")
    assert peer.rows() == 0


def test_app_without_sm4_key_cannot_use_the_envelope(peer: Peer) -> None:
    response = send_nhsa(peer, filing(), app=JSON_APP, key=SM4_APP.sm4_key)
    assert answer(response, "nhsa_sm4") == Answer(401, code="unknown_app")


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_timestamp_window(peer: Peer, protocol: str) -> None:
    file_seal(peer)
    now = int(time.time())

    def at(seconds: int) -> dict[str, Any]:
        if protocol == "json_hmac":
            return {"timestamp": seconds}
        return {"timestamp_ms": seconds * 1000}

    for offset in (-400, 400):
        assert send(peer, alert(), protocol, **at(now + offset)) == Answer(
            401, code="stale_timestamp"
        )
    assert send(peer, alert(), protocol, **at(now - 250)).status == "accepted"
    assert peer.rows() == 2


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_nonce_reuse_is_refused_per_app(peer: Peer, protocol: str) -> None:
    file_seal(peer)
    nonce = secrets.token_hex(16)
    assert send(peer, alert(), protocol, nonce=nonce).status == "accepted"
    assert send(peer, alert(), protocol, nonce=nonce) == Answer(401, code="nonce_reused")
    # Another app may use the same nonce.
    assert send(peer, alert(), protocol, app=OPEN_APP, nonce=nonce).status == "accepted"
    assert peer.rows() == 3


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_forged_request_does_not_burn_the_nonce(peer: Peer, protocol: str) -> None:
    nonce = secrets.token_hex(16)
    app_id = SM4_APP.app_id if protocol == "nhsa_sm4" else JSON_APP.app_id
    forged = App(app_id, "not-the-secret", SM4_APP.sm4_key)
    assert send(peer, filing(), protocol, app=forged, nonce=nonce) == Answer(
        401, code="bad_signature"
    )
    assert send(peer, filing(), protocol, nonce=nonce).status == "accepted"


def test_bad_hmac_signature(peer: Peer) -> None:
    body = filing()
    assert answer(send_json(peer, body, secret="not-the-secret"), "json_hmac") == Answer(
        401, code="bad_signature"
    )
    tampered = encode({**body, "hospital_code": "H999"})
    assert answer(send_json(peer, body, tamper=tampered), "json_hmac") == Answer(
        401, code="bad_signature"
    )
    # The path is signed: a signature made for another path does not verify.
    raw = encode(body)
    stamp, nonce = str(int(time.time())), secrets.token_hex(8)
    message = f"POST\n/other\n{stamp}\n{nonce}\n{hashlib.sha256(raw).hexdigest()}".encode()
    response = peer.client.post(
        "/records",
        content=raw,
        headers={
            "X-App-Id": JSON_APP.app_id,
            "X-Timestamp": stamp,
            "X-Nonce": nonce,
            "X-Signature": hmac.new(JSON_APP.secret.encode(), message, "sha256").hexdigest(),
        },
    )
    assert answer(response, "json_hmac") == Answer(401, code="bad_signature")
    assert peer.rows() == 0


def test_bad_sm3_signature(peer: Peer) -> None:
    good = envelope(filing())
    other = envelope(alert())
    swapped = {**good, "encData": other["encData"]}  # signData no longer covers encData
    response = send_nhsa(peer, {}, raw=encode(dict(swapped)))
    assert answer(response, "nhsa_sm4") == Answer(401, code="bad_signature")
    flipped = {**good, "signData": "0" * 64}
    response = send_nhsa(peer, {}, raw=encode(dict(flipped)))
    assert answer(response, "nhsa_sm4") == Answer(401, code="bad_signature")
    assert peer.rows() == 0


def test_malformed_json_requests(peer: Peer) -> None:
    assert answer(send_json(peer, b"{not json"), "json_hmac") == Answer(400, code="malformed")
    assert answer(send_json(peer, b"[1, 2]"), "json_hmac") == Answer(400, code="malformed")
    body = filing()
    del body["record_id"]
    assert answer(send_json(peer, body), "json_hmac") == Answer(400, code="malformed")
    body = filing()
    body["payload_signature"] = {"alg": "ed25519"}
    assert answer(send_json(peer, body), "json_hmac") == Answer(400, code="malformed")
    response = peer.client.post(
        "/records",
        content=encode(filing()),
        headers={"X-App-Id": JSON_APP.app_id, "X-Timestamp": "yesterday", "X-Nonce": "n"},
    )
    assert answer(response, "json_hmac") == Answer(400, code="malformed")
    assert peer.rows() == 0


def test_malformed_envelopes(peer: Peer) -> None:
    def refused(response: httpx.Response) -> Answer:
        return answer(response, "nhsa_sm4")

    assert refused(send_nhsa(peer, {}, raw=b"<xml/>")) == Answer(400, code="malformed")
    incomplete = envelope(filing())
    del incomplete["encData"]
    assert refused(send_nhsa(peer, {}, raw=encode(dict(incomplete)))) == Answer(
        400, code="malformed"
    )
    # Properly signed, but encrypted under another key: it does not decrypt.
    wrong_key = send_nhsa(peer, filing(), key="ff" * 16)
    assert refused(wrong_key) == Answer(400, code="malformed")
    # Properly signed and encrypted, but not a record.
    assert refused(send_nhsa(peer, b"hello")) == Answer(400, code="malformed")
    assert refused(send_nhsa(peer, filing(), encType="AES")) == Answer(400, code="malformed")
    assert peer.rows() == 0


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_wrong_hospital(peer: Peer, protocol: str) -> None:
    body = filing(OTHER_SEAL, hospital=OTHER_HOSPITAL)
    assert send(peer, body, protocol) == Answer(403, code="wrong_hospital")
    # An app without a configured hospital may report for any.
    assert send(peer, body, protocol, app=OPEN_APP).status == "accepted"
    assert peer.rows() == 1


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_unknown_certificate(peer: Peer, protocol: str) -> None:
    assert send(peer, alert(), protocol) == Answer(422, code="unknown_certificate")
    file_seal(peer, OTHER_SEAL, hospital=OTHER_HOSPITAL)
    # Filed, but for another hospital: not this hospital's seal.
    assert send(peer, alert(OTHER_SEAL), protocol) == Answer(422, code="unknown_certificate")
    file_seal(peer)
    assert send(peer, alert(), protocol).status == "accepted"
    assert peer.rows() == 3


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_bad_payload_signature(peer: Peer, protocol: str) -> None:
    # A filing whose payload was changed after sealing.
    body = filing()
    body["payload"]["name"] = "改过的名字"
    assert send(peer, body, protocol) == Answer(422, code="bad_payload_signature")
    # A filing signed by a key other than its certificate's.
    body = filing()
    body["payload_signature"] = {
        **OTHER_SEAL.sign(body["payload"]),
        "cert_sha256": SEAL.fingerprint,
    }
    assert send(peer, body, protocol) == Answer(422, code="bad_payload_signature")
    # A filing whose cert_sha256 is not its certificate's fingerprint.
    body = filing()
    body["payload_signature"]["cert_sha256"] = OTHER_SEAL.fingerprint
    assert send(peer, body, protocol) == Answer(422, code="bad_payload_signature")
    assert peer.stats()["certificates"] == 0

    file_seal(peer)
    body = alert()
    body["payload"]["rule"] = "R-OTHER"
    assert send(peer, body, protocol) == Answer(422, code="bad_payload_signature")
    body = alert()
    body["payload_signature"]["alg"] = "ed25519"  # an ECDSA key
    assert send(peer, body, protocol) == Answer(422, code="bad_payload_signature")
    assert peer.rows() == 1


def test_ed25519_seal(peer: Peer) -> None:
    seal = make_seal("ed25519")
    file_seal(peer, seal)
    assert send(peer, alert(seal), "nhsa_sm4").status == "accepted"
    assert peer.rows() == 2


# -- faults --------------------------------------------------------------------------


def test_faults_need_the_admin_token_and_valid_values(peer: Peer) -> None:
    assert peer.client.post("/_faults", json={"error_rate": 1}).status_code == 401
    assert peer.client.post("/_reset").status_code == 401
    for bad in (
        {"error_rate": 2},
        {"latency_ms": -1},
        {"refuse": {"count": 1}},
        {"explode": True},
        {"seed": "7"},
        {"seed": 1.5},
    ):
        response = peer.admin("/_faults", bad)
        assert response.status_code == 400, bad
        assert response.json()["code"] == "malformed"
    assert peer.admin("/_faults", method="GET").json()["error_rate"] == 0


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_error_rate_answers_500_before_storing(peer: Peer, protocol: str) -> None:
    peer.faults(error_rate=1.0)
    body = filing()
    for _ in range(3):
        assert send(peer, body, protocol) == Answer(500, code="internal_error")
    assert peer.rows() == 0
    assert peer.stats()["injected_5xx"]["error_rate"] == 3
    peer.faults()
    assert send(peer, body, protocol).status == "accepted"


def test_a_seed_replays_the_same_faults(peer: Peer) -> None:
    def outcomes() -> list[int]:
        peer.admin("/_reset")
        peer.faults(error_rate=0.5, seed=42)
        return [send(peer, filing(), "json_hmac").http for _ in range(24)]

    first = outcomes()
    assert peer.admin("/_faults", method="GET").json()["seed"] == 42
    assert first == outcomes()
    assert {200, 500} <= set(first)  # both kinds of answer, in a fixed order


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_lost_ack_is_stored_and_the_retry_is_a_duplicate(peer: Peer, protocol: str) -> None:
    peer.faults(lose_ack_rate=1.0)
    body = filing()
    assert send(peer, body, protocol) == Answer(500, code="internal_error")
    stored = peer.listing()["results"]
    assert [row["record_id"] for row in stored] == [body["record_id"]]
    # The sender retries (new nonce, new timestamp): the platform already has it.
    assert send(peer, body, protocol) == Answer(200, "duplicate", stored[0]["ack_id"])
    assert peer.rows(body["record_id"]) == 1
    assert peer.stats()["injected_5xx"]["lose_ack"] == 1


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_refuse_the_next_n_matching_records(peer: Peer, protocol: str) -> None:
    file_seal(peer)
    peer.faults(
        refuse={"code": "E4001", "message": "诊断编码无效", "count": 2, "record_types": ["alert"]}
    )
    # Not matching: accepted and the count is untouched.
    assert send(peer, filing(), protocol).status == "accepted"
    assert peer.admin("/_faults", method="GET").json()["refuse"]["count"] == 2
    refused = [alert(), alert()]
    for body in refused:
        assert send(peer, body, protocol) == Answer(422, code="E4001")
    assert peer.admin("/_faults", method="GET").json()["refuse"] is None
    assert send(peer, alert(), protocol).status == "accepted"
    assert all(peer.rows(body["record_id"]) == 0 for body in refused)
    assert peer.rows() == 3
    assert peer.stats()["refusals"]["by_code"] == {"E4001": 2}


def test_refusal_message_reaches_the_sender(peer: Peer) -> None:
    file_seal(peer)
    peer.faults(refuse={"code": "E4001", "message": "诊断编码无效", "count": 1})
    response = send_nhsa(peer, alert())
    assert response.status_code == 422
    assert response.json() == {"code": "E4001", "message": "诊断编码无效"}


def test_down_window(peer: Peer) -> None:
    file_seal(peer)
    peer.faults(down_for_seconds=60)
    assert peer.client.get("/healthz").status_code == 503
    assert peer.client.get("/").status_code == 503
    assert send(peer, alert(), "json_hmac") == Answer(503, code="unavailable")
    assert send(peer, alert(), "nhsa_sm4") == Answer(503, code="unavailable")
    assert peer.admin("/_faults", method="GET").json()["down_for_seconds"] > 50
    # Clearing the faults ends a down window at once.
    peer.faults()
    assert peer.client.get("/healthz").status_code == 200
    # And a down window ends by itself.
    ends = time.monotonic() + 1.0
    peer.faults(down_for_seconds=1.0)
    assert peer.client.get("/healthz").status_code == 503
    time.sleep(max(0.0, ends - time.monotonic()) + 0.1)
    assert peer.client.get("/healthz").status_code == 200
    assert send(peer, alert(), "json_hmac").status == "accepted"
    assert peer.rows() == 2
    assert peer.stats()["injected_5xx"]["down"] == 5


def test_latency_is_added_to_every_answer(peer: Peer) -> None:
    peer.faults(latency_ms=300)
    started = time.monotonic()
    assert peer.client.get("/healthz").status_code == 200
    assert time.monotonic() - started >= 0.3
    started = time.monotonic()
    assert send(peer, filing(), "json_hmac").status == "accepted"
    assert time.monotonic() - started >= 0.3


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_hang_beyond_the_client_timeout(peer: Peer, protocol: str) -> None:
    peer.faults(hang_seconds=1.5)
    body = filing()
    sender = send_json if protocol == "json_hmac" else send_nhsa
    with pytest.raises(httpx.ReadTimeout):
        sender(peer, body, timeout=0.4)
    peer.faults()
    # The platform did take the record before it hung: the retry is a duplicate.
    stored = peer.listing()["results"]
    assert [row["record_id"] for row in stored] == [body["record_id"]]
    assert send(peer, body, protocol) == Answer(200, "duplicate", stored[0]["ack_id"])


# -- reading -------------------------------------------------------------------------


def test_listing_pages_are_gap_free(peer: Peer) -> None:
    file_seal(peer)
    peer.faults(refuse={"code": "E4001", "message": "no", "count": 1, "record_types": ["alert"]})
    sent = []
    for index in range(24):
        body = alert(index=index)
        result = send(peer, body, PROTOCOLS[index % 2])
        if index == 0:
            assert result.code == "E4001"  # refused: takes no seq
            continue
        assert result.status == "accepted"
        sent.append(body["record_id"])
        if index % 5 == 0:
            assert send(peer, body, "json_hmac").status == "duplicate"  # takes no seq

    seen: list[dict[str, Any]] = []
    after = 0
    while True:
        page = peer.listing(after=after, limit=10)
        assert len(page["results"]) <= 10
        if not page["results"]:
            assert page["next_after"] == after
            break
        seen += page["results"]
        after = page["next_after"]
        assert after == page["results"][-1]["seq"]
    assert [row["seq"] for row in seen] == list(range(1, 25))
    assert [row["record_id"] for row in seen[1:]] == sent
    assert peer.listing(after=20, limit=2)["results"][0]["seq"] == 21
    for query in ({"after": "x"}, {"limit": "0"}, {"after": "-1"}):
        assert peer.client.get("/api/records", params=query).status_code == 400


def test_concurrent_senders_get_gap_free_seqs(peer: Peer) -> None:
    file_seal(peer)
    bodies = [alert(index=index) for index in range(150)]
    work = [*bodies, *bodies[:30]]  # 30 duplicates among them

    def go(index: int) -> Answer:
        return send(peer, work[index], PROTOCOLS[index % 2])

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(go, range(len(work))))
    assert all(result.http == 200 for result in results)
    assert sum(result.status == "accepted" for result in results) == 150
    seqs = [row["seq"] for row in peer.listing(limit=1000)["results"]]
    assert seqs == list(range(1, 152))
    ack_by_id: dict[str, str] = {}
    for body, result in zip(work, results, strict=True):
        assert ack_by_id.setdefault(body["record_id"], result.ack_id) == result.ack_id


def test_stats(peer: Peer) -> None:
    file_seal(peer)
    body = alert()
    send(peer, body, "json_hmac")
    send(peer, body, "nhsa_sm4")
    send(peer, alert(make_seal()), "json_hmac")
    stats = peer.stats()
    assert stats["total"] == 2
    assert stats["by_record_type"] == {"alert": 1, "filing.institution": 1}
    assert stats["duplicates"] == 1
    assert stats["refusals"] == {"total": 1, "by_code": {"unknown_certificate": 1}}
    assert stats["injected_5xx"]["total"] == 0


def test_page_lists_records_and_escapes_everything(peer: Peer) -> None:
    file_seal(peer)
    body = alert(comment="<script>alert('x')</script>")
    assert send(peer, body, "json_hmac").status == "accepted"
    response = peer.client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    text = response.text
    assert "<script>" not in text
    assert "&lt;script&gt;" in text
    assert body["record_id"] in text
    assert "监管平台" in text
    assert "regulatory platform" in text


def test_reset_empties_the_store(peer: Peer) -> None:
    file_seal(peer)
    assert peer.rows() == 1
    assert peer.admin("/_reset").json() == {"status": "reset"}
    assert peer.rows() == 0
    assert peer.stats()["certificates"] == 0
    assert send(peer, alert(), "json_hmac") == Answer(422, code="unknown_certificate")
    file_seal(peer)
    assert peer.listing()["results"][0]["seq"] == 1
