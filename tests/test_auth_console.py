"""Staff sign in to the web console: password, then a TOTP code for doctors and
pharmacists (CONTRACT 1). Repeated wrong passwords lock the username."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any, cast

import pytest
from django.conf import settings as django_settings
from django.contrib.sessions.backends.db import SessionStore
from django.contrib.sessions.models import Session
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.test import APIClient

from backend.audit.models import AuditEvent
from backend.identity.models import Role, User, WsTicket
from backend.identity.services import tokens_issue, totp_code_at, totp_enrol
from backend.identity.sessions import REFRESHED_AT
from backend.organisations.models import Practitioner
from tests.factories import PASSWORD, PatientFactory, PractitionerFactory, UserFactory

pytestmark = pytest.mark.django_db


CSRF_URL = "/api/console/v1/auth/csrf"
LOGIN_URL = "/api/console/v1/auth/login"
TOTP_URL = "/api/console/v1/auth/totp"
LOGOUT_URL = "/api/console/v1/auth/logout"
TICKET_URL = "/api/console/v1/ws-ticket"
SESSION_URL = "/api/console/v1/auth/session"
PROBLEM = "application/problem+json"


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings: Any) -> None:
    # The production hasher takes ~0.2 s a check; these tests check many passwords.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def new_user(**fields: Any) -> User:
    return cast(User, UserFactory(**fields))


def new_patient(**fields: Any) -> User:
    return cast(User, PatientFactory(**fields))


def new_doctor(**fields: Any) -> User:
    return cast(Practitioner, PractitionerFactory(**fields)).user


def assert_problem(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith(PROBLEM)
    body: dict[str, Any] = response.json()
    assert body["code"] == code
    assert body["status"] == status
    assert body["type"] == f"/problems/{code}"
    assert body["title"]
    assert body["detail"]
    return body


def password_step(client: APIClient, user: User, password: str = PASSWORD) -> Any:
    return client.post(LOGIN_URL, {"username": user.username, "password": password}, format="json")


def current_code(user: User, *, offset: int = 0) -> str:
    assert user.totp_secret
    return totp_code_at(secret=user.totp_secret, when=timezone.now() + dt.timedelta(seconds=offset))


def other_code(code: str) -> str:
    return f"{(int(code) + 500_000) % 1_000_000:06d}"


@pytest.fixture
def regulator() -> User:
    user = new_user(role=Role.REGULATOR)
    return user


# --- Doctors: password, then TOTP ----------------------------------------------------------


def test_a_doctors_password_alone_does_not_sign_in(api: APIClient, doctor: User) -> None:
    response = password_step(api, doctor)

    assert response.status_code == 200
    assert response.json() == {"second_factor_required": True}
    assert_problem(api.post(TICKET_URL), 401, "not_authenticated")
    assert not WsTicket.objects.exists()
    assert not AuditEvent.objects.filter(action="auth.console_login").exists()


def test_the_current_totp_code_completes_the_doctors_sign_in(api: APIClient, doctor: User) -> None:
    assert password_step(api, doctor).json() == {"second_factor_required": True}

    response = api.post(TOTP_URL, {"code": current_code(doctor)}, format="json")

    assert response.status_code == 200
    body = response.json()
    assert body["second_factor_required"] is False
    assert body["user"]["id"] == str(doctor.pk)
    assert body["user"]["role"] == "doctor"
    assert body["user"]["affiliation"]["kind"] == "hospital"
    ticket = api.post(TICKET_URL)
    assert ticket.status_code == 201
    assert WsTicket.objects.get().user_id == doctor.pk
    assert (
        AuditEvent.objects.filter(action="auth.console_login", actor_id=str(doctor.pk)).count() == 1
    )


def test_a_wrong_totp_code_is_refused_and_the_session_stays_signed_out(
    api: APIClient, doctor: User
) -> None:
    password_step(api, doctor)

    response = api.post(TOTP_URL, {"code": other_code(current_code(doctor))}, format="json")

    assert_problem(response, 401, "totp_invalid")
    assert_problem(api.post(TICKET_URL), 401, "not_authenticated")
    assert (
        AuditEvent.objects.filter(action="auth.totp_failed", actor_id=str(doctor.pk)).count() == 1
    )
    assert not AuditEvent.objects.filter(action="auth.console_login").exists()
    # The pending sign-in survives a typo: the right code still completes it.
    assert api.post(TOTP_URL, {"code": current_code(doctor)}, format="json").status_code == 200


def test_a_code_that_is_not_six_digits_is_refused(api: APIClient, doctor: User) -> None:
    password_step(api, doctor)

    assert_problem(api.post(TOTP_URL, {"code": "12ab56"}, format="json"), 401, "totp_invalid")
    assert_problem(api.post(TICKET_URL), 401, "not_authenticated")


def test_a_totp_code_cannot_be_replayed(api: APIClient, doctor: User) -> None:
    code = current_code(doctor)
    password_step(api, doctor)
    assert api.post(TOTP_URL, {"code": code}, format="json").status_code == 200
    assert api.post(LOGOUT_URL).status_code == 204

    # Someone who overheard the code tries it with the password.
    intruder = APIClient()
    password_step(intruder, doctor)
    replay = intruder.post(TOTP_URL, {"code": code}, format="json")

    assert_problem(replay, 401, "totp_invalid")
    assert_problem(intruder.post(TICKET_URL), 401, "not_authenticated")
    # The authenticator's next code works.
    fresh = intruder.post(TOTP_URL, {"code": current_code(doctor, offset=30)}, format="json")
    assert fresh.status_code == 200


def test_totp_without_the_password_step_is_not_authenticated(api: APIClient, doctor: User) -> None:
    response = api.post(TOTP_URL, {"code": current_code(doctor)}, format="json")

    assert_problem(response, 401, "not_authenticated")
    assert_problem(api.post(TICKET_URL), 401, "not_authenticated")
    doctor.refresh_from_db()
    assert doctor.totp_last_step == 0  # the code was not even checked, so not burnt


def test_a_doctor_without_an_authenticator_cannot_sign_in(api: APIClient) -> None:
    doctor = new_doctor(totp=False)

    response = password_step(api, doctor)

    assert_problem(response, 403, "totp_not_enrolled")
    assert_problem(api.post(TOTP_URL, {"code": "123456"}, format="json"), 401, "not_authenticated")
    assert_problem(api.post(TICKET_URL), 401, "not_authenticated")


def test_a_password_only_sign_in_elsewhere_does_not_open_the_console(api: APIClient) -> None:
    # A doctor who may also use the Django admin signs in there with the password alone.
    doctor = new_doctor(user__is_staff=True)

    admin_login = api.post(
        "/admin/login/", {"username": doctor.username, "password": PASSWORD, "next": "/admin/"}
    )

    assert admin_login.status_code == 302
    assert admin_login["Location"] == "/admin/"
    assert_problem(api.post(TICKET_URL), 401, "not_authenticated")
    assert_problem(api.get("/api/mobile/v1/me"), 401, "not_authenticated")
    assert not WsTicket.objects.exists()


# --- Other roles ---------------------------------------------------------------------------


def test_a_regulator_signs_in_with_the_password_alone(api: APIClient, regulator: User) -> None:
    response = password_step(api, regulator)

    assert response.status_code == 200
    body = response.json()
    assert body["second_factor_required"] is False
    assert body["user"]["id"] == str(regulator.pk)
    assert body["user"]["role"] == "regulator"
    assert api.post(TICKET_URL).status_code == 201


@pytest.mark.parametrize(
    ("role", "second_factor"),
    [
        (Role.PHARMACIST, True),
        (Role.PHARMACY_STAFF, False),
        (Role.ADMINISTRATOR, False),
    ],
)
def test_which_roles_need_a_second_factor(api: APIClient, role: str, second_factor: bool) -> None:
    user = new_user(role=role)
    if second_factor:
        totp_enrol(user=user)

    response = password_step(api, user)

    assert response.status_code == 200
    assert response.json()["second_factor_required"] is second_factor
    assert api.post(TICKET_URL).status_code == (401 if second_factor else 201)


def test_a_patient_account_cannot_use_the_console(api: APIClient) -> None:
    patient = new_patient()

    response = password_step(api, patient)

    assert_problem(response, 401, "authentication_failed")
    assert_problem(api.post(TICKET_URL), 401, "not_authenticated")
    assert not AuditEvent.objects.filter(action="auth.console_login").exists()
    assert AuditEvent.objects.filter(action="auth.console_login_failed").count() == 1


def test_a_wrong_password_is_refused_and_audited(api: APIClient, regulator: User) -> None:
    response = password_step(api, regulator, password="not-the-password")

    assert_problem(response, 401, "authentication_failed")
    assert_problem(api.post(TICKET_URL), 401, "not_authenticated")
    event = AuditEvent.objects.get(action="auth.console_login_failed")
    assert event.after == {"username": regulator.username}
    assert "not-the-password" not in str(event.after)


def test_a_disabled_account_cannot_sign_in(api: APIClient, regulator: User) -> None:
    User.objects.filter(pk=regulator.pk).update(is_active=False)

    assert_problem(password_step(api, regulator), 401, "authentication_failed")
    assert_problem(api.post(TICKET_URL), 401, "not_authenticated")


# --- Locking out password guessing ------------------------------------------------------


def test_five_wrong_passwords_lock_the_username(api: APIClient, regulator: User) -> None:
    failures = django_settings.CONSOLE_LOGIN_MAX_FAILURES
    assert failures == 5
    for _ in range(failures):
        assert_problem(
            password_step(api, regulator, "wrong-password"), 401, "authentication_failed"
        )

    locked = password_step(api, regulator)

    assert_problem(locked, 429, "account_locked")
    assert_problem(api.post(TICKET_URL), 401, "not_authenticated")
    assert not AuditEvent.objects.filter(action="auth.console_login").exists()
    # From another browser too, and whatever the case of the username.
    elsewhere = APIClient()
    shouted = elsewhere.post(
        LOGIN_URL, {"username": regulator.username.upper(), "password": PASSWORD}, format="json"
    )
    assert_problem(shouted, 429, "account_locked")
    assert_problem(password_step(elsewhere, regulator), 429, "account_locked")
    # Other accounts are not locked.
    colleague = new_user(role=Role.REGULATOR)
    assert password_step(APIClient(), colleague).status_code == 200


def test_four_wrong_passwords_then_the_right_one_signs_in_and_resets_the_count(
    api: APIClient, regulator: User
) -> None:
    for _ in range(4):
        password_step(api, regulator, "wrong-password")
    assert password_step(api, regulator).status_code == 200
    assert api.post(LOGOUT_URL).status_code == 204

    for _ in range(4):
        assert_problem(
            password_step(api, regulator, "wrong-password"), 401, "authentication_failed"
        )

    assert password_step(api, regulator).status_code == 200


# --- Session lifetime ------------------------------------------------------------------


def test_logout_ends_the_session_everywhere(api: APIClient, regulator: User) -> None:
    password_step(api, regulator)
    assert api.post(TICKET_URL).status_code == 201
    stolen_cookie = api.cookies[django_settings.SESSION_COOKIE_NAME].value

    response = api.post(LOGOUT_URL)

    assert response.status_code == 204
    assert_problem(api.post(TICKET_URL), 401, "not_authenticated")
    # The old cookie is dead on the server, not just forgotten by the browser.
    replayer = APIClient()
    replayer.cookies[django_settings.SESSION_COOKIE_NAME] = stolen_cookie
    assert_problem(replayer.post(TICKET_URL), 401, "not_authenticated")
    assert WsTicket.objects.count() == 1


def test_an_idle_session_expires(api: APIClient, regulator: User) -> None:
    password_step(api, regulator)
    assert api.post(TICKET_URL).status_code == 201

    Session.objects.update(expire_date=timezone.now() - dt.timedelta(seconds=1))

    assert_problem(api.post(TICKET_URL), 401, "not_authenticated")
    assert WsTicket.objects.count() == 1


def _age_the_session(seconds_left: int, refreshed_ago: int) -> None:
    """Make the one session look as if its expiry was last pushed ``refreshed_ago``
    seconds ago and ``seconds_left`` remain."""
    row = Session.objects.get()
    store = SessionStore(session_key=row.session_key)
    store[REFRESHED_AT] = int(time.time()) - refreshed_ago
    store.save()
    Session.objects.update(expire_date=timezone.now() + dt.timedelta(seconds=seconds_left))


def _seconds_left() -> float:
    return (Session.objects.get().expire_date - timezone.now()).total_seconds()


def test_working_keeps_the_session_alive_without_a_write_per_request(
    api: APIClient, regulator: User
) -> None:
    idle = django_settings.SESSION_COOKIE_AGE
    refresh = django_settings.SESSION_REFRESH_SECONDS
    password_step(api, regulator)

    # Pushed forward a moment ago: a request reads the session but leaves the row alone.
    _age_the_session(seconds_left=idle - 5, refreshed_ago=5)
    assert api.get(SESSION_URL).status_code == 200  # "stay signed in" always extends
    _age_the_session(seconds_left=idle - 5, refreshed_ago=5)
    with CaptureQueriesContext(connection) as queries:
        assert api.post(TICKET_URL).status_code == 201
    assert not any("django_session" in q["sql"] and "UPDATE" in q["sql"] for q in queries)
    assert idle - 10 < _seconds_left() <= idle - 5

    # Last pushed forward a refresh period ago: the same request extends it in full.
    _age_the_session(seconds_left=idle - refresh, refreshed_ago=refresh)
    assert api.post(TICKET_URL).status_code == 201
    assert _seconds_left() > idle - 5

    # Near the end, "stay signed in" extends even right after a refresh.
    _age_the_session(seconds_left=59, refreshed_ago=1)
    assert api.get(SESSION_URL).status_code == 200
    assert _seconds_left() > idle - 5


def test_the_session_key_changes_when_signing_in(api: APIClient, doctor: User) -> None:
    api.get(CSRF_URL)
    password_step(api, doctor)
    pending_key = api.cookies[django_settings.SESSION_COOKIE_NAME].value

    api.post(TOTP_URL, {"code": current_code(doctor)}, format="json")

    signed_in_key = api.cookies[django_settings.SESSION_COOKIE_NAME].value
    assert signed_in_key != pending_key
    assert api.post(TICKET_URL).status_code == 201


# --- CSRF --------------------------------------------------------------------------------


def test_the_console_api_needs_the_csrf_token(doctor: User) -> None:
    browser = APIClient(enforce_csrf_checks=True)
    csrf = browser.get(CSRF_URL)
    assert csrf.status_code == 200
    token = csrf.json()["csrf_token"]
    assert browser.cookies["csrftoken"].value
    step1 = browser.post(
        LOGIN_URL,
        {"username": doctor.username, "password": PASSWORD},
        format="json",
        HTTP_X_CSRFTOKEN=token,
    )
    assert step1.json() == {"second_factor_required": True}
    step2 = browser.post(
        TOTP_URL, {"code": current_code(doctor)}, format="json", HTTP_X_CSRFTOKEN=token
    )
    assert step2.status_code == 200

    without = browser.post(TICKET_URL)

    body = assert_problem(without, 403, "permission_denied")
    assert "CSRF" in body["detail"]
    # Signing in rotated the token: the one fetched before no longer passes.
    assert_problem(browser.post(TICKET_URL, HTTP_X_CSRFTOKEN=token), 403, "permission_denied")
    assert not WsTicket.objects.exists()
    rotated = browser.cookies["csrftoken"].value
    assert browser.post(TICKET_URL, HTTP_X_CSRFTOKEN=rotated).status_code == 201
    assert WsTicket.objects.count() == 1
    # Logging out is a state change too.
    assert_problem(browser.post(LOGOUT_URL), 403, "permission_denied")
    assert browser.post(TICKET_URL, HTTP_X_CSRFTOKEN=rotated).status_code == 201


def test_the_password_step_needs_the_csrf_token(regulator: User) -> None:
    # Otherwise another site could sign a visitor's browser in to an account of its
    # choosing (login CSRF).
    browser = APIClient(enforce_csrf_checks=True)
    token = browser.get(CSRF_URL).json()["csrf_token"]

    response = password_step(browser, regulator)

    assert_problem(response, 403, "permission_denied")
    assert_problem(browser.post(TICKET_URL), 401, "not_authenticated")
    assert not AuditEvent.objects.filter(action="auth.console_login").exists()
    with_token = browser.post(
        LOGIN_URL,
        {"username": regulator.username, "password": PASSWORD},
        format="json",
        HTTP_X_CSRFTOKEN=token,
    )
    assert with_token.status_code == 200


# --- Rate limit on the sign-in endpoints ------------------------------------------------


def test_wrong_totp_codes_lock_the_account_even_after_a_right_password(
    api: APIClient, doctor: User
) -> None:
    password_step(api, doctor)
    wrong = other_code(current_code(doctor))
    for _ in range(django_settings.CONSOLE_LOGIN_MAX_FAILURES):
        assert_problem(api.post(TOTP_URL, {"code": wrong}, format="json"), 401, "totp_invalid")

    # The right code no longer helps, nor does starting over with the right password.
    assert_problem(
        api.post(TOTP_URL, {"code": current_code(doctor)}, format="json"), 429, "account_locked"
    )
    fresh = APIClient()
    assert_problem(password_step(fresh, doctor), 429, "account_locked")
    assert_problem(api.post(TICKET_URL), 401, "not_authenticated")
    failures = AuditEvent.objects.filter(action="auth.totp_failed", actor_id=str(doctor.pk))
    assert failures.count() == django_settings.CONSOLE_LOGIN_MAX_FAILURES


def test_a_patient_bearer_token_does_not_lift_the_sign_in_rate_limit(api: APIClient) -> None:
    # Anyone can get a patient's token by SMS; carrying one must not make the sign-in
    # endpoints treat the guesser as a signed-in client that is not rate-limited.
    patient = new_patient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {tokens_issue(user=patient).access}")
    for i in range(30):  # the per-address limit: 30 an hour, over many usernames
        response = api.post(
            LOGIN_URL, {"username": f"guess{i}", "password": "x" * 12}, format="json"
        )
        assert_problem(response, 401, "authentication_failed")

    response = api.post(LOGIN_URL, {"username": "guess-next", "password": "x" * 12}, format="json")

    assert_problem(response, 429, "throttled")
    assert int(response["Retry-After"]) > 0
