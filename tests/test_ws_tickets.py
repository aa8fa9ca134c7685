"""WebSocket sign-in: a single-use, 60-second ticket for one path, or the console's
session cookie; never a bearer token in the URL (CONTRACT 1)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from typing import Any, cast
from urllib.parse import urlsplit

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings as django_settings
from django.utils import timezone
from rest_framework.test import APIClient

from backend.asgi import application
from backend.identity.models import Role, User, WsTicket
from backend.identity.services import (
    api_token_create,
    tokens_issue,
    totp_code_at,
    ws_ticket_issue,
)
from backend.organisations.models import Practitioner
from tests.factories import PASSWORD, PatientFactory, PractitionerFactory, UserFactory

pytestmark = pytest.mark.django_db(transaction=True)

TICKET_URL = "/api/console/v1/ws-ticket"
LOGIN_URL = "/api/console/v1/auth/login"
TOTP_URL = "/api/console/v1/auth/totp"
CONSOLE_WS = "/ws/console/"
HEADERS = [(b"origin", b"http://localhost"), (b"host", b"localhost")]


def new_user(**fields: Any) -> User:
    return cast(User, UserFactory(**fields))


def new_patient(**fields: Any) -> User:
    return cast(User, PatientFactory(**fields))


def new_doctor(**fields: Any) -> User:
    return cast(Practitioner, PractitionerFactory(**fields)).user


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


# --- Set-up done over HTTP, as a client would -------------------------------------------


def _token_client(role: str) -> tuple[User, APIClient, str]:
    user = new_user(role=role)
    key = api_token_create(user=user, name="tool").key
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return user, client, key


def _ticket_for(role: str = Role.REGULATOR) -> tuple[User, dict[str, Any]]:
    user, client, _ = _token_client(role)
    response = client.post(TICKET_URL)
    assert response.status_code == 201, response.content
    body: dict[str, Any] = response.json()
    return user, body


def _doctor_console_session(*, second_factor: bool = True) -> tuple[User, APIClient]:
    doctor = new_doctor()
    client = APIClient()
    step1 = client.post(
        LOGIN_URL, {"username": doctor.username, "password": PASSWORD}, format="json"
    )
    assert step1.json() == {"second_factor_required": True}
    if second_factor:
        assert doctor.totp_secret
        code = totp_code_at(secret=doctor.totp_secret, when=timezone.now())
        assert client.post(TOTP_URL, {"code": code}, format="json").status_code == 200
    return doctor, client


ticket_for = sync_to_async(_ticket_for)
token_client = sync_to_async(_token_client)
doctor_console_session = sync_to_async(_doctor_console_session)


@sync_to_async
def ticket_row(ticket: str) -> WsTicket:
    return WsTicket.objects.get(ticket_hash=hashlib.sha256(ticket.encode()).hexdigest())


@sync_to_async
def expire_all_tickets() -> None:
    WsTicket.objects.update(expires_at=timezone.now() - dt.timedelta(seconds=1))


async def hang_up(communicator: WebsocketCommunicator) -> None:
    # With the Redis channel layer a consumer's pending channel receive can take up to
    # channels_redis's BRPOP timeout to notice the cancellation; waiting for it would only
    # slow the test down (every assertion is made before hanging up).
    await communicator.disconnect(timeout=0.2)


async def connect(
    path: str, headers: list[tuple[bytes, bytes]] | None = None
) -> tuple[WebsocketCommunicator, bool, Any]:
    communicator = WebsocketCommunicator(application, path, headers=headers or HEADERS)
    connected, detail = await communicator.connect()
    return communicator, connected, detail


async def assert_refused(
    path: str, code: int, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    """Refusals are accepted and then closed, so that the client sees the close code
    (a refused handshake reaches a browser as a bare HTTP 403)."""
    communicator, connected, _ = await connect(path, headers)
    try:
        assert connected is True
        closed = await communicator.receive_output(timeout=2)
        assert closed == {"type": "websocket.close", "code": code}
    finally:
        await hang_up(communicator)


# --- Getting a ticket --------------------------------------------------------------------


async def test_a_console_session_gets_a_ticket_that_opens_the_console_socket() -> None:
    doctor, client = await doctor_console_session()

    response = await sync_to_async(client.post)(TICKET_URL)

    assert response.status_code == 201
    body = response.json()
    assert set(body) == {"ticket", "url", "expires_at"}
    assert body["url"] == f"ws://testserver/ws/console/?ticket={body['ticket']}"
    expires_in = (dt.datetime.fromisoformat(body["expires_at"]) - timezone.now()).total_seconds()
    assert 55 <= expires_in <= 60
    url = urlsplit(body["url"])

    communicator, connected, _ = await connect(f"{url.path}?{url.query}")
    try:
        assert connected is True
        assert await communicator.receive_json_from() == {
            "type": "hello",
            "user": str(doctor.pk),
            "role": "doctor",
        }
        await communicator.send_json_to({"type": "ping"})
        assert await communicator.receive_json_from() == {"type": "pong"}
    finally:
        await hang_up(communicator)
    row = await ticket_row(body["ticket"])
    assert row.used_at is not None
    assert row.path == CONSOLE_WS


async def test_an_api_token_gets_a_ticket_too() -> None:
    regulator, body = await ticket_for(Role.REGULATOR)

    communicator, connected, _ = await connect(f"{CONSOLE_WS}?ticket={body['ticket']}")
    try:
        assert connected is True
        hello = await communicator.receive_json_from()
        assert hello == {"type": "hello", "user": str(regulator.pk), "role": "regulator"}
    finally:
        await hang_up(communicator)


async def test_a_ticket_needs_a_signed_in_account() -> None:
    response = await sync_to_async(APIClient().post)(TICKET_URL)

    assert response.status_code == 401
    assert response.json()["code"] == "not_authenticated"
    assert await sync_to_async(WsTicket.objects.count)() == 0


# --- What a ticket does not open ------------------------------------------------------


async def test_a_ticket_opens_one_connection_only() -> None:
    _, body = await ticket_for()
    path = f"{CONSOLE_WS}?ticket={body['ticket']}"
    first, connected, _ = await connect(path)
    assert connected is True
    await first.receive_json_from()
    await hang_up(first)

    await assert_refused(path, 4401)


async def test_a_ticket_cannot_open_two_connections_at_once() -> None:
    _, body = await ticket_for()
    path = f"{CONSOLE_WS}?ticket={body['ticket']}"
    first, connected, _ = await connect(path)
    try:
        assert connected is True
        await assert_refused(path, 4401)
        # The first connection is unaffected.
        await first.receive_json_from()
        await first.send_json_to({"type": "ping"})
        assert await first.receive_json_from() == {"type": "pong"}
    finally:
        await hang_up(first)


async def test_an_expired_ticket_is_refused() -> None:
    _, body = await ticket_for()
    await expire_all_tickets()

    await assert_refused(f"{CONSOLE_WS}?ticket={body['ticket']}", 4401)
    assert (await ticket_row(body["ticket"])).used_at is None


async def test_a_ticket_for_another_path_is_refused_and_not_spent() -> None:
    user = await sync_to_async(new_user)(role=Role.REGULATOR)
    other_path = "/ws/regulator/feed/"
    issued = await sync_to_async(ws_ticket_issue)(user=user, path=other_path)

    await assert_refused(f"{CONSOLE_WS}?ticket={issued.ticket}", 4401)
    assert (await ticket_row(issued.ticket)).used_at is None


async def test_no_ticket_and_no_session_is_refused() -> None:
    await assert_refused(CONSOLE_WS, 4401)


async def test_an_unknown_ticket_is_refused() -> None:
    await assert_refused(f"{CONSOLE_WS}?ticket=not-a-ticket", 4401)


async def test_a_patients_ticket_does_not_open_the_console() -> None:
    patient = await sync_to_async(new_patient)()
    issued = await sync_to_async(ws_ticket_issue)(user=patient, path=CONSOLE_WS)

    await assert_refused(f"{CONSOLE_WS}?ticket={issued.ticket}", 4403)


async def test_a_disabled_accounts_ticket_is_refused() -> None:
    user, body = await ticket_for()
    await sync_to_async(User.objects.filter(pk=user.pk).update)(is_active=False)

    await assert_refused(f"{CONSOLE_WS}?ticket={body['ticket']}", 4401)


async def test_credentials_in_the_url_are_not_accepted() -> None:
    _, _, key = await token_client(Role.REGULATOR)
    patient = await sync_to_async(new_patient)()
    access = (await sync_to_async(tokens_issue)(user=patient)).access

    await assert_refused(f"{CONSOLE_WS}?token={key}", 4401)
    await assert_refused(f"{CONSOLE_WS}?access_token={access}", 4401)
    await assert_refused(f"{CONSOLE_WS}?ticket={key}", 4401)


async def test_a_foreign_origin_is_refused_before_the_ticket_is_spent() -> None:
    _, body = await ticket_for()
    path = f"{CONSOLE_WS}?ticket={body['ticket']}"
    evil = [(b"origin", b"https://evil.example"), (b"host", b"localhost")]

    communicator, connected, _ = await connect(path, evil)
    await hang_up(communicator)

    assert connected is False
    assert (await ticket_row(body["ticket"])).used_at is None
    good, connected, _ = await connect(path)
    assert connected is True
    await hang_up(good)


# --- The console session cookie -------------------------------------------------------


def _cookie_header(client: APIClient) -> list[tuple[bytes, bytes]]:
    session = client.cookies[django_settings.SESSION_COOKIE_NAME].value
    return [*HEADERS, (b"cookie", f"{django_settings.SESSION_COOKIE_NAME}={session}".encode())]


async def test_a_signed_in_console_session_opens_the_socket_without_a_ticket() -> None:
    doctor, client = await doctor_console_session()

    communicator, connected, _ = await connect(CONSOLE_WS, _cookie_header(client))
    try:
        assert connected is True
        hello = await communicator.receive_json_from()
        assert hello == {"type": "hello", "user": str(doctor.pk), "role": "doctor"}
    finally:
        await hang_up(communicator)


async def test_a_session_without_its_second_factor_does_not_open_the_socket() -> None:
    _, client = await doctor_console_session(second_factor=False)

    await assert_refused(CONSOLE_WS, 4401, _cookie_header(client))


async def test_a_password_only_admin_site_session_does_not_open_the_socket() -> None:
    @sync_to_async
    def admin_site_session() -> APIClient:
        doctor = new_doctor(user__is_staff=True)
        client = APIClient()
        response = client.post(
            "/admin/login/", {"username": doctor.username, "password": PASSWORD, "next": "/admin/"}
        )
        assert response.status_code == 302
        return client

    client = await admin_site_session()

    await assert_refused(CONSOLE_WS, 4401, _cookie_header(client))


# --- Frames -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "frame",
    [
        pytest.param({"text_data": "{not json"}, id="invalid-json"),
        pytest.param({"text_data": "[1, 2]"}, id="not-an-object"),
        pytest.param({"text_data": json.dumps({"kind": "ping"})}, id="no-type"),
        pytest.param({"text_data": json.dumps({"type": 7})}, id="type-not-a-string"),
        pytest.param({"bytes_data": b"\x00\x01"}, id="binary"),
        pytest.param(
            {"text_data": json.dumps({"type": "ping", "pad": "x" * (64 * 1024)})}, id="too-large"
        ),
    ],
)
async def test_a_bad_frame_gets_an_error_frame_and_the_connection_stays_open(
    frame: dict[str, Any],
) -> None:
    _, body = await ticket_for()
    communicator, connected, _ = await connect(f"{CONSOLE_WS}?ticket={body['ticket']}")
    try:
        assert connected is True
        await communicator.receive_json_from()  # hello

        await communicator.send_to(**frame)

        error = await communicator.receive_json_from()
        assert error["type"] == "error"
        too_large = len(frame.get("text_data", "").encode()) > 64 * 1024
        assert error["code"] == ("frame_too_large" if too_large else "malformed_frame")
        assert error["detail"]
        await communicator.send_json_to({"type": "ping"})
        assert await communicator.receive_json_from() == {"type": "pong"}
    finally:
        await hang_up(communicator)


async def test_an_unknown_frame_type_is_answered_with_unknown_type() -> None:
    _, body = await ticket_for()
    communicator, connected, _ = await connect(f"{CONSOLE_WS}?ticket={body['ticket']}")
    try:
        assert connected is True
        await communicator.receive_json_from()

        await communicator.send_json_to({"type": "launch"})

        error = await communicator.receive_json_from()
        assert error["type"] == "error"
        assert error["code"] == "unknown_type"
        assert await communicator.receive_nothing()
    finally:
        await hang_up(communicator)


@pytest.mark.django_db
def test_a_patient_gets_no_console_ticket() -> None:
    patient, client, _ = _token_client(Role.PATIENT)

    response = client.post(TICKET_URL)

    assert response.status_code == 403
    assert response.json()["code"] == "permission_denied"
    assert not WsTicket.objects.filter(user=patient).exists()
