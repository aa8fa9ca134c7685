"""The README's demo: the whole system starts on the embedded default (SQLite, in-memory
channel layer, broker-less worker) with seeded accounts whose tokens work."""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from io import StringIO
from pathlib import Path

import httpx
import pytest
from django.core.management import call_command

from backend.audit.services import audit_chain_verify
from backend.identity.models import ApiToken, Role, User
from backend.identity.services import api_token_authenticate, totp_code_at, totp_verify
from backend.organisations.models import Hospital, Practitioner
from backend.patients.models import PatientProfile
from consultations.models import PriorDiagnosis
from prescriptions.models import Drug

ROOT = Path(__file__).resolve().parent.parent
ROLES = {"patient", "doctor", "pharmacist", "pharmacy_staff", "regulator", "administrator"}


def _seed() -> dict:
    out = StringIO()
    call_command("seed_demo", stdout=out)
    return json.loads(out.getvalue())


@pytest.mark.django_db
@pytest.mark.usefixtures("icd10")
def test_seed_demo_is_idempotent_and_prints_working_credentials():
    first = _seed()
    counts = (
        User.objects.count(),
        Hospital.objects.count(),
        Practitioner.objects.count(),
        PatientProfile.objects.count(),
    )
    second = _seed()
    assert counts == (
        User.objects.count(),
        Hospital.objects.count(),
        Practitioner.objects.count(),
        PatientProfile.objects.count(),
    )
    assert set(second["tokens"]) == ROLES
    # Tokens are re-issued each run; the previous run's are revoked.
    old = first["tokens"]["doctor"]
    assert ApiToken.objects.get(prefix=old.split("_")[1]).revoked_at is not None
    for role, key in second["tokens"].items():
        user, _ = api_token_authenticate(key=key)
        assert user.role == role
    # Every doctor and pharmacist gets a TOTP secret a script can compute codes from.
    staff = [a for a in second["accounts"] if a["role"] in (Role.DOCTOR, Role.PHARMACIST)]
    assert len(staff) == 3
    for account in staff:
        user = User.objects.get(username=account["username"])
        from django.utils import timezone

        totp_verify(
            user=user, code=totp_code_at(secret=account["totp_secret"], when=timezone.now())
        )
    # One patient has a dependent child.
    relations = sorted(p["relation"] for p in second["patients"].values())
    assert relations == ["child", "self", "self"]
    # Each patient (the child too) has a prior offline diagnosis, so follow-ups can start,
    # and a catalogue with at least one controlled drug exists.
    for key, patient in second["patients"].items():
        record = PriorDiagnosis.objects.get(pk=second["prior_diagnoses"][key])
        assert str(record.profile_id) == patient["profile_id"]
    assert PriorDiagnosis.objects.count() == 3
    assert Drug.objects.exclude(control_class="none").exists()
    assert audit_chain_verify().ok


@pytest.mark.django_db
def test_seed_demo_refuses_outside_demo_mode(settings):
    from django.core.management import CommandError

    settings.DEMO_MODE = False
    with pytest.raises(CommandError, match="DEMO_MODE=1"):
        call_command("seed_demo", stdout=StringIO())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_demo_command_serves_the_whole_system_on_the_embedded_default(tmp_path):
    port = _free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "DJANGO_SETTINGS_MODULE"}
    }
    env.update(
        DEMO_MODE="1",
        VAR_DIR=str(tmp_path),
        DEMO_PORT=str(port),
        REGULATOR_PEER_PORT=str(_free_port()),
        PAYMENT_PEER_PORT=str(_free_port()),
        REGULATOR_SWEEP_SECONDS="1",
    )
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "run_demo"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        health = None
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"demo exited early:\n{proc.stdout.read() if proc.stdout else ''}")
            try:
                health = httpx.get(f"{base}/healthz", timeout=2)
                break
            except httpx.HTTPError:
                time.sleep(0.3)
        assert health is not None, "demo did not answer within 90 s"
        assert health.status_code == 200
        assert health.json() == {
            "status": "ok",
            "checks": {"database": "ok", "channel_layer": "ok", "broker": "ok"},
        }
        assert (tmp_path / "db.sqlite3").exists()
        docs = httpx.get(f"{base}/api/docs/", timeout=5)
        assert docs.status_code == 200
        schema = httpx.get(
            f"{base}/api/schema/", timeout=10, headers={"Accept": "application/json"}
        )
        assert "/api/mobile/v1/me" in schema.json()["paths"]
        seeded = json.loads((tmp_path / "demo-accounts.json").read_text())
        for role, key in seeded["tokens"].items():
            me = httpx.get(
                f"{base}/api/mobile/v1/me", headers={"Authorization": f"Token {key}"}, timeout=5
            )
            assert me.status_code == 200, me.text
            assert me.json()["role"] == role
        patient = next(a for a in seeded["accounts"] if a["role"] == "patient")
        me = httpx.get(
            f"{base}/api/mobile/v1/me",
            headers={"Authorization": f"Bearer {patient['jwt']['access']}"},
            timeout=5,
        )
        assert me.json()["username"] == patient["username"]
        _prescription_through_the_demo(base, seeded, tmp_path)
        _the_platform_received_it(seeded["peers"]["regulator"]["url"])
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    assert proc.returncode == 0


def _console(base: str, account: dict, step: int) -> httpx.Client:
    """Sign in to the console as a browser would: CSRF cookie, password, TOTP code."""
    client = httpx.Client(base_url=base, timeout=10)
    token = client.get("/api/console/v1/auth/csrf").json()["csrf_token"]
    client.headers["X-CSRFToken"] = token
    login = client.post(
        "/api/console/v1/auth/login",
        json={"username": account["username"], "password": account["password"]},
    )
    assert login.status_code == 200, login.text
    totp = client.post("/api/console/v1/auth/totp", json={"code": _code(account, step)})
    assert totp.status_code == 200, totp.text
    client.headers["X-CSRFToken"] = client.cookies["csrftoken"]
    return client


def _code(account: dict, step: int) -> str:
    """The code of the 30-second step ``step`` from now (-1, 0 or 1 are accepted once)."""
    when = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=30 * step)
    return totp_code_at(secret=account["totp_secret"], when=when)


def _prescription_through_the_demo(base: str, seeded: dict, tmp_path: Path) -> None:
    """A script drives the demo as CONTRACT promises: a follow-up, a signed prescription,
    the pharmacist's approval, a pharmacy's claim, offline verification, dispense."""
    accounts = {a["username"]: a for a in seeded["accounts"]}
    doctor, pharmacist = accounts["dr.li"], accounts["ph.zhao"]
    patient = accounts["patient.zhang"]
    mobile = httpx.Client(
        base_url=f"{base}/api/mobile/v1",
        headers={"Authorization": f"Bearer {patient['jwt']['access']}"},
        timeout=10,
    )
    doctors = mobile.get("/doctors").json()["results"]
    li = next(d for d in doctors if d["name"] == doctor["display_name"])
    consultation = mobile.post(
        "/consultations",
        json={
            "profile": seeded["patients"]["zhang"]["profile_id"],
            "department": li["department"],
            "doctor": li["id"],
            "complaint": "血压稳定，需要续药",
        },
    )
    assert consultation.status_code == 201, consultation.text
    consultation_id = consultation.json()["id"]
    # The demo department charges a fee: the consultation waits, out of the queue, until
    # the patient pays on the gateway's page and its notification reaches the server.
    assert consultation.json()["status"] == "requested"
    fee = _order_of(mobile, consultation_id)
    assert (fee["kind"], fee["status"], fee["total"]) == ("consultation_fee", "unpaid", 2000)
    _pay(mobile, fee["id"], "wechat")
    _wait_for(lambda: mobile.get(f"/consultations/{consultation_id}").json()["status"] == "waiting")
    assert _order_of(mobile, consultation_id)["status"] == "paid"

    console = _console(base, doctor, step=-1)
    assert console.post("/api/console/v1/identity-check").json()["passed"] is True
    accepted = console.post(
        f"/api/console/v1/consultations/{consultation_id}/accept",
        json={"follow_up_confirmed": True},
    )
    assert accepted.status_code == 200, accepted.text
    draft = console.post(
        "/api/console/v1/prescriptions",
        json={
            "consultation": consultation_id,
            "lines": [
                {
                    "drug": "DEMO-0001",
                    "dose": "5",
                    "dose_unit": "mg",
                    "frequency": "qd",
                    "days": 7,
                    "quantity": 1,
                }
            ],
        },
    )
    assert draft.status_code == 201, draft.text
    prescription_id = draft.json()["id"]
    signed = console.post(
        f"/api/console/v1/prescriptions/{prescription_id}/sign", json={"otp": _code(doctor, 0)}
    )
    assert signed.status_code == 200, signed.text
    assert signed.json()["status"] == "under_review"

    review = _console(base, pharmacist, step=-1)
    approved = review.post(
        f"/api/console/v1/prescriptions/{prescription_id}/approve",
        json={"otp": _code(pharmacist, 0)},
    )
    assert approved.status_code == 200, approved.text

    # Approved: now (and only now) its order exists; insurance settles most of it and the
    # patient pays the rest on the gateway's page.
    drugs = _order_of(mobile, prescription_id)
    assert (drugs["kind"], drugs["status"]) == ("prescription", "unpaid")
    paying = _pay(mobile, drugs["id"], "insurance")
    split = paying["insurance"]
    assert split["fund_pay_sumamt"] + split["acct_pay"] + split["psn_cash_pay"] == drugs["total"]
    _wait_for(lambda: _order_of(mobile, prescription_id)["status"] == "paid")

    code = mobile.get(f"/prescriptions/{prescription_id}").json()["access_code"]
    pharmacy = httpx.Client(
        base_url=f"{base}/api/pharmacy/v1",
        headers={"Authorization": f"Token {seeded['tokens']['pharmacy_staff']}"},
        timeout=10,
    )
    claim = pharmacy.post(
        "/prescriptions/claim", json={"prescription_id": prescription_id, "access_code": code}
    )
    assert claim.status_code == 200, claim.text
    bundle = pharmacy.get(f"/prescriptions/{prescription_id}/bundle").json()
    (tmp_path / "bundle.json").write_text(json.dumps(bundle))
    root = httpx.get(f"{base}/api/pki/v1/hospitals/{seeded['hospital']['id']}/root.pem")
    (tmp_path / "root.pem").write_text(root.text)
    verified = subprocess.run(
        [sys.executable, "-m", "prescriptions.verify", "bundle.json", "--root", "root.pem"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert json.loads(verified.stdout)["prescription_id"] == prescription_id
    dispensed = pharmacy.post(
        f"/prescriptions/{prescription_id}/dispense",
        json={
            "claim_secret": claim.json()["claim_secret"],
            "items": [{"line": 1, "quantity": 1, "batch_number": "B20261123"}],
            "pharmacist": {"name": "陈药师", "licence_number": "YS330100001"},
        },
    )
    assert dispensed.status_code == 200, dispensed.text
    assert dispensed.json()["status"] == "dispensed"


def _order_of(mobile: httpx.Client, subject_id: str) -> dict:
    orders = mobile.get("/orders").json()["results"]
    return next(o for o in orders if o["subject"] == subject_id)


def _pay(mobile: httpx.Client, order_id: str, channel: str) -> dict:
    started = mobile.post(f"/orders/{order_id}/pay", json={"channel": channel})
    assert started.status_code == 200, started.text
    body = started.json()
    if not body["paid"]:
        paid = httpx.post(body["pay_url"], headers={"Accept": "application/json"}, timeout=10)
        assert paid.status_code == 200, paid.text
    return dict(body)


def _wait_for(condition: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def _the_platform_received_it(peer: str) -> None:
    """The demo's worker delivers the records to the bundled platform peer."""
    wanted = {"filing.institution", "consultation.accepted", "prescription.issued", "review"}
    wanted |= {"dispense.dispense"}
    deadline = time.monotonic() + 60
    types: set[str] = set()
    while time.monotonic() < deadline:
        page = httpx.get(f"{peer}/api/records", params={"limit": 500}, timeout=5).json()
        types = {r["record_type"] for r in page["results"]}
        if wanted <= types:
            break
        time.sleep(0.5)
    assert wanted <= types, types
    assert "<table" in httpx.get(f"{peer}/", timeout=5).text
