"""Patients sign in with their phone: a one-time code by SMS, then JWTs (CONTRACT 1).

The demo SMS backend writes the code to the log, so these tests read it from there, as a
demo user would (running on-commit callbacks too, in case the SMS waits for the commit).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import re
from typing import Any, cast

import jwt
import pytest
from django.conf import settings as django_settings
from django.db import connection
from django.utils import timezone
from rest_framework.test import APIClient

from backend.audit.models import AuditEvent
from backend.identity.models import OtpChallenge, RefreshToken, Role, User
from backend.organisations.models import Practitioner
from tests.factories import PatientFactory, PractitionerFactory

pytestmark = pytest.mark.django_db


OTP_URL = "/api/mobile/v1/auth/otp"
TOKEN_URL = "/api/mobile/v1/auth/token"
REFRESH_URL = "/api/mobile/v1/auth/refresh"
ME_URL = "/api/mobile/v1/me"
PHONE = "13800138000"
PROBLEM = "application/problem+json"
SMS_LOGGER = "backend.identity.sms"


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


def sms_codes(caplog: pytest.LogCaptureFixture, phone: str) -> list[str]:
    """Every login code the demo SMS backend logged for ``phone``, oldest first."""
    digits = re.sub(r"\D", "", phone).removeprefix("86") if phone.startswith("+") else phone
    codes = []
    for record in caplog.records:
        if record.name != SMS_LOGGER or record.levelno != logging.WARNING:
            continue
        message = record.getMessage()
        if f"SMS to {digits} " in message:
            match = re.search(r"'code': '(\d{6})'", message)
            assert match, message
            codes.append(match.group(1))
    return codes


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings: Any) -> None:
    # Factories give every account a password; hashing it the production way is slow.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def request_code(
    api: APIClient, caplog: pytest.LogCaptureFixture, django_capture_on_commit_callbacks: Any
) -> Any:
    """POST auth/otp for a phone and return (response, the code the SMS carried or None)."""

    def _request(phone: str = PHONE) -> tuple[Any, str | None]:
        before = len(sms_codes(caplog, phone))
        with (
            caplog.at_level(logging.WARNING, logger=SMS_LOGGER),
            django_capture_on_commit_callbacks(execute=True),
        ):
            response = api.post(OTP_URL, {"phone": phone}, format="json")
        codes = sms_codes(caplog, phone)[before:]
        assert len(codes) <= 1
        return response, (codes[0] if codes else None)

    return _request


@pytest.fixture
def sign_in(api: APIClient, request_code: Any) -> Any:
    """Request a code and exchange it; return the token response body."""

    def _sign_in(phone: str = PHONE) -> dict[str, Any]:
        response, code = request_code(phone)
        assert response.status_code == 202
        assert code is not None
        token = api.post(TOKEN_URL, {"phone": phone, "code": code}, format="json")
        assert token.status_code == 200, token.content
        body: dict[str, Any] = token.json()
        return body

    return _sign_in


def wrong(code: str) -> str:
    return f"{(int(code) + 1) % 1_000_000:06d}"


def me(token: str) -> Any:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client.get(ME_URL)


# --- Requesting a code ---------------------------------------------------------------------


def test_requesting_a_code_answers_202_and_texts_a_six_digit_code(request_code: Any) -> None:
    response, code = request_code("+86 138-0013-8000")

    assert response.status_code == 202
    assert response.json() == {"expires_in": 300, "resend_after": 60}
    assert code is not None
    assert re.fullmatch(r"\d{6}", code)
    assert OtpChallenge.objects.count() == 1


def test_an_invalid_phone_is_a_validation_error_and_sends_nothing(
    request_code: Any, caplog: pytest.LogCaptureFixture
) -> None:
    response, code = request_code("12345")

    body = assert_problem(response, 400, "validation_error")
    assert list(body["errors"]) == ["phone"]
    assert body["errors"]["phone"]
    assert code is None
    assert not [r for r in caplog.records if r.name == SMS_LOGGER]
    assert OtpChallenge.objects.count() == 0


def test_a_missing_phone_is_a_validation_error(api: APIClient) -> None:
    body = assert_problem(api.post(OTP_URL, {}, format="json"), 400, "validation_error")
    assert "phone" in body["errors"]


def test_a_second_request_within_a_minute_is_throttled_and_sends_no_sms(
    request_code: Any,
) -> None:
    first, first_code = request_code()
    assert first.status_code == 202
    assert first_code is not None

    second, second_code = request_code("+8613800138000")  # the same number, written otherwise

    body = assert_problem(second, 429, "throttled")
    assert 1 <= body["retry_after"] <= 60
    assert second_code is None
    assert OtpChallenge.objects.count() == 1


def test_a_new_code_may_be_requested_once_the_minute_has_passed(request_code: Any) -> None:
    assert request_code()[0].status_code == 202
    OtpChallenge.objects.update(created_at=timezone.now() - dt.timedelta(seconds=61))

    response, code = request_code()

    assert response.status_code == 202
    assert code is not None
    assert OtpChallenge.objects.count() == 2


def test_the_daily_cap_stops_codes_to_one_number(request_code: Any) -> None:
    cap = django_settings.OTP_MAX_PER_PHONE_PER_DAY
    for _ in range(cap):
        assert request_code()[0].status_code == 202
        # Step past the per-minute limit only: every code stays within the last day.
        OtpChallenge.objects.update(created_at=timezone.now() - dt.timedelta(seconds=61))

    response, code = request_code()

    assert_problem(response, 429, "throttled")
    assert code is None
    assert OtpChallenge.objects.count() == cap
    # Another number is not affected.
    assert request_code("13900139000")[0].status_code == 202


def test_one_address_may_not_request_codes_for_many_numbers(request_code: Any) -> None:
    for n in range(20):  # otp_ip: 20 an hour
        assert request_code(f"1390000{n:04d}")[0].status_code == 202

    response, code = request_code("13912345678")

    assert_problem(response, 429, "throttled")
    assert int(response["Retry-After"]) > 0
    assert code is None
    assert OtpChallenge.objects.count() == 20


# --- Exchanging the code for tokens ----------------------------------------------------


def test_the_logged_code_signs_in_and_the_access_token_opens_me(
    api: APIClient, request_code: Any
) -> None:
    _response, code = request_code()
    assert code is not None

    token = api.post(TOKEN_URL, {"phone": PHONE, "code": code}, format="json")

    assert token.status_code == 200
    body = token.json()
    assert set(body) == {"access", "refresh", "access_expires_at"}
    expires = dt.datetime.fromisoformat(body["access_expires_at"])
    lifetime = (expires - timezone.now()).total_seconds()
    assert 0 < lifetime <= 15 * 60
    account = User.objects.get()
    assert account.role == Role.PATIENT
    assert (
        AuditEvent.objects.filter(action="account.registered", actor_id=str(account.pk)).count()
        == 1
    )
    assert (
        AuditEvent.objects.filter(action="auth.patient_login", actor_id=str(account.pk)).count()
        == 1
    )

    profile = me(body["access"])

    assert profile.status_code == 200
    assert profile.json() == {
        "id": str(account.pk),
        "username": account.username,
        "role": "patient",
        "display_name": "",
        "phone": "138****8000",
        "affiliation": None,
    }


def test_signing_in_again_reuses_the_account(api: APIClient, sign_in: Any) -> None:
    first = sign_in()
    OtpChallenge.objects.update(created_at=timezone.now() - dt.timedelta(seconds=61))

    second = sign_in()

    assert User.objects.count() == 1
    assert me(first["access"]).json()["id"] == me(second["access"]).json()["id"]
    assert AuditEvent.objects.filter(action="account.registered").count() == 1


def test_me_without_credentials_is_not_authenticated(api: APIClient) -> None:
    assert_problem(api.get(ME_URL), 401, "not_authenticated")


def test_a_wrong_code_is_refused_and_counted(api: APIClient, request_code: Any) -> None:
    _, code = request_code()
    assert code is not None

    response = api.post(TOKEN_URL, {"phone": PHONE, "code": wrong(code)}, format="json")

    body = assert_problem(response, 400, "otp_invalid")
    assert "4 attempt(s) left" in body["detail"]
    assert OtpChallenge.objects.get().attempts == 1
    assert not User.objects.exists()
    assert not RefreshToken.objects.exists()
    # The right code still works after one mistake.
    assert api.post(TOKEN_URL, {"phone": PHONE, "code": code}, format="json").status_code == 200


def test_after_max_wrong_codes_even_the_right_code_is_refused(
    api: APIClient, request_code: Any
) -> None:
    _, code = request_code()
    assert code is not None
    attempts = django_settings.OTP_MAX_ATTEMPTS
    for n in range(1, attempts):
        response = api.post(TOKEN_URL, {"phone": PHONE, "code": wrong(code)}, format="json")
        assert_problem(response, 400, "otp_invalid")
        assert OtpChallenge.objects.get().attempts == n
    last_wrong = api.post(TOKEN_URL, {"phone": PHONE, "code": wrong(code)}, format="json")
    assert_problem(last_wrong, 429, "otp_attempts_exceeded")
    assert OtpChallenge.objects.get().attempts == attempts

    right = api.post(TOKEN_URL, {"phone": PHONE, "code": code}, format="json")

    assert_problem(right, 429, "otp_attempts_exceeded")
    challenge = OtpChallenge.objects.get()
    assert challenge.attempts == attempts
    assert challenge.consumed_at is None
    assert not User.objects.exists()
    assert not RefreshToken.objects.exists()
    assert not AuditEvent.objects.filter(action="auth.patient_login").exists()


def test_a_new_code_after_a_burnt_one_signs_in(api: APIClient, request_code: Any) -> None:
    _, code = request_code()
    assert code is not None
    for _ in range(django_settings.OTP_MAX_ATTEMPTS):
        api.post(TOKEN_URL, {"phone": PHONE, "code": wrong(code)}, format="json")
    OtpChallenge.objects.update(created_at=timezone.now() - dt.timedelta(seconds=61))

    _, fresh = request_code()
    assert fresh is not None
    response = api.post(TOKEN_URL, {"phone": PHONE, "code": fresh}, format="json")

    assert response.status_code == 200
    assert RefreshToken.objects.count() == 1


def test_a_newer_code_replaces_the_older_one(api: APIClient, request_code: Any) -> None:
    _, old = request_code()
    OtpChallenge.objects.update(created_at=timezone.now() - dt.timedelta(seconds=61))
    _, new = request_code()
    assert old is not None
    assert new is not None
    if old == new:
        pytest.skip("the two random codes happen to be equal (one chance in a million)")

    assert_problem(
        api.post(TOKEN_URL, {"phone": PHONE, "code": old}, format="json"), 400, "otp_invalid"
    )
    assert api.post(TOKEN_URL, {"phone": PHONE, "code": new}, format="json").status_code == 200


def test_an_expired_code_is_refused(api: APIClient, request_code: Any) -> None:
    _, code = request_code()
    assert code is not None
    OtpChallenge.objects.update(expires_at=timezone.now() - dt.timedelta(seconds=1))

    response = api.post(TOKEN_URL, {"phone": PHONE, "code": code}, format="json")

    assert_problem(response, 400, "otp_invalid")
    assert not User.objects.exists()
    assert not RefreshToken.objects.exists()


def test_a_code_works_only_once(api: APIClient, request_code: Any) -> None:
    _, code = request_code()
    assert code is not None
    assert api.post(TOKEN_URL, {"phone": PHONE, "code": code}, format="json").status_code == 200

    again = api.post(TOKEN_URL, {"phone": PHONE, "code": code}, format="json")

    assert_problem(again, 400, "otp_invalid")
    assert RefreshToken.objects.count() == 1


def test_a_code_for_one_number_does_not_sign_in_another(api: APIClient, request_code: Any) -> None:
    _, code_a = request_code()
    _, code_b = request_code("13900139000")
    assert code_a is not None
    assert code_b is not None
    if code_a == code_b:
        pytest.skip("the two random codes happen to be equal (one chance in a million)")

    response = api.post(TOKEN_URL, {"phone": "13900139000", "code": code_a}, format="json")

    assert_problem(response, 400, "otp_invalid")
    assert not User.objects.exists()


def test_a_staff_phone_cannot_sign_in_as_a_patient(api: APIClient, request_code: Any) -> None:
    staff = new_doctor(user__phone="13700137000")
    _, code = request_code("13700137000")
    assert code is not None

    response = api.post(TOKEN_URL, {"phone": "13700137000", "code": code}, format="json")

    assert_problem(response, 403, "permission_denied")
    assert not RefreshToken.objects.exists()
    assert list(User.objects.values_list("pk", flat=True)) == [staff.pk]
    assert not AuditEvent.objects.filter(action="auth.patient_login").exists()
    staff.refresh_from_db()
    assert staff.role == Role.DOCTOR


def test_a_disabled_patient_cannot_sign_in(api: APIClient, request_code: Any) -> None:
    new_patient(phone=PHONE, is_active=False)
    _, code = request_code()
    assert code is not None

    response = api.post(TOKEN_URL, {"phone": PHONE, "code": code}, format="json")

    assert_problem(response, 401, "authentication_failed")
    assert not RefreshToken.objects.exists()


# --- Tokens ---------------------------------------------------------------------------------


def test_refresh_rotates_and_reusing_the_old_refresh_revokes_the_family(
    api: APIClient, sign_in: Any
) -> None:
    first = sign_in()

    rotated = api.post(REFRESH_URL, {"refresh": first["refresh"]}, format="json")

    assert rotated.status_code == 200
    second = rotated.json()
    assert set(second) == {"access", "refresh", "access_expires_at"}
    assert second["refresh"] != first["refresh"]
    assert second["access"] != first["access"]
    assert me(second["access"]).status_code == 200

    replay = api.post(REFRESH_URL, {"refresh": first["refresh"]}, format="json")

    assert_problem(replay, 401, "token_revoked")
    # Reuse means the token leaked: the pair issued from it is revoked as well.
    after = api.post(REFRESH_URL, {"refresh": second["refresh"]}, format="json")
    assert_problem(after, 401, "token_revoked")
    assert not RefreshToken.objects.filter(revoked_at__isnull=True).exists()
    assert RefreshToken.objects.count() == 2


def test_reuse_detection_leaves_other_sessions_of_the_patient_alone(
    api: APIClient, sign_in: Any
) -> None:
    phone_a = sign_in()
    OtpChallenge.objects.update(created_at=timezone.now() - dt.timedelta(seconds=61))
    tablet = sign_in()  # a second device, its own token family
    api.post(REFRESH_URL, {"refresh": phone_a["refresh"]}, format="json")

    assert_problem(
        api.post(REFRESH_URL, {"refresh": phone_a["refresh"]}, format="json"), 401, "token_revoked"
    )

    assert api.post(REFRESH_URL, {"refresh": tablet["refresh"]}, format="json").status_code == 200


def test_a_disabled_account_cannot_refresh(api: APIClient, sign_in: Any) -> None:
    tokens = sign_in()
    User.objects.update(is_active=False)

    response = api.post(REFRESH_URL, {"refresh": tokens["refresh"]}, format="json")

    assert_problem(response, 401, "authentication_failed")
    assert RefreshToken.objects.count() == 1


def test_a_garbage_refresh_token_is_refused(api: APIClient) -> None:
    response = api.post(REFRESH_URL, {"refresh": "not-a-jwt"}, format="json")
    assert_problem(response, 401, "authentication_failed")
    assert not RefreshToken.objects.exists()


def test_an_access_token_is_not_a_refresh_token(api: APIClient, sign_in: Any) -> None:
    tokens = sign_in()

    response = api.post(REFRESH_URL, {"refresh": tokens["access"]}, format="json")

    assert_problem(response, 401, "authentication_failed")
    assert RefreshToken.objects.count() == 1


def test_an_expired_access_token_is_refused_with_token_expired(sign_in: Any, settings: Any) -> None:
    settings.JWT_ACCESS_TTL_SECONDS = -60  # tokens issued now expired a minute ago
    tokens = sign_in()

    response = me(tokens["access"])

    assert_problem(response, 401, "token_expired")
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_a_refresh_token_is_not_an_access_token(sign_in: Any) -> None:
    tokens = sign_in()

    assert_problem(me(tokens["refresh"]), 401, "authentication_failed")


def test_a_tampered_access_token_is_refused(sign_in: Any) -> None:
    access = sign_in()["access"]
    header, payload, signature = access.split(".")
    tampered = f"{header}.{payload}.{signature[:-2]}{'AA' if signature[-2:] != 'AA' else 'BB'}"

    assert_problem(me(tampered), 401, "authentication_failed")


@pytest.mark.parametrize(
    ("key", "algorithm"),
    [(None, "none"), ("a-guessed-signing-key-of-32-bytes!", "HS256")],
    ids=["unsigned", "foreign-key"],
)
def test_a_forged_access_token_is_refused(sign_in: Any, key: Any, algorithm: str) -> None:
    sign_in()
    account = User.objects.get()
    now = int(timezone.now().timestamp())
    forged = jwt.encode(
        {
            "iss": django_settings.JWT_ISSUER,
            "sub": str(account.pk),
            "role": "patient",
            "typ": "access",
            "jti": "forged",
            "iat": now,
            "exp": now + 600,
        },
        key,
        algorithm=algorithm,
    )

    assert_problem(me(forged), 401, "authentication_failed")


def test_a_disabled_accounts_access_token_stops_working(sign_in: Any) -> None:
    tokens = sign_in()
    User.objects.update(is_active=False)

    assert_problem(me(tokens["access"]), 401, "authentication_failed")


# --- Personal data and the account ------------------------------------------------------


def test_the_phone_number_is_never_stored_in_plaintext(sign_in: Any) -> None:
    sign_in()
    account = User.objects.get()
    digits = PHONE
    naive_hash = hashlib.sha256(digits.encode()).hexdigest()

    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM identity_user")
        user_rows = cursor.fetchall()
        cursor.execute("SELECT * FROM identity_otpchallenge")
        otp_rows = cursor.fetchall()
        cursor.execute("SELECT phone FROM identity_user")
        (stored_phone,) = cursor.fetchone()

    assert len(user_rows) == 1
    assert len(otp_rows) == 1
    for row in [*user_rows, *otp_rows]:
        for value in row:
            assert digits not in str(value)
            assert naive_hash not in str(value)
    assert stored_phone
    assert digits not in stored_phone
    # ...and yet the application reads it back.
    assert account.phone == PHONE


def test_patch_me_changes_the_display_name_and_is_audited(sign_in: Any) -> None:
    access = sign_in()["access"]
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {access}")
    account = User.objects.get()

    response = client.patch(ME_URL, {"display_name": "  王小明 "}, format="json")

    assert response.status_code == 200
    assert response.json()["display_name"] == "王小明"
    assert client.get(ME_URL).json()["display_name"] == "王小明"
    event = AuditEvent.objects.get(action="account.updated")
    assert event.actor_id == str(account.pk)
    assert event.object_type == "account"
    assert event.object_id == str(account.pk)
    assert event.before == {"display_name": ""}
    assert event.after == {"display_name": "王小明"}


def test_patch_me_with_a_too_long_name_changes_nothing(sign_in: Any) -> None:
    access = sign_in()["access"]
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {access}")

    response = client.patch(ME_URL, {"display_name": "名" * 101}, format="json")

    body = assert_problem(response, 400, "validation_error")
    assert "display_name" in body["errors"]
    assert User.objects.get().display_name == ""
    assert not AuditEvent.objects.filter(action="account.updated").exists()


def test_patch_me_needs_a_token(api: APIClient, patient: User) -> None:
    response = api.patch(ME_URL, {"display_name": "x"}, format="json")

    assert_problem(response, 401, "not_authenticated")
    assert not AuditEvent.objects.filter(action="account.updated").exists()
