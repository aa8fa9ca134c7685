"""Shared set-up for the HTTP tests of records, profiles, the directory and the
consultation lifecycle: real accounts with real API tokens, real HTTP calls, real files.

Nothing here mocks a component: it only builds rows the tests start from and reads the
rows and audit events the calls leave behind.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from backend.audit.models import AuditEvent
from backend.identity.models import User
from backend.organisations.models import Department, Practitioner
from backend.patients.models import PatientProfile
from consultations.models import Consultation, ConsultationEvent
from tests.conftest import REQUIRE_SERVICES, uses_postgres
from tests.consult_helpers import (
    client_for,
    patient_with_record,
    ready_doctor,
    request_consultation,
)
from tests.worker_helpers import WorkerProcess, worker_database_url

ROOT = Path(__file__).resolve().parent.parent
SHANGHAI = ZoneInfo("Asia/Shanghai")
PROBLEM = "application/problem+json"

MOBILE = "/api/mobile/v1"
CONSOLE = "/api/console/v1"


# --- Files ---------------------------------------------------------------------------------


def pdf_bytes() -> bytes:
    """A complete one-page PDF 1.4 with a correct cross-reference table."""
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 72 72] >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)


PDF_BYTES = pdf_bytes()

#: A 1x1 JPEG (JFIF header, quantisation table, frame, scan, end of image).
JPEG_BYTES = bytes.fromhex(
    "ffd8ffe000104a46494600010101004800480000"
    "ffdb004300030202020202030202020303030304060404040404080606050609080a0a090809090a0c0f0c0a0b0e0b09090d110d0e0f101011100a0c12131210130f101010"
    "ffc9000b080001000101011100"
    "ffcc000600101005"
    "ffda0008010100003f00d2cf20"
    "ffd9"
)


def png_bytes(width: int = 2, height: int = 2) -> bytes:
    """A real PNG (8-bit greyscale), built with zlib and CRCs as the format requires."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    raw = b"".join(b"\x00" + bytes([0x80] * width) for _ in range(height))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


PNG_BYTES = png_bytes()


# --- Problems and side effects --------------------------------------------------------------


def assert_problem(response: Any, status: int, code: str) -> dict[str, Any]:
    """The response is an RFC 9457 problem with this status and stable code."""
    assert response.status_code == status, (response.status_code, response.content)
    assert response["Content-Type"].startswith(PROBLEM), response["Content-Type"]
    body: dict[str, Any] = response.json()
    assert body["code"] == code, body
    assert body["status"] == status, body
    return body


def audit_count(action: str, object_id: Any = None) -> int:
    qs = AuditEvent.objects.filter(action=action)
    if object_id is not None:
        qs = qs.filter(object_id=str(object_id))
    return qs.count()


def event_actions(consultation_id: Any) -> list[str]:
    return list(
        ConsultationEvent.objects.filter(consultation_id=consultation_id)
        .order_by("id")
        .values_list("action", flat=True)
    )


def status_of(consultation_id: Any) -> str:
    return Consultation.objects.values_list("status", flat=True).get(pk=consultation_id)


def start_of_today_shanghai() -> dt.datetime:
    return dt.datetime.combine(timezone.localdate(), dt.time.min, tzinfo=SHANGHAI)


# --- Scenes -----------------------------------------------------------------------------------


class Scene:
    """One hospital department with a ready doctor and a patient with a prior diagnosis,
    each with an API client; ``request()`` asks for a follow-up over HTTP."""

    def __init__(self, department: Department, **doctor_fields: Any) -> None:
        self.department = department
        self.hospital = department.hospital
        self.doctor: Practitioner = ready_doctor(department, **doctor_fields)
        self.account, self.profile, self.record = patient_with_record()
        self.patient_api = client_for(self.account)
        self.doctor_api = client_for(self.doctor.user)

    def request(self, **extra: Any) -> str:
        response = request_consultation(self.patient_api, self.profile, self.department, **extra)
        assert response.status_code == 201, response.content
        return str(response.json()["id"])

    def accept(self, consultation_id: str, api: APIClient | None = None) -> Any:
        return (api or self.doctor_api).post(
            f"{CONSOLE}/consultations/{consultation_id}/accept",
            {"follow_up_confirmed": True},
            format="json",
        )

    def in_progress(self) -> str:
        consultation_id = self.request()
        response = self.accept(consultation_id)
        assert response.status_code == 200, response.content
        return consultation_id


def another_patient() -> tuple[User, PatientProfile, APIClient]:
    account, profile, _ = patient_with_record()
    return account, profile, client_for(account)


def end_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "diagnoses": [{"icd10": "I10", "main": True}],
        "note": {
            "chief_complaint": "高血压复诊",
            "history": "规律服药",
            "findings": "血压130/85",
            "advice": "继续服药，监测血压",
        },
        "fee": 2000,
    }
    body.update(overrides)
    return body


# --- Real services -----------------------------------------------------------------------------


def require_postgres(what: str) -> None:
    """Skip (or, with REQUIRE_SERVICES=1, fail) a test that needs PostgreSQL."""
    if uses_postgres():
        return
    reason = f"{what} needs PostgreSQL (DATABASE_URL); CI sets REQUIRE_SERVICES=1"
    if REQUIRE_SERVICES:
        pytest.fail(reason)
    pytest.skip(reason)


@contextlib.contextmanager
def celery_worker(*, log: Path) -> Iterator[str]:
    """A real worker with the test database on a queue of its own; yields the queue."""
    queue = f"test-consult-{os.getpid()}-{os.environ.get('PYTEST_XDIST_WORKER', 'main')}"
    worker = WorkerProcess(log, queue=queue)
    try:
        yield queue
    finally:
        worker.stop()


__all__ = [
    "CONSOLE",
    "JPEG_BYTES",
    "MOBILE",
    "PDF_BYTES",
    "PNG_BYTES",
    "SHANGHAI",
    "Scene",
    "another_patient",
    "assert_problem",
    "audit_count",
    "celery_worker",
    "end_body",
    "event_actions",
    "require_postgres",
    "start_of_today_shanghai",
    "status_of",
    "worker_database_url",
]


@pytest.fixture
def fast_password_hashing(settings: Any) -> None:
    """The factories give every account a password; nothing here signs in with one, so a
    cheap hasher keeps each test well under a second."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
