"""Shared set-up for the chat-socket tests: consultations opened and accepted over HTTP,
tickets from the HTTP endpoints, real WebSocket connections through the ASGI application.

Everything that touches the database from a test coroutine goes through
``database_sync_to_async``, as the consumers do."""

from __future__ import annotations

import contextlib
import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.db import connections
from django.utils import timezone
from rest_framework.test import APIClient

from backend.asgi import application
from backend.demo.seeding import resident_id
from backend.identity.models import User
from backend.identity.services import totp_code_at
from backend.organisations.models import Department, Practitioner
from backend.patients.models import PatientProfile, Relation
from consultations.models import Message
from tests.consult_helpers import (
    HEADERS,
    client_for,
    patient_with_record,
    ready_doctor,
    request_consultation,
)
from tests.factories import PASSWORD, DepartmentFactory

TIMEOUT = 5


@dataclass
class Chat:
    """One consultation with its patient account and the doctor of its department."""

    id: str
    department: Department
    doctor: Practitioner
    account: User
    profile: PatientProfile
    patient_api: APIClient
    doctor_api: APIClient

    @property
    def path(self) -> str:
        return f"/ws/consultations/{self.id}/"


def _chat_create(
    *,
    accept: bool = True,
    child: bool = False,
    department: Department | None = None,
    account: User | None = None,
    profile: PatientProfile | None = None,
) -> Chat:
    """A consultation requested over HTTP (and accepted by its doctor unless told not to).
    A new department in a new hospital unless one is given; a new patient unless given."""
    department = department or DepartmentFactory()
    doctor = ready_doctor(department)
    if account is None or profile is None:
        account, profile = _patient(child=child)
    patient_api = client_for(account)
    doctor_api = client_for(doctor.user)
    response = request_consultation(patient_api, profile, department, complaint="复诊续方")
    assert response.status_code == 201, response.content
    assert response.json()["status"] == "waiting"
    chat = Chat(
        id=response.json()["id"],
        department=department,
        doctor=doctor,
        account=account,
        profile=profile,
        patient_api=patient_api,
        doctor_api=doctor_api,
    )
    if accept:
        _accept(chat)
    return chat


def _patient(*, child: bool) -> tuple[User, PatientProfile]:
    if child:
        # A guardian's account holding a child's profile (and only that).
        account, profile, _ = patient_with_record(
            relation=Relation.CHILD,
            real_name="王小明",
            birth_date=dt.date(2016, 3, 15),
            id_number=resident_id("33010620160315123"),
        )
    else:
        account, profile, _ = patient_with_record()
    return account, profile


def _accept(chat: Chat) -> None:
    response = chat.doctor_api.post(
        f"/api/console/v1/consultations/{chat.id}/accept",
        {"follow_up_confirmed": True},
        format="json",
    )
    assert response.status_code == 200, response.content
    assert response.json()["status"] == "in_progress"


def _ticket(chat: Chat, who: str) -> str:
    """A ticket from the participant's own HTTP endpoint (mobile or console)."""
    if who == "patient":
        response = chat.patient_api.post(f"/api/mobile/v1/consultations/{chat.id}/ws-ticket")
    else:
        response = chat.doctor_api.post(f"/api/console/v1/consultations/{chat.id}/ws-ticket")
    assert response.status_code == 201, response.content
    ticket: str = response.json()["ticket"]
    return ticket


def _console_session_headers(user: User) -> list[tuple[bytes, bytes]]:
    """Sign ``user`` (a doctor) in to the console with password and TOTP, as the browser
    does, and return WebSocket headers carrying the session cookie."""
    client = APIClient()
    step1 = client.post(
        "/api/console/v1/auth/login",
        {"username": user.username, "password": PASSWORD},
        format="json",
    )
    assert step1.status_code == 200, step1.content
    user.refresh_from_db()
    code = totp_code_at(secret=user.totp_secret, when=timezone.now())
    step2 = client.post("/api/console/v1/auth/totp", {"code": code}, format="json")
    assert step2.status_code == 200, step2.content
    cookie = client.cookies[settings.SESSION_COOKIE_NAME].value
    return [*HEADERS, (b"cookie", f"{settings.SESSION_COOKIE_NAME}={cookie}".encode())]


def _stored(consultation_id: str) -> list[tuple[int, str | None, str, str]]:
    return [
        (m.seq, str(m.sender_id) if m.sender_id else None, m.kind, m.text)
        for m in Message.objects.filter(consultation_id=consultation_id).order_by("seq")
    ]


# Through ``database_sync_to_async``, as the consumers' own database calls.
chat_create = database_sync_to_async(_chat_create)
accept = database_sync_to_async(_accept)
ticket = database_sync_to_async(_ticket)
console_session_headers = database_sync_to_async(_console_session_headers)
stored = database_sync_to_async(_stored)


async def release_connections() -> None:
    """Close the worker thread's database connections at the end of a test that ran many
    consumers (on PostgreSQL one can otherwise outlive the test and keep the test
    database from being dropped)."""
    await database_sync_to_async(connections.close_all)()


def socket_path(chat: Chat, ticket_value: str, after_seq: Any = None) -> str:
    path = f"{chat.path}?ticket={ticket_value}"
    if after_seq is not None:
        path += f"&after_seq={after_seq}"
    return path


async def connect(
    path: str, headers: list[tuple[bytes, bytes]] | None = None
) -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(application, path, headers=headers or HEADERS)
    connected, _ = await communicator.connect(timeout=TIMEOUT)
    assert connected is True
    return communicator


async def open_chat(
    chat: Chat, who: str, after_seq: Any = None
) -> tuple[WebsocketCommunicator, dict[str, Any]]:
    """A participant's socket, with a fresh ticket from HTTP; returns it and its ``sync``."""
    communicator = await connect(socket_path(chat, await ticket(chat, who), after_seq))
    sync = await communicator.receive_json_from(timeout=TIMEOUT)
    assert sync["type"] == "sync", sync
    return communicator, sync


async def hang_up(communicator: WebsocketCommunicator) -> None:
    # With the Redis channel layer a consumer's pending channel receive can take up to
    # channels_redis's BRPOP timeout to notice the cancellation; waiting for it would only
    # slow the tests down (every assertion is made before hanging up).
    with contextlib.suppress(Exception):  # already closed by the server
        await communicator.disconnect(timeout=0.2)


async def assert_refused(
    path: str, code: int, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    """Refusals are accepted, then closed with the documented code."""
    communicator = await connect(path, headers)
    try:
        closed = await communicator.receive_output(timeout=TIMEOUT)
        assert closed == {"type": "websocket.close", "code": code}
    finally:
        await hang_up(communicator)


def text_frame(text: str, client_msg_id: str | None = None) -> dict[str, Any]:
    return {
        "type": "message.send",
        "client_msg_id": client_msg_id or str(uuid.uuid4()),
        "kind": "text",
        "text": text,
    }


async def send_text(
    communicator: WebsocketCommunicator, text: str, client_msg_id: str | None = None
) -> dict[str, Any]:
    """Send a text message and return the answer to it (the ack, or an error)."""
    frame = text_frame(text, client_msg_id)
    await communicator.send_json_to(frame)
    answer: dict[str, Any] = await communicator.receive_json_from(timeout=TIMEOUT)
    return answer


async def send_and_echo(
    communicator: WebsocketCommunicator, text: str, client_msg_id: str | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Send a text message that is accepted; return its ack and the ``message.new`` the
    sender gets for it (a sender's socket gets its own messages too)."""
    ack = await send_text(communicator, text, client_msg_id)
    assert ack["type"] == "message.ack", ack
    new = await expect(communicator, "message.new")
    assert new["message"]["seq"] == ack["seq"], (ack, new)
    return ack, new


async def expect(communicator: WebsocketCommunicator, type_: str) -> dict[str, Any]:
    frame: dict[str, Any] = await communicator.receive_json_from(timeout=TIMEOUT)
    assert frame["type"] == type_, frame
    return frame


async def still_open(communicator: WebsocketCommunicator) -> None:
    """The connection still answers: a ping gets a pong (and nothing came before it)."""
    await communicator.send_json_to({"type": "ping"})
    assert await communicator.receive_json_from(timeout=TIMEOUT) == {"type": "pong"}


async def quiet(communicator: WebsocketCommunicator, seconds: float = 0.3) -> None:
    """Nothing arrives: wait long enough for a push through Redis, then check."""
    assert await communicator.receive_nothing(timeout=seconds)


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings: Any) -> None:
    """Accounts are made with a password and doctors sign in with one: hash it cheaply."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


__all__ = [
    "TIMEOUT",
    "Chat",
    "_fast_password_hashing",
    "accept",
    "assert_refused",
    "chat_create",
    "connect",
    "console_session_headers",
    "expect",
    "hang_up",
    "open_chat",
    "quiet",
    "release_connections",
    "send_and_echo",
    "send_text",
    "socket_path",
    "still_open",
    "stored",
    "text_frame",
    "ticket",
]
