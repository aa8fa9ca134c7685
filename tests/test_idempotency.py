"""``Idempotency-Key`` on mutating calls (CONTRACT §0), through ``PATCH /api/mobile/v1/me``.

A client that lost a response retries with the same key and body and gets the stored
response back (``Idempotent-Replayed: true``) without the effect happening twice; the
same key with another body is refused with 422 ``idempotency_key_reused``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import uuid
from typing import Any

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from backend.api.models import IdempotencyRecord
from backend.api.tasks import purge_expired_idempotency_keys
from backend.audit.models import AuditEvent
from backend.identity.models import Role, User
from backend.identity.services import api_token_create
from tests.factories import PASSWORD, PatientFactory, UserFactory

PROBLEM = "application/problem+json"
ME = "/api/mobile/v1/me"
LOGIN = "/api/console/v1/auth/login"

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def auth(user: User) -> dict[str, str]:
    return {"HTTP_AUTHORIZATION": f"Token {api_token_create(user=user, name='t').key}"}


def patch_me(api: APIClient, creds: dict[str, str], body: dict[str, Any], key: str | None) -> Any:
    headers: dict[str, Any] = dict(creds)
    if key is not None:
        headers["HTTP_IDEMPOTENCY_KEY"] = key
    return api.patch(ME, body, format="json", **headers)


def updates_of(user: User) -> int:
    return AuditEvent.objects.filter(action="account.updated", actor_id=str(user.pk)).count()


def display_name(user: User) -> str:
    user.refresh_from_db()
    return user.display_name


def assert_problem(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.content
    assert response["Content-Type"] == PROBLEM
    body: dict[str, Any] = json.loads(response.content)
    assert body["type"] == f"/problems/{code}"
    assert body["code"] == code
    assert body["status"] == status
    assert body["title"]
    assert body["detail"]
    return body


@pytest.fixture
def me(patient: User) -> tuple[User, dict[str, str]]:
    return patient, auth(patient)


# --- Replay ---------------------------------------------------------------------------------


def test_same_key_and_body_replays_the_stored_response_once(api: APIClient, me: Any) -> None:
    user, creds = me
    key = str(uuid.uuid4())

    first = patch_me(api, creds, {"display_name": "王小明"}, key)

    assert first.status_code == 200
    assert first.json()["display_name"] == "王小明"
    assert not first.has_header("Idempotent-Replayed")
    assert updates_of(user) == 1

    # Someone else changes the name between the lost response and the retry: the
    # retry must answer what the first call answered, and must not run again.
    User.objects.filter(pk=user.pk).update(display_name="changed elsewhere")
    second = patch_me(api, creds, {"display_name": "王小明"}, key)

    assert second.status_code == 200
    assert second["Idempotent-Replayed"] == "true"
    assert second.json() == first.json()
    assert second["Content-Type"] == first["Content-Type"]
    assert updates_of(user) == 1
    assert display_name(user) == "changed elsewhere"


def test_replay_keeps_working_for_later_retries(api: APIClient, me: Any) -> None:
    user, creds = me
    first = patch_me(api, creds, {"display_name": "A"}, "retry-key")

    replays = [patch_me(api, creds, {"display_name": "A"}, "retry-key") for _ in range(3)]

    assert all(r.status_code == 200 and r["Idempotent-Replayed"] == "true" for r in replays)
    assert all(r.json() == first.json() for r in replays)
    assert updates_of(user) == 1


def test_without_a_key_every_call_runs(api: APIClient, me: Any) -> None:
    user, creds = me

    for _ in range(2):
        response = patch_me(api, creds, {"display_name": "A"}, None)
        assert response.status_code == 200
        assert not response.has_header("Idempotent-Replayed")

    assert updates_of(user) == 2
    assert not IdempotencyRecord.objects.exists()


def test_a_new_key_runs_the_call_again(api: APIClient, me: Any) -> None:
    user, creds = me

    patch_me(api, creds, {"display_name": "A"}, "key-1")
    response = patch_me(api, creds, {"display_name": "A"}, "key-2")

    assert response.status_code == 200
    assert not response.has_header("Idempotent-Replayed")
    assert updates_of(user) == 2


# --- Reuse with another request ---------------------------------------------------------------


def test_same_key_with_a_different_body_is_refused(api: APIClient, me: Any) -> None:
    user, creds = me
    assert patch_me(api, creds, {"display_name": "A"}, "k").status_code == 200

    response = patch_me(api, creds, {"display_name": "B"}, "k")

    assert_problem(response, 422, "idempotency_key_reused")
    assert not response.has_header("Idempotent-Replayed")
    assert display_name(user) == "A"
    assert updates_of(user) == 1


def test_same_key_on_another_path_is_refused(api: APIClient, me: Any) -> None:
    user, creds = me
    assert patch_me(api, creds, {"display_name": "A"}, "k").status_code == 200

    response = api.patch(
        f"{ME}?lang=en", {"display_name": "A"}, format="json", HTTP_IDEMPOTENCY_KEY="k", **creds
    )

    assert_problem(response, 422, "idempotency_key_reused")
    assert updates_of(user) == 1


def test_keys_belong_to_their_user(api: APIClient, me: Any) -> None:
    user, creds = me
    other: User = PatientFactory()
    other_creds = auth(other)
    assert patch_me(api, creds, {"display_name": "A"}, "shared-key").status_code == 200

    same_body = patch_me(api, other_creds, {"display_name": "A"}, "shared-key")
    other_body = patch_me(api, other_creds, {"display_name": "B"}, "shared-key")

    # The other user's first call runs (no replay of someone else's response)...
    assert same_body.status_code == 200
    assert not same_body.has_header("Idempotent-Replayed")
    assert same_body.json()["id"] == str(other.pk)
    # ...and their second call with another body is *their* reuse, not ours.
    assert_problem(other_body, 422, "idempotency_key_reused")
    assert display_name(other) == "A"
    assert display_name(user) == "A"
    assert updates_of(user) == 1
    assert updates_of(other) == 1


def test_the_same_user_shares_keys_across_credentials(api: APIClient, me: Any) -> None:
    user, creds = me
    second_token = auth(user)  # e.g. the same account on another device
    first = patch_me(api, creds, {"display_name": "A"}, "k")

    replay = patch_me(api, second_token, {"display_name": "A"}, "k")

    assert replay["Idempotent-Replayed"] == "true"
    assert replay.json() == first.json()
    assert updates_of(user) == 1


# --- Malformed keys ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    ["k" * 256, "has space", "tab\there", "bell\x07", "caf\u00e9", "", "del\x7f"],
    ids=["256-chars", "space", "tab", "control", "non-ascii", "empty", "del"],
)
def test_malformed_key_is_refused_and_nothing_happens(api: APIClient, me: Any, key: str) -> None:
    user, creds = me
    before = display_name(user)

    response = patch_me(api, creds, {"display_name": "A"}, key)

    assert_problem(response, 400, "idempotency_key_invalid")
    assert display_name(user) == before
    assert updates_of(user) == 0
    assert not IdempotencyRecord.objects.exists()


def test_longest_valid_key_is_accepted(api: APIClient, me: Any) -> None:
    user, creds = me
    key = "~" + "k" * 253 + "!"

    first = patch_me(api, creds, {"display_name": "A"}, key)
    replay = patch_me(api, creds, {"display_name": "A"}, key)

    assert first.status_code == 200
    assert replay["Idempotent-Replayed"] == "true"
    assert updates_of(user) == 1


# --- Failed requests store nothing ---------------------------------------------------------


def test_a_failed_request_does_not_use_up_the_key(api: APIClient, me: Any) -> None:
    user, creds = me
    before = display_name(user)

    refused = patch_me(api, creds, {"display_name": "x" * 101}, "k")

    body = assert_problem(refused, 400, "validation_error")
    assert set(body["errors"]) == {"display_name"}
    assert display_name(user) == before
    assert not IdempotencyRecord.objects.exists()

    # The corrected retry with the same key runs (it is not a "reuse").
    corrected = patch_me(api, creds, {"display_name": "A"}, "k")

    assert corrected.status_code == 200
    assert not corrected.has_header("Idempotent-Replayed")
    assert display_name(user) == "A"
    assert updates_of(user) == 1


def test_a_failed_request_is_not_replayed(api: APIClient, me: Any) -> None:
    user, creds = me
    body = {"display_name": "x" * 101}

    first = patch_me(api, creds, body, "k")
    again = patch_me(api, creds, body, "k")

    assert first.status_code == again.status_code == 400
    assert not again.has_header("Idempotent-Replayed")
    assert updates_of(user) == 0


def test_an_unauthenticated_request_does_not_reserve_the_key(api: APIClient, me: Any) -> None:
    _, creds = me

    refused = patch_me(api, {}, {"display_name": "A"}, "k")

    assert_problem(refused, 401, "not_authenticated")
    assert not IdempotencyRecord.objects.exists()
    assert patch_me(api, creds, {"display_name": "A"}, "k").status_code == 200


@pytest.mark.urls("tests.problem_urls")
def test_a_crashed_request_does_not_reserve_the_key() -> None:
    client = APIClient(raise_request_exception=False)

    response = client.post(
        "/api/test/boom/drf", {"x": 1}, format="json", HTTP_IDEMPOTENCY_KEY="boom-key"
    )

    assert_problem(response, 500, "internal_error")
    assert not IdempotencyRecord.objects.exists()
    again = client.post(
        "/api/test/boom/drf", {"x": 1}, format="json", HTTP_IDEMPOTENCY_KEY="boom-key"
    )
    assert_problem(again, 500, "internal_error")  # ran again, not 409 in progress


# --- Non-mutating methods -----------------------------------------------------------------


@pytest.mark.parametrize("key", ["k", "not valid: has spaces", "k" * 300])
def test_get_ignores_the_header(api: APIClient, me: Any, key: str) -> None:
    user, creds = me

    first = api.get(ME, HTTP_IDEMPOTENCY_KEY=key, **creds)
    User.objects.filter(pk=user.pk).update(display_name="fresh")
    second = api.get(ME, HTTP_IDEMPOTENCY_KEY=key, **creds)

    assert first.status_code == second.status_code == 200
    assert not second.has_header("Idempotent-Replayed")
    assert second.json()["display_name"] == "fresh"
    assert not IdempotencyRecord.objects.exists()


def test_a_key_used_by_get_is_free_for_a_mutating_call(api: APIClient, me: Any) -> None:
    user, creds = me
    api.get(ME, HTTP_IDEMPOTENCY_KEY="k", **creds)

    response = patch_me(api, creds, {"display_name": "A"}, "k")

    assert response.status_code == 200
    assert not response.has_header("Idempotent-Replayed")
    assert display_name(user) == "A"


# --- Expiry ---------------------------------------------------------------------------------


def test_an_expired_key_can_be_used_again(api: APIClient, me: Any) -> None:
    user, creds = me
    assert patch_me(api, creds, {"display_name": "A"}, "k").status_code == 200
    IdempotencyRecord.objects.update(expires_at=timezone.now() - dt.timedelta(seconds=1))

    response = patch_me(api, creds, {"display_name": "B"}, "k")

    assert response.status_code == 200
    assert not response.has_header("Idempotent-Replayed")
    assert response.json()["display_name"] == "B"
    assert display_name(user) == "B"
    assert updates_of(user) == 2
    # ...and the new use is what a retry now replays.
    replay = patch_me(api, creds, {"display_name": "B"}, "k")
    assert replay["Idempotent-Replayed"] == "true"
    assert updates_of(user) == 2


def test_a_stored_response_is_kept_for_the_configured_ttl(
    api: APIClient, me: Any, settings: Any
) -> None:
    _, creds = me
    before = timezone.now()

    patch_me(api, creds, {"display_name": "A"}, "k")

    record = IdempotencyRecord.objects.get()
    ttl = dt.timedelta(seconds=settings.IDEMPOTENCY_KEY_TTL_SECONDS)
    assert before + ttl <= record.expires_at <= timezone.now() + ttl


# --- A request that died mid-way ---------------------------------------------------------------


def _crash_after_reserving(minutes_ago: float) -> None:
    """Leave the stored record as a request that died after reserving the key would."""
    IdempotencyRecord.objects.update(
        status=IdempotencyRecord.Status.IN_PROGRESS,
        response_status=None,
        response_body=None,
        created_at=timezone.now() - dt.timedelta(minutes=minutes_ago),
    )


def test_a_recent_in_progress_key_is_a_conflict(api: APIClient, me: Any) -> None:
    user, creds = me
    assert patch_me(api, creds, {"display_name": "A"}, "k").status_code == 200
    _crash_after_reserving(minutes_ago=4.9)
    User.objects.filter(pk=user.pk).update(display_name="before retry")

    response = patch_me(api, creds, {"display_name": "A"}, "k")

    assert_problem(response, 409, "idempotency_key_in_progress")
    assert not response.has_header("Idempotent-Replayed")
    assert display_name(user) == "before retry"
    assert updates_of(user) == 1
    assert IdempotencyRecord.objects.get().status == IdempotencyRecord.Status.IN_PROGRESS


def test_an_in_progress_key_with_another_body_is_reuse(api: APIClient, me: Any) -> None:
    user, creds = me
    assert patch_me(api, creds, {"display_name": "A"}, "k").status_code == 200
    _crash_after_reserving(minutes_ago=1)

    response = patch_me(api, creds, {"display_name": "B"}, "k")

    assert_problem(response, 422, "idempotency_key_reused")
    assert display_name(user) == "A"


def test_an_abandoned_in_progress_key_is_taken_over(api: APIClient, me: Any) -> None:
    user, creds = me
    assert patch_me(api, creds, {"display_name": "A"}, "k").status_code == 200
    _crash_after_reserving(minutes_ago=5.1)
    User.objects.filter(pk=user.pk).update(display_name="before retry")

    response = patch_me(api, creds, {"display_name": "A"}, "k")

    assert response.status_code == 200
    assert not response.has_header("Idempotent-Replayed")
    assert display_name(user) == "A"
    assert updates_of(user) == 2
    record = IdempotencyRecord.objects.get()
    assert record.status == IdempotencyRecord.Status.COMPLETED
    assert record.response_body is not None
    assert json.loads(record.response_body) == response.json()
    replay = patch_me(api, creds, {"display_name": "A"}, "k")
    assert replay["Idempotent-Replayed"] == "true"


# --- Purging ----------------------------------------------------------------------------------


def test_purge_task_deletes_only_expired_keys(api: APIClient, me: Any) -> None:
    user, creds = me
    for key in ("old-1", "old-2", "fresh"):
        assert patch_me(api, creds, {"display_name": key}, key).status_code == 200
    now = timezone.now()
    IdempotencyRecord.objects.filter(key="old-1").update(expires_at=now - dt.timedelta(hours=1))
    IdempotencyRecord.objects.filter(key="old-2").update(expires_at=now - dt.timedelta(seconds=1))
    IdempotencyRecord.objects.filter(key="fresh").update(expires_at=now + dt.timedelta(minutes=1))

    deleted = purge_expired_idempotency_keys()

    assert deleted == 2
    assert list(IdempotencyRecord.objects.values_list("key", flat=True)) == ["fresh"]
    # The key kept still replays; a purged one runs again.
    assert patch_me(api, creds, {"display_name": "fresh"}, "fresh")["Idempotent-Replayed"] == "true"
    rerun = patch_me(api, creds, {"display_name": "old-1"}, "old-1")
    assert rerun.status_code == 200
    assert not rerun.has_header("Idempotent-Replayed")
    assert updates_of(user) == 4


def test_purge_task_with_nothing_expired_deletes_nothing(api: APIClient, me: Any) -> None:
    _, creds = me
    patch_me(api, creds, {"display_name": "A"}, "k")

    assert purge_expired_idempotency_keys() == 0
    assert IdempotencyRecord.objects.count() == 1


# --- Secrets at rest ------------------------------------------------------------------------


def test_issued_tokens_are_not_stored_in_clear(
    api: APIClient, caplog: Any, django_capture_on_commit_callbacks: Any
) -> None:
    phone = "13700000001"
    with (
        caplog.at_level(logging.WARNING, logger="backend.identity.sms"),
        django_capture_on_commit_callbacks(execute=True),
    ):
        sent = api.post("/api/mobile/v1/auth/otp", {"phone": phone}, format="json")
    assert sent.status_code == 202
    sms = [r for r in caplog.records if r.name == "backend.identity.sms"][-1]
    code = sms.args[2]["code"]

    response = api.post(
        "/api/mobile/v1/auth/token",
        {"phone": phone, "code": code},
        format="json",
        HTTP_IDEMPOTENCY_KEY=str(uuid.uuid4()),
    )

    assert response.status_code == 200
    stored = json.dumps(list(IdempotencyRecord.objects.values_list("response_body", flat=True)))
    assert response.json()["refresh"] not in stored
    assert response.json()["access"] not in stored


def test_staff_and_patients_alike_get_replays(api: APIClient) -> None:
    """The mechanism is the same for every role that may call the endpoint."""
    admin: User = UserFactory(role=Role.ADMINISTRATOR)
    creds = auth(admin)

    first = patch_me(api, creds, {"display_name": "Admin"}, "k")
    replay = patch_me(api, creds, {"display_name": "Admin"}, "k")

    assert first.status_code == 200
    assert replay["Idempotent-Replayed"] == "true"
    assert updates_of(admin) == 1


def test_a_replayed_console_login_leaves_the_client_signed_in() -> None:
    admin = UserFactory(role=Role.ADMINISTRATOR)
    body = {"username": admin.username, "password": PASSWORD}
    first = APIClient().post(LOGIN, body, format="json", HTTP_IDEMPOTENCY_KEY="login-1")
    assert first.status_code == 200  # ...but the answer and its cookie never arrive

    retrying = APIClient()
    retry = retrying.post(LOGIN, body, format="json", HTTP_IDEMPOTENCY_KEY="login-1")

    assert retry.status_code == 200
    assert retry.json()["second_factor_required"] is False
    assert retrying.get(ME).status_code == 200
