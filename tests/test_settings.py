"""Settings fail closed: outside demo mode the process refuses to start without secrets."""

from __future__ import annotations

import base64
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _production_env(tmp_path: Path, **overrides: str) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if key
        not in {
            "DEMO_MODE",
            "SECRET_KEY",
            "FIELD_ENCRYPTION_KEYS",
            "BLIND_INDEX_KEY",
            "ALLOWED_HOSTS",
            "SMS_BACKEND",
            "DEBUG",
            "IDENTITY_PROVIDER",
            "PUSH_BACKEND",
        }
    }
    env.update(
        DJANGO_SETTINGS_MODULE="backend.settings",
        VAR_DIR=str(tmp_path),
        DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}",
        SECRET_KEY=secrets.token_urlsafe(50),
        FIELD_ENCRYPTION_KEYS="k1:" + base64.b64encode(secrets.token_bytes(32)).decode(),
        BLIND_INDEX_KEY=base64.b64encode(secrets.token_bytes(32)).decode(),
        ALLOWED_HOSTS="hospital.example.cn",
        SMS_BACKEND="backend.identity.sms.HttpSmsBackend",
        SMS_HTTP_URL="http://127.0.0.1:9/sms",
        IDENTITY_PROVIDER="backend.organisations.identity_check.DemoIdentityProvider",
        PUSH_BACKEND="backend.notifications.backends.HttpPushBackend",
        PUSH_HTTP_URL="http://127.0.0.1:9/push",
    )
    env.pop("REDIS_URL", None)
    for key, value in overrides.items():
        if value == "":
            env.pop(key, None)
        else:
            env[key] = value
    return env


def _start(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    code = "import django; django.setup(); from django.conf import settings; print(settings.DEBUG)"
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_production_settings_start_with_every_secret(tmp_path):
    result = _start(_production_env(tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"  # DEBUG is off unless asked
    assert not (tmp_path / "demo-secrets.json").exists()


@pytest.mark.parametrize("missing", ["SECRET_KEY", "FIELD_ENCRYPTION_KEYS", "BLIND_INDEX_KEY"])
def test_production_refuses_to_start_without_a_secret(tmp_path, missing):
    result = _start(_production_env(tmp_path, **{missing: ""}))
    assert result.returncode != 0
    assert "Refusing to start" in result.stderr
    assert missing in result.stderr
    assert not (tmp_path / "demo-secrets.json").exists()


def test_production_refuses_without_allowed_hosts(tmp_path):
    result = _start(_production_env(tmp_path, ALLOWED_HOSTS=""))
    assert result.returncode != 0
    assert "ALLOWED_HOSTS" in result.stderr


@pytest.mark.parametrize("missing", ["SMS_BACKEND", "IDENTITY_PROVIDER", "PUSH_BACKEND"])
def test_production_refuses_without_a_named_provider(tmp_path, missing):
    """No silent demo fallback for the SMS gateway, the doctors' identity check or push."""
    result = _start(_production_env(tmp_path, **{missing: ""}))
    assert result.returncode != 0
    assert missing in result.stderr


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("FIELD_ENCRYPTION_KEYS", "k1:" + base64.b64encode(b"short").decode(), "32 bytes"),
        ("FIELD_ENCRYPTION_KEYS", "no-colon-here", "keyid:base64key"),
        ("BLIND_INDEX_KEY", "%%%not-base64%%%", "not valid base64"),
        ("SECRET_KEY", "too-short", "at least 32"),
        ("DEBUG", "maybe", "must be a boolean"),
        # The legal limits may be tightened, never loosened.
        ("PRESCRIPTION_MAX_VALIDITY_DAYS", "5", "PRESCRIPTION_MAX_VALIDITY_DAYS must be at most 3"),
        ("PRESCRIPTION_MAX_VALIDITY_DAYS", "0", "must be at least 1"),
        ("PRESCRIPTION_MAX_DAYS", "14", "PRESCRIPTION_MAX_DAYS must be at most 7"),
        (
            "PRESCRIPTION_MAX_CHRONIC_DAYS",
            "120",
            "PRESCRIPTION_MAX_CHRONIC_DAYS must be at most 84",
        ),
        ("PRESCRIPTION_CHILD_AGE", "4", "PRESCRIPTION_CHILD_AGE must be at least 6"),
        ("DOCTOR_MIN_PRACTICE_YEARS", "1", "DOCTOR_MIN_PRACTICE_YEARS must be at least 3"),
        ("WS_TICKET_TTL_SECONDS", "3600", "WS_TICKET_TTL_SECONDS must be at most 60"),
    ],
)
def test_malformed_values_are_refused_with_a_clear_message(tmp_path, name, value, message):
    env = _production_env(tmp_path, **{name: value})
    code = "import django; django.setup(); from backend.crypto.keyring import keyring; keyring()"
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert message in result.stderr


def test_demo_mode_generates_secrets_once_and_keeps_them(tmp_path):
    env = _production_env(
        tmp_path,
        DEMO_MODE="1",
        SECRET_KEY="",
        FIELD_ENCRYPTION_KEYS="",
        BLIND_INDEX_KEY="",
        ALLOWED_HOSTS="",
        SMS_BACKEND="",
        IDENTITY_PROVIDER="",
        PUSH_BACKEND="",
    )
    code = (
        "import django; django.setup(); "
        "from django.conf import settings; print(settings.SECRET_KEY)"
    )
    first = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    second = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    secrets_file = tmp_path / "demo-secrets.json"
    assert secrets_file.exists()
    assert oct(secrets_file.stat().st_mode & 0o777) == "0o600"
    assert first.stdout == second.stdout
    assert len(first.stdout.strip()) >= 50
