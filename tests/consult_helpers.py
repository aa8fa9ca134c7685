"""Shared set-up for the consultation tests: real accounts, real HTTP calls, real
WebSocket connections through the project's ASGI application."""

from __future__ import annotations

import contextlib
import datetime as dt
from typing import Any

from channels.testing import WebsocketCommunicator
from django.utils import timezone
from rest_framework.test import APIClient

from backend.asgi import application
from backend.identity.models import User
from backend.identity.services import api_token_create
from backend.organisations.models import Department, Practitioner
from backend.patients.models import PatientProfile
from consultations.models import PriorDiagnosis
from tests.factories import PatientFactory, PatientProfileFactory, PractitionerFactory

HEADERS = [(b"origin", b"http://localhost"), (b"host", b"localhost")]


def client_for(user: User) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {api_token_create(user=user, name='t').key}")
    return client


def ready_doctor(department: Department, **fields: Any) -> Practitioner:
    """A filed, qualified doctor on duty whose identity was checked today."""
    fields.setdefault("on_duty", True)
    fields.setdefault("last_identity_check_at", timezone.now())
    return PractitionerFactory(hospital=department.hospital, department=department, **fields)


def patient_with_record(**profile_fields: Any) -> tuple[User, PatientProfile, PriorDiagnosis]:
    account = PatientFactory()
    profile = PatientProfileFactory(account=account, **profile_fields)
    record = PriorDiagnosis.objects.create(
        profile=profile,
        institution="浙江大学医学院附属第一医院",
        diagnosed_on=dt.date(2024, 11, 5),
        icd10_code="I10",
        icd10_name="原发性高血压",
        created_by=account,
    )
    return account, profile, record


def request_consultation(
    client: APIClient, profile: PatientProfile, department: Department, **extra: Any
) -> Any:
    return client.post(
        "/api/mobile/v1/consultations",
        {"profile": str(profile.pk), "department": str(department.pk), **extra},
        format="json",
    )


async def open_socket(path: str) -> tuple[WebsocketCommunicator, dict[str, Any]]:
    """Connect and read the first frame (``sync`` or ``hello``)."""
    communicator = WebsocketCommunicator(application, path, headers=HEADERS)
    connected, _ = await communicator.connect(timeout=5)
    assert connected
    first = await communicator.receive_json_from(timeout=5)
    return communicator, first


async def close_socket(communicator: WebsocketCommunicator) -> None:
    with contextlib.suppress(Exception):  # already closed by the server
        await communicator.disconnect(timeout=0.5)
