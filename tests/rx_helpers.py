"""Shared set-up for the prescription tests: a hospital with its CA, a doctor and a
pharmacist signed in to the console with their second factor (signing refuses API
tokens), a retail pharmacy with an API token, a patient in an accepted consultation,
and the demo drug catalogue. Every step goes through HTTP.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.utils import timezone
from rest_framework.test import APIClient

from backend.identity.models import Role, User
from backend.identity.services import api_token_create, totp_code_at
from backend.organisations.models import (
    Department,
    Pharmacy,
    PharmacyStaff,
    Practitioner,
    PractitionerKind,
)
from backend.pki.services import certificate_issue
from prescriptions.catalogue import drug_catalogue_import_file
from prescriptions.demo_seed import CATALOGUE
from prescriptions.models import Drug, Prescription
from tests.consult_helpers import client_for
from tests.consult_http_helpers import CONSOLE, MOBILE, Scene
from tests.factories import PASSWORD, PharmacyFactory, PractitionerFactory, UserFactory

PHARMACY = "/api/pharmacy/v1"
AMLODIPINE = "DEMO-0001"  # 苯磺酸氨氯地平片 5mg*7片


def load_catalogue() -> None:
    if not Drug.objects.filter(code=AMLODIPINE).exists():
        report = drug_catalogue_import_file(path=CATALOGUE)
        assert report.ok, report.errors


def fresh_otp(user: User) -> str:
    """The user's current authenticator code. Codes are single-use per 30-second step;
    a test that signs several times stands in for the time between two codes by
    forgetting the last step used."""
    User.objects.filter(pk=user.pk).update(totp_last_step=0)
    user.refresh_from_db()
    assert user.totp_secret
    return totp_code_at(secret=user.totp_secret, when=timezone.now())


def console_session(user: User) -> APIClient:
    """A console session completed with the second factor, as the browser would."""
    client = APIClient()
    response = client.post(
        f"{CONSOLE}/auth/login", {"username": user.username, "password": PASSWORD}, format="json"
    )
    assert response.status_code == 200, response.content
    response = client.post(f"{CONSOLE}/auth/totp", {"code": fresh_otp(user)}, format="json")
    assert response.status_code == 200, response.content
    return client


def pharmacist_for(department: Department) -> Practitioner:
    pharmacist = PractitionerFactory(
        hospital=department.hospital,
        department=None,
        kind=PractitionerKind.PHARMACIST,
        user__role=Role.PHARMACIST,
        title="主管药师",
    )
    certificate_issue(practitioner=pharmacist)
    return pharmacist


def pharmacy_staff(pharmacy: Pharmacy | None = None) -> tuple[PharmacyStaff, APIClient]:
    pharmacy = pharmacy or PharmacyFactory()
    user = UserFactory(role=Role.PHARMACY_STAFF)
    staff = PharmacyStaff.objects.create(user=user, pharmacy=pharmacy, is_licensed_pharmacist=True)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {api_token_create(user=user, name='rx').key}")
    return staff, client


def line(code: str = AMLODIPINE, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "drug": code,
        "dose": "5",
        "dose_unit": "mg",
        "frequency": "qd",
        "route": "口服",
        "days": 7,
        "quantity": 1,
    }
    body.update(overrides)
    return body


class RxScene(Scene):
    """A consultation in progress, a doctor and a pharmacist in console sessions, and a
    pharmacy system with its API token."""

    def __init__(
        self, department: Department, *, consultation: bool = True, **doctor_fields: Any
    ) -> None:
        super().__init__(department, **doctor_fields)
        load_catalogue()
        certificate_issue(practitioner=self.doctor)
        self.doctor_session = console_session(self.doctor.user)
        self.pharmacist = pharmacist_for(department)
        self.pharmacist_session = console_session(self.pharmacist.user)
        self.staff, self.pharmacy_api = pharmacy_staff()
        self.pharmacy = self.staff.pharmacy
        #: Without ``consultation`` the test requests and accepts one itself (a fee first).
        self.consultation_id = self.in_progress() if consultation else ""

    # --- doctor -------------------------------------------------------------------------------

    def draft(self, **overrides: Any) -> Any:
        body: dict[str, Any] = {"consultation": self.consultation_id, "lines": [line()]}
        body.update(overrides)
        return self.doctor_session.post(f"{CONSOLE}/prescriptions", body, format="json")

    def sign(self, prescription_id: str, otp: str | None = None) -> Any:
        return self.doctor_session.post(
            f"{CONSOLE}/prescriptions/{prescription_id}/sign",
            {"otp": otp if otp is not None else fresh_otp(self.doctor.user)},
            format="json",
        )

    def signed(self, **overrides: Any) -> str:
        response = self.draft(**overrides)
        assert response.status_code == 201, response.content
        prescription_id = str(response.json()["id"])
        response = self.sign(prescription_id)
        assert response.status_code == 200, response.content
        return prescription_id

    # --- pharmacist ---------------------------------------------------------------------------

    def approve(self, prescription_id: str, otp: str | None = None) -> Any:
        return self.pharmacist_session.post(
            f"{CONSOLE}/prescriptions/{prescription_id}/approve",
            {"otp": otp if otp is not None else fresh_otp(self.pharmacist.user)},
            format="json",
        )

    def active(self, **overrides: Any) -> str:
        prescription_id = self.signed(**overrides)
        response = self.approve(prescription_id)
        assert response.status_code == 200, response.content
        assert response.json()["status"] == "active"
        return prescription_id

    # --- patient ------------------------------------------------------------------------------

    def access_code(self, prescription_id: str) -> str:
        response = self.patient_api.get(f"{MOBILE}/prescriptions/{prescription_id}")
        assert response.status_code == 200, response.content
        code: str = response.json()["access_code"]
        return code

    # --- pharmacy -----------------------------------------------------------------------------

    def claim(
        self, prescription_id: str, code: str | None = None, api: APIClient | None = None
    ) -> Any:
        return (api or self.pharmacy_api).post(
            f"{PHARMACY}/prescriptions/claim",
            {
                "prescription_id": prescription_id,
                "access_code": code if code is not None else self.access_code(prescription_id),
            },
            format="json",
        )

    def claimed(self, prescription_id: str | None = None) -> tuple[str, str]:
        prescription_id = prescription_id or self.active()
        response = self.claim(prescription_id)
        assert response.status_code == 200, response.content
        return prescription_id, str(response.json()["claim_secret"])

    def dispense(
        self, prescription_id: str, secret: str, api: APIClient | None = None, **overrides: Any
    ) -> Any:
        body: dict[str, Any] = {
            "claim_secret": secret,
            "items": [{"line": 1, "quantity": 1, "batch_number": "B2026-1102"}],
            "pharmacist": {"name": "王药师", "licence_number": "YS330100123"},
        }
        body.update(overrides)
        return (api or self.pharmacy_api).post(
            f"{PHARMACY}/prescriptions/{prescription_id}/dispense", body, format="json"
        )


def status_of(prescription_id: str) -> str:
    return Prescription.objects.values_list("status", flat=True).get(pk=prescription_id)


def shanghai(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> dt.datetime:
    return dt.datetime(
        year, month, day, hour, minute, second, tzinfo=timezone.get_default_timezone()
    )


__all__ = ["MOBILE", "client_for"]
