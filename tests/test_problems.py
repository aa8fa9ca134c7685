"""Every HTTP API error leaves as RFC 9457 ``application/problem+json`` (CONTRACT §0).

One test per error class, each checking the whole problem shape through the public
HTTP interface: status, ``Content-Type``, ``type``/``title``/``status``/``detail``/
``code`` (and ``errors`` for validation), the headers the status calls for, and that
the refused request had no effect.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from django.test import Client
from rest_framework.test import APIClient

from backend.api.problems import PROBLEMS
from backend.audit.models import AuditEvent
from backend.identity.models import OtpChallenge, RefreshToken, Role, User, WsTicket
from backend.identity.services import api_token_create, api_token_revoke
from tests.factories import PASSWORD, UserFactory

PROBLEM = "application/problem+json"
ME = "/api/mobile/v1/me"
OTP = "/api/mobile/v1/auth/otp"
TOKEN = "/api/mobile/v1/auth/token"
CONSOLE_LOGIN = "/api/console/v1/auth/login"
WS_TICKET = "/api/console/v1/ws-ticket"

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def assert_problem(
    response: Any, status: int, code: str, *, instance: str | None = None
) -> dict[str, Any]:
    """The full problem shape; returns the parsed body for further checks."""
    assert response.status_code == status, response.content
    assert response["Content-Type"] == PROBLEM
    body: dict[str, Any] = json.loads(response.content)
    assert body["type"] == f"/problems/{code}"
    assert body["code"] == code
    assert body["status"] == status
    assert body["title"] == PROBLEMS[code][1]
    assert isinstance(body["detail"], str)
    assert body["detail"]
    if instance is not None:
        assert body["instance"] == instance
    return body


def token_header(user: User) -> str:
    return f"Token {api_token_create(user=user, name='t').key}"


def otp_code_for(api: APIClient, phone: str, caplog: Any, capture: Any) -> str:
    """Ask for a code the way the app does and read it from the demo SMS backend's log."""
    with caplog.at_level(logging.WARNING, logger="backend.identity.sms"), capture(execute=True):
        response = api.post(OTP, {"phone": phone}, format="json")
    assert response.status_code == 202, response.content
    sent = [r for r in caplog.records if r.name == "backend.identity.sms"]
    assert sent, "the SMS backend was not called"
    return str(sent[-1].args[2]["code"])


# --- 404 ----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/nope", "/api/mobile/v1/me/nope", "/api/mobile/v9/me"])
def test_unknown_api_path_is_a_not_found_problem(api: APIClient, path: str) -> None:
    response = api.get(path)

    assert_problem(response, 404, "not_found", instance=path)


def test_unknown_problem_type_is_a_not_found_problem(api: APIClient) -> None:
    response = api.get("/problems/no_such_code")

    body = assert_problem(response, 404, "not_found", instance="/problems/no_such_code")
    assert "no_such_code" in body["detail"]


@pytest.mark.parametrize("path", ["/nope", "/apinope", "/static/nope.js"])
def test_non_api_paths_keep_djangos_html_404(api: APIClient, path: str) -> None:
    response = api.get(path)

    assert response.status_code == 404
    assert response["Content-Type"].startswith("text/html")
    assert PROBLEM not in response["Content-Type"]


def test_admin_paths_are_not_turned_into_problems(api: APIClient) -> None:
    visitor = api.get("/admin/nope")

    # The admin handles its own unknown URLs: a visitor is sent to its login page...
    assert visitor.status_code == 302
    assert visitor["Location"] == "/admin/login/?next=/admin/nope"

    # ...and a signed-in administrator gets Django's HTML 404, not a problem.
    root = User.objects.create_superuser("root", PASSWORD)
    api.force_login(root)
    staff = api.get("/admin/nope")

    assert staff.status_code == 404
    assert staff["Content-Type"].startswith("text/html")


# --- 405 ----------------------------------------------------------------------------------


def test_method_not_allowed_on_a_drf_view(api: APIClient, patient: User) -> None:
    api.credentials(HTTP_AUTHORIZATION=token_header(patient))

    response = api.delete(ME)

    body = assert_problem(response, 405, "method_not_allowed", instance=ME)
    assert "DELETE" in body["detail"]
    allowed = {m.strip() for m in response["Allow"].split(",")}
    assert {"GET", "PATCH"} <= allowed
    assert "DELETE" not in allowed
    assert User.objects.filter(pk=patient.pk, is_active=True).exists()


def test_method_not_allowed_on_a_plain_django_view_keeps_allow(api: APIClient) -> None:
    response = api.post("/healthz", {}, format="json")

    assert_problem(response, 405, "method_not_allowed", instance="/healthz")
    assert response["Allow"] == "GET"


# --- 401 ----------------------------------------------------------------------------------


def test_no_credentials_is_not_authenticated_with_a_challenge(api: APIClient) -> None:
    response = api.get(ME)

    assert_problem(response, 401, "not_authenticated", instance=ME)
    assert response["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    "authorization",
    [
        "Bearer not-a-jwt",
        "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl",
        "Token garbage",
        "Token ih_deadbeef_not-a-real-secret",
    ],
)
def test_garbage_credentials_are_authentication_failed(
    api: APIClient, patient: User, authorization: str
) -> None:
    before = patient.display_name

    response = api.patch(
        ME, {"display_name": "hijacked"}, format="json", HTTP_AUTHORIZATION=authorization
    )

    assert_problem(response, 401, "authentication_failed", instance=ME)
    assert response.has_header("WWW-Authenticate")
    patient.refresh_from_db()
    assert patient.display_name == before


def test_revoked_api_token_is_token_revoked(api: APIClient, patient: User) -> None:
    issued = api_token_create(user=patient, name="t")
    api_token_revoke(token=issued.token, revoked_by=None)

    response = api.get(ME, HTTP_AUTHORIZATION=f"Token {issued.key}")

    assert_problem(response, 401, "token_revoked", instance=ME)
    assert response.has_header("WWW-Authenticate")


@pytest.mark.parametrize(
    ("path", "body", "code"),
    [
        ("/api/mobile/v1/auth/refresh", {"refresh": "garbage"}, "authentication_failed"),
        ("/api/console/v1/auth/totp", {"code": "123456"}, "not_authenticated"),
    ],
)
def test_every_401_carries_a_www_authenticate_challenge(
    api: APIClient, path: str, body: dict[str, str], code: str
) -> None:
    """RFC 9110 §15.5.2: a 401 must challenge, also when a service refused the credentials
    (once missing on these paths: only DRF's own auth exceptions carried the header)."""
    response = api.post(path, body, format="json")

    assert_problem(response, 401, code, instance=path)
    assert response.has_header("WWW-Authenticate")


# --- 403 ----------------------------------------------------------------------------------


def test_staff_account_is_refused_on_the_patient_login(
    api: APIClient, caplog: Any, django_capture_on_commit_callbacks: Any
) -> None:
    staff: User = UserFactory(role=Role.ADMINISTRATOR, phone="13912345678")
    code = otp_code_for(api, "13912345678", caplog, django_capture_on_commit_callbacks)

    response = api.post(TOKEN, {"phone": "13912345678", "code": code}, format="json")

    body = assert_problem(response, 403, "permission_denied", instance=TOKEN)
    assert "access" not in body
    assert "refresh" not in body
    staff.refresh_from_db()
    assert staff.role == Role.ADMINISTRATOR
    assert not RefreshToken.objects.filter(user=staff).exists()
    assert User.objects.filter(role=Role.PATIENT).count() == 0


def test_console_login_without_csrf_token_is_permission_denied() -> None:
    admin = UserFactory(role=Role.ADMINISTRATOR)
    client = APIClient(enforce_csrf_checks=True)

    response = client.post(
        CONSOLE_LOGIN, {"username": admin.username, "password": PASSWORD}, format="json"
    )

    body = assert_problem(response, 403, "permission_denied", instance=CONSOLE_LOGIN)
    assert "CSRF" in body["detail"]
    assert "sessionid" not in response.cookies
    assert not AuditEvent.objects.filter(action="auth.console_login").exists()


def test_session_post_without_csrf_token_is_permission_denied() -> None:
    admin = UserFactory(role=Role.ADMINISTRATOR)
    client = APIClient(enforce_csrf_checks=True)
    csrf = client.get("/api/console/v1/auth/csrf").json()["csrf_token"]
    login = client.post(
        CONSOLE_LOGIN,
        {"username": admin.username, "password": PASSWORD},
        format="json",
        HTTP_X_CSRFTOKEN=csrf,
    )
    assert login.status_code == 200, login.content
    assert login.json()["second_factor_required"] is False

    refused = client.post(WS_TICKET, format="json")

    body = assert_problem(refused, 403, "permission_denied", instance=WS_TICKET)
    assert "CSRF" in body["detail"]
    assert not WsTicket.objects.exists()

    # The same call with the (post-login) token the console fetches succeeds.
    csrf = client.get("/api/console/v1/auth/csrf").json()["csrf_token"]
    accepted = client.post(WS_TICKET, format="json", HTTP_X_CSRFTOKEN=csrf)
    assert accepted.status_code == 201, accepted.content
    assert WsTicket.objects.count() == 1


def test_csrf_failure_outside_drf_is_a_problem_on_api_paths() -> None:
    client = Client(enforce_csrf_checks=True)

    response = client.post("/problems/", {"x": "1"})

    body = assert_problem(response, 403, "permission_denied", instance="/problems/")
    assert "CSRF" in body["detail"]


# --- 400 ----------------------------------------------------------------------------------


def test_missing_field_is_a_validation_error_keyed_by_field(api: APIClient) -> None:
    response = api.post(OTP, {}, format="json")

    body = assert_problem(response, 400, "validation_error", instance=OTP)
    assert set(body["errors"]) == {"phone"}
    assert body["errors"]["phone"]
    assert all(isinstance(m, str) for m in body["errors"]["phone"])
    assert not OtpChallenge.objects.exists()


@pytest.mark.parametrize("phone", ["12345", "23800138000", "1380013800a", "+1 202 555 0100"])
def test_bad_phone_is_a_validation_error_keyed_by_field(
    api: APIClient, phone: str, caplog: Any, django_capture_on_commit_callbacks: Any
) -> None:
    with (
        caplog.at_level(logging.WARNING, logger="backend.identity.sms"),
        django_capture_on_commit_callbacks(execute=True),
    ):
        response = api.post(OTP, {"phone": phone}, format="json")

    body = assert_problem(response, 400, "validation_error", instance=OTP)
    assert list(body["errors"]) == ["phone"]
    assert body["errors"]["phone"]
    assert all(isinstance(m, str) for m in body["errors"]["phone"])
    assert not OtpChallenge.objects.exists()
    assert not [r for r in caplog.records if r.name == "backend.identity.sms"]


def test_nested_validation_errors_are_flattened_per_field(api: APIClient) -> None:
    response = api.post(TOKEN, {"phone": "x" * 21}, format="json")

    body = assert_problem(response, 400, "validation_error", instance=TOKEN)
    assert set(body["errors"]) == {"phone", "code"}


def test_malformed_json_is_a_parse_error(api: APIClient) -> None:
    response = api.post(OTP, data='{"phone": "1380013', content_type="application/json")

    body = assert_problem(response, 400, "parse_error", instance=OTP)
    assert "errors" not in body
    assert not OtpChallenge.objects.exists()


def test_oversized_body_is_payload_too_large_not_an_internal_error(settings: Any) -> None:
    """Once a 500 internal_error (SuspiciousOperation fell into the catch-all)."""
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1024
    client = APIClient(raise_request_exception=False)

    response = client.post(OTP, {"phone": "1" * 2000}, format="json")

    body = assert_problem(response, 413, "payload_too_large", instance=OTP)
    assert "error_id" not in body
    assert not OtpChallenge.objects.exists()


# --- 415 ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "application/xml"]
)
def test_unsupported_body_type_is_unsupported_media_type(api: APIClient, content_type: str) -> None:
    response = api.post(OTP, data="phone=13800138000", content_type=content_type)

    body = assert_problem(response, 415, "unsupported_media_type", instance=OTP)
    assert content_type in body["detail"]
    assert not OtpChallenge.objects.exists()


# --- 429 ----------------------------------------------------------------------------------


def test_ip_throttle_is_throttled_with_retry_after(api: APIClient) -> None:
    for _ in range(20):  # otp_ip: 20/hour
        assert api.post(OTP, {}, format="json").status_code == 400

    response = api.post(OTP, {"phone": "13800138000"}, format="json")

    assert_problem(response, 429, "throttled", instance=OTP)
    retry_after = int(response["Retry-After"])
    assert 0 < retry_after <= 3601
    assert not OtpChallenge.objects.exists()


def test_console_login_throttle_is_throttled_before_checking_the_password(
    api: APIClient,
) -> None:
    admin = UserFactory(role=Role.ADMINISTRATOR)
    for _ in range(30):  # console_login: 30/hour
        assert api.post(CONSOLE_LOGIN, {}, format="json").status_code == 400

    response = api.post(
        CONSOLE_LOGIN,
        {"username": admin.username, "password": PASSWORD},
        format="json",
    )

    assert_problem(response, 429, "throttled", instance=CONSOLE_LOGIN)
    assert int(response["Retry-After"]) > 0
    assert "sessionid" not in response.cookies


def test_otp_resend_limit_is_throttled_with_retry_after(
    api: APIClient, django_capture_on_commit_callbacks: Any
) -> None:
    """Once sent the wait only in the body; the header is what HTTP clients read."""
    with django_capture_on_commit_callbacks(execute=True):
        assert api.post(OTP, {"phone": "13800138000"}, format="json").status_code == 202
        response = api.post(OTP, {"phone": "13800138000"}, format="json")

    body = assert_problem(response, 429, "throttled", instance=OTP)
    assert OtpChallenge.objects.count() == 1
    assert 0 < body["retry_after"] <= 60
    assert response["Retry-After"] == str(body["retry_after"])


# --- 500 ----------------------------------------------------------------------------------


@pytest.mark.urls("tests.problem_urls")
@pytest.mark.parametrize("method", ["get", "post"])
@pytest.mark.parametrize("path", ["/api/test/boom/drf", "/api/test/boom/plain"])
def test_unexpected_exception_is_an_internal_error_that_leaks_nothing(
    path: str, method: str
) -> None:
    client = APIClient(raise_request_exception=False)

    response = getattr(client, method)(path, {"phone": "13800138000"}, format="json")

    body = assert_problem(response, 500, "internal_error", instance=path)
    assert len(body["error_id"]) == 32
    assert body["error_id"] in body["detail"]
    raw = response.content.decode()
    assert "secret internals" not in raw
    assert "RuntimeError" not in raw
    assert "Traceback" not in raw


@pytest.mark.urls("tests.problem_urls")
def test_each_internal_error_has_its_own_error_id() -> None:
    client = APIClient(raise_request_exception=False)

    first = client.get("/api/test/boom/drf").json()["error_id"]
    second = client.get("/api/test/boom/drf").json()["error_id"]

    assert first != second


# --- The catalogue ------------------------------------------------------------------------


def test_catalogue_lists_every_problem_with_its_type(api: APIClient) -> None:
    response = api.get("/problems/")

    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/json")
    entries = response.json()["problems"]
    codes = [e["code"] for e in entries]
    assert codes == sorted(codes)
    assert len(codes) == len(set(codes))
    for expected in (
        "validation_error",
        "parse_error",
        "not_authenticated",
        "authentication_failed",
        "permission_denied",
        "not_found",
        "method_not_allowed",
        "unsupported_media_type",
        "throttled",
        "internal_error",
        "idempotency_key_invalid",
        "idempotency_key_reused",
        "idempotency_key_in_progress",
    ):
        assert expected in codes
    for entry in entries:
        assert entry["type"] == f"/problems/{entry['code']}"
        assert 400 <= entry["status"] <= 599
        assert entry["title"]


def test_each_problem_type_uri_describes_its_problem(api: APIClient) -> None:
    catalogue = api.get("/problems/").json()["problems"]

    for entry in catalogue:
        response = api.get(entry["type"])
        assert response.status_code == 200, entry
        assert response.json() == entry


def test_problem_type_not_found_is_described(api: APIClient) -> None:
    response = api.get("/problems/not_found")

    assert response.status_code == 200
    assert response.json() == {
        "code": "not_found",
        "status": 404,
        "title": PROBLEMS["not_found"][1],
        "type": "/problems/not_found",
    }
