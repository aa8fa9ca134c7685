"""API tokens for machine clients (pharmacy systems, regulator tools): created by an
administrator, shown once, stored only as a hash, revocable (CONTRACT 1)."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any, cast

import pytest
from django.contrib.messages import get_messages
from django.db import connection
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from backend.audit.models import AuditEvent
from backend.identity.models import ApiToken, Role, User
from backend.identity.services import api_token_create, api_token_revoke
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


ME_URL = "/api/mobile/v1/me"
CHANGELIST_URL = "/admin/identity/apitoken/"
PROBLEM = "application/problem+json"


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def new_user(**fields: Any) -> User:
    return cast(User, UserFactory(**fields))


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


def me_with(authorization: str) -> Any:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=authorization)
    return client.get(ME_URL)


@pytest.fixture
def admin(settings: Any) -> User:
    # The admin's pages link their static files; the manifest storage configured for
    # production needs ``collectstatic``, which the test run does not do.
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }
    user: User = User.objects.create_superuser("root", "correct-horse-battery-9")
    return user


@pytest.fixture
def pharmacy_system() -> User:
    user = new_user(role=Role.PHARMACY_STAFF)
    return user


def test_a_new_key_authenticates_as_its_account(admin: User, pharmacy_system: User) -> None:
    issued = api_token_create(user=pharmacy_system, name="ERP", created_by=admin)
    assert re.fullmatch(r"ih_[0-9a-f]{8}_[A-Za-z0-9_-]{43}", issued.key)

    response = me_with(f"Token {issued.key}")

    assert response.status_code == 200
    assert response.json()["id"] == str(pharmacy_system.pk)
    assert response.json()["role"] == "pharmacy_staff"
    token = ApiToken.objects.get()
    assert token.last_used_at is not None
    event = AuditEvent.objects.get(action="api_token.created")
    assert event.actor_id == str(admin.pk)
    assert event.object_id == str(token.pk)
    assert issued.key not in str(event.after)


def test_the_scheme_name_is_case_insensitive(pharmacy_system: User) -> None:
    issued = api_token_create(user=pharmacy_system, name="ERP")

    assert me_with(f"token {issued.key}").status_code == 200


def test_a_revoked_key_is_refused_with_token_revoked(admin: User, pharmacy_system: User) -> None:
    issued = api_token_create(user=pharmacy_system, name="ERP", created_by=admin)
    assert me_with(f"Token {issued.key}").status_code == 200

    assert api_token_revoke(token=issued.token, revoked_by=admin) is True

    response = me_with(f"Token {issued.key}")
    assert_problem(response, 401, "token_revoked")
    token = ApiToken.objects.get()
    assert token.revoked_at is not None
    assert token.revoked_by_id == admin.pk


def test_revocation_is_audited_once(admin: User, pharmacy_system: User) -> None:
    issued = api_token_create(user=pharmacy_system, name="ERP", created_by=admin)

    api_token_revoke(token=issued.token, revoked_by=admin)
    first_revoked_at = ApiToken.objects.get().revoked_at
    again = api_token_revoke(token=issued.token, revoked_by=None)

    assert again is False
    event = AuditEvent.objects.get(action="api_token.revoked")
    assert event.actor_id == str(admin.pk)
    assert event.object_type == "api_token"
    assert event.object_id == str(issued.token.pk)
    token = ApiToken.objects.get()
    assert token.revoked_at == first_revoked_at
    assert token.revoked_by_id == admin.pk


def test_an_expired_key_is_refused_with_token_expired(pharmacy_system: User) -> None:
    issued = api_token_create(
        user=pharmacy_system, name="ERP", expires_at=timezone.now() + dt.timedelta(days=1)
    )
    assert me_with(f"Token {issued.key}").status_code == 200

    ApiToken.objects.update(expires_at=timezone.now() - dt.timedelta(seconds=1))

    assert_problem(me_with(f"Token {issued.key}"), 401, "token_expired")


@pytest.mark.parametrize(
    "authorization",
    [
        "Token not-a-token",
        "Token ih_deadbeef",
        "Token ih_deadbeef_" + "A" * 43,  # well-formed, never issued
        "Token ih_only",
        "Token ",
        "Token a b",
    ],
)
def test_malformed_or_unknown_keys_are_refused(pharmacy_system: User, authorization: str) -> None:
    api_token_create(user=pharmacy_system, name="ERP")

    assert_problem(me_with(authorization), 401, "authentication_failed")
    assert ApiToken.objects.get().last_used_at is None


def test_a_key_with_a_real_prefix_but_a_wrong_secret_is_refused(pharmacy_system: User) -> None:
    issued = api_token_create(user=pharmacy_system, name="ERP")
    forged = f"ih_{issued.token.prefix}_" + "B" * 43

    assert_problem(me_with(f"Token {forged}"), 401, "authentication_failed")
    assert ApiToken.objects.get().last_used_at is None


def test_a_key_of_a_disabled_account_is_refused(pharmacy_system: User) -> None:
    issued = api_token_create(user=pharmacy_system, name="ERP")
    User.objects.filter(pk=pharmacy_system.pk).update(is_active=False)

    assert_problem(me_with(f"Token {issued.key}"), 401, "authentication_failed")


def test_the_database_holds_only_a_hash_of_the_key(pharmacy_system: User) -> None:
    issued = api_token_create(user=pharmacy_system, name="ERP")
    secret = issued.key.split("_", 2)[2]

    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM identity_apitoken")
        rows = cursor.fetchall()
        cursor.execute("SELECT * FROM audit_auditevent")
        audit_rows = cursor.fetchall()

    assert len(rows) == 1
    for row in [*rows, *audit_rows]:
        for value in row:
            assert issued.key not in str(value)
            assert secret not in str(value)
    # ...and the stored hash still recognises the key.
    assert me_with(f"Token {issued.key}").status_code == 200


# --- The Django admin ---------------------------------------------------------------------


def test_the_admin_revoke_action_revokes_only_the_selected_tokens(
    client: Client, admin: User, pharmacy_system: User
) -> None:
    chosen = api_token_create(user=pharmacy_system, name="old ERP", created_by=admin)
    kept = api_token_create(user=pharmacy_system, name="new ERP", created_by=admin)
    client.force_login(admin)
    assert client.get(CHANGELIST_URL).status_code == 200

    response = client.post(
        CHANGELIST_URL,
        {"action": "revoke", "_selected_action": [str(chosen.token.pk)], "index": "0"},
    )

    assert response.status_code == 302
    assert [str(m) for m in get_messages(response.wsgi_request)] == ["Revoked 1 token(s)."]
    chosen.token.refresh_from_db()
    assert chosen.token.revoked_at is not None
    assert chosen.token.revoked_by_id == admin.pk
    assert_problem(me_with(f"Token {chosen.key}"), 401, "token_revoked")
    assert me_with(f"Token {kept.key}").status_code == 200
    event = AuditEvent.objects.get(action="api_token.revoked")
    assert event.object_id == str(chosen.token.pk)
    assert event.actor_id == str(admin.pk)


def test_the_admin_add_form_shows_a_working_key_once(
    client: Client, admin: User, pharmacy_system: User
) -> None:
    client.force_login(admin)

    response = client.post(
        f"{CHANGELIST_URL}add/",
        {"user": str(pharmacy_system.pk), "name": "ERP", "expires_at_0": "", "expires_at_1": ""},
    )

    assert response.status_code == 302, response.content[:2000]
    shown = " ".join(str(m) for m in get_messages(response.wsgi_request))
    match = re.search(r"\b(ih_[0-9a-f]{8}_[A-Za-z0-9_-]{43})\b", shown)
    assert match, shown
    key = match.group(1)
    token = ApiToken.objects.get()
    assert token.user_id == pharmacy_system.pk
    assert token.created_by_id == admin.pk
    assert token.prefix == key.split("_")[1]
    assert key not in token.key_hash
    assert me_with(f"Token {key}").json()["id"] == str(pharmacy_system.pk)
    # The page the admin lands on shows it; the next one does not.
    assert key in client.get(CHANGELIST_URL).content.decode()
    assert key not in client.get(CHANGELIST_URL).content.decode()


def test_the_admin_is_closed_to_non_staff(client: Client, pharmacy_system: User) -> None:
    issued = api_token_create(user=pharmacy_system, name="ERP")
    client.force_login(pharmacy_system)

    response = client.post(
        CHANGELIST_URL, {"action": "revoke", "_selected_action": [str(issued.token.pk)]}
    )

    assert response.status_code == 302
    assert "/admin/login/" in response["Location"]
    assert ApiToken.objects.get().revoked_at is None
    assert me_with(f"Token {issued.key}").status_code == 200
