"""The README's demo: the whole system starts on the embedded default (SQLite, in-memory
channel layer, broker-less worker) with seeded accounts whose tokens work."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
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
    env.update(DEMO_MODE="1", VAR_DIR=str(tmp_path), DEMO_PORT=str(port))
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
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    assert proc.returncode == 0
