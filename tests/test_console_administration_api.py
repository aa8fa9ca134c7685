"""The hospital administrator's oversight API (console/administration.py): practitioners
with their filing and signing-certificate status, the regulator outbox of their hospital
(pending and dead letters) with the replay of a dead letter, and the audit chain check;
each scoped to the administrator's hospital and refused to everyone else. Also the shells
of the oversight pages (console/pages_oversight.py) and what they hand their scripts."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone
from rest_framework.test import APIClient

from backend.audit.models import AuditEvent
from backend.audit.services import audit_record
from backend.identity.models import Role, User
from backend.organisations.models import (
    FilingStatus,
    Hospital,
    HospitalAdministrator,
    RegulatorOfficial,
)
from backend.pki.services import certificate_issue, certificate_revoke
from regulators.models import OutboxRecord, RecordStatus
from tests.conftest import uses_postgres
from tests.consult_helpers import client_for
from tests.factories import (
    PASSWORD,
    HospitalFactory,
    PractitionerFactory,
    ProvinceFactory,
    UserFactory,
)

pytestmark = pytest.mark.django_db

CONSOLE = "/api/console/v1"


def _administrator(hospital: Hospital) -> tuple[User, APIClient]:
    user = UserFactory(role=Role.ADMINISTRATOR)
    HospitalAdministrator.objects.create(user=user, hospital=hospital)
    return user, client_for(user)


def _record(hospital: Hospital, status: str, record_type: str = "review", **fields: Any) -> Any:
    now = timezone.now()
    return OutboxRecord.objects.create(
        record_type=record_type,
        hospital=hospital,
        province_id=hospital.province_id,
        aggregate_type="prescription",
        aggregate_id="p-1",
        occurred_at=now,
        created_at=now,
        next_attempt_at=now + dt.timedelta(hours=1),
        payload={},
        payload_signature={},
        status=status,
        **fields,
    )


def test_practitioners_show_filing_and_certificate_status_of_our_hospital_only() -> None:
    hospital = HospitalFactory()
    _, admin = _administrator(hospital)
    filed = PractitionerFactory(hospital=hospital, filing_status=FilingStatus.FILED)
    pending = PractitionerFactory(hospital=hospital, filing_status=FilingStatus.PENDING)
    revoked = PractitionerFactory(hospital=hospital, filing_status=FilingStatus.FILED)
    certificate_issue(practitioner=filed)
    certificate_revoke(certificate=certificate_issue(practitioner=revoked), reason="key lost")
    PractitionerFactory(hospital=HospitalFactory())  # another hospital's

    response = admin.get(f"{CONSOLE}/administration/practitioners")
    assert response.status_code == 200, response.content
    rows = {r["id"]: r for r in response.json()["results"]}
    assert set(rows) == {str(filed.pk), str(pending.pk), str(revoked.pk)}
    assert rows[str(filed.pk)]["filing_status"] == "filed"
    assert rows[str(filed.pk)]["certificate"]["status"] == "valid"
    assert rows[str(filed.pk)]["certificate"]["serial_number"]
    assert rows[str(pending.pk)]["filing_status"] == "pending"
    assert rows[str(pending.pk)]["certificate"] == {
        "status": "none",
        "serial_number": None,
        "not_after": None,
        "revoked_at": None,
    }
    assert rows[str(revoked.pk)]["certificate"]["status"] == "revoked"
    assert rows[str(filed.pk)]["practice_certificate_number"] == filed.practice_certificate_number

    only_pending = admin.get(f"{CONSOLE}/administration/practitioners?filing_status=pending")
    assert [r["id"] for r in only_pending.json()["results"]] == [str(pending.pk)]


def test_the_outbox_lists_pending_and_dead_letters_of_our_hospital_only() -> None:
    hospital = HospitalFactory()
    _, admin = _administrator(hospital)
    pending = _record(hospital, RecordStatus.PENDING, last_error="timeout", attempts=2)
    dead = _record(
        hospital, RecordStatus.DEAD, dead_code="E4001", dead_message="药品编码未备案", attempts=1
    )
    _record(hospital, RecordStatus.ACKNOWLEDGED)
    _record(HospitalFactory(), RecordStatus.DEAD, dead_code="E1")

    everything = admin.get(f"{CONSOLE}/administration/outbox").json()["results"]
    assert [r["record_id"] for r in everything] == [str(pending.record_id), str(dead.record_id)]
    dead_only = admin.get(f"{CONSOLE}/administration/outbox?status=dead").json()["results"]
    assert len(dead_only) == 1
    assert dead_only[0]["dead_code"] == "E4001"
    assert dead_only[0]["dead_message"] == "药品编码未备案"
    assert dead_only[0]["status"] == "dead"
    pending_only = admin.get(f"{CONSOLE}/administration/outbox?status=pending").json()
    assert [r["last_error"] for r in pending_only["results"]] == ["timeout"]
    bad = admin.get(f"{CONSOLE}/administration/outbox?status=acknowledged")
    assert bad.status_code == 400
    assert bad.json()["code"] == "validation_error"


def test_replaying_a_dead_letter_queues_it_again_and_is_audited(
    django_capture_on_commit_callbacks: Any,
) -> None:
    hospital = HospitalFactory()
    user, admin = _administrator(hospital)
    dead = _record(hospital, RecordStatus.DEAD, dead_code="E4001", dead_message="未备案")
    pending = _record(hospital, RecordStatus.PENDING)
    theirs = _record(HospitalFactory(), RecordStatus.DEAD, dead_code="E1")

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = admin.post(f"{CONSOLE}/administration/outbox/{dead.record_id}/replay")
    assert response.status_code == 200, response.content
    assert response.json()["status"] == "pending"
    assert len(callbacks) == 1  # the delivery is queued after commit
    dead.refresh_from_db()
    assert dead.status == RecordStatus.PENDING
    assert dead.attempts == 0
    assert dead.dead_code == ""
    event = AuditEvent.objects.filter(action="regulators.record_replayed").get()
    assert event.actor_id == str(user.pk)
    assert event.object_id == str(dead.record_id)
    assert event.before == {"status": "dead", "refusal": "E4001: 未备案"}

    again = admin.post(f"{CONSOLE}/administration/outbox/{pending.record_id}/replay")
    assert again.status_code == 409, again.content
    assert again.json()["code"] == "not_dead_lettered"
    other = admin.post(f"{CONSOLE}/administration/outbox/{theirs.record_id}/replay")
    assert other.status_code == 404
    theirs.refresh_from_db()
    assert theirs.status == RecordStatus.DEAD


def test_the_audit_chain_check_reports_intact_then_the_first_altered_row() -> None:
    hospital = HospitalFactory()
    user, admin = _administrator(hospital)
    for n in range(3):
        audit_record(action="test.event", object_type="thing", object_id=n)

    intact = admin.post(f"{CONSOLE}/administration/audit-chain/verify")
    assert intact.status_code == 200, intact.content
    body = intact.json()
    assert body["ok"] is True
    assert body["first_break"] is None
    assert body["checked"] == body["last_seq"] >= 3
    checked = AuditEvent.objects.filter(action="audit.chain_checked").get()
    assert checked.actor_id == str(user.pk)
    assert checked.after is not None
    assert checked.after["ok"] is True

    first = AuditEvent.objects.filter(action="test.event").order_by("seq").first()
    assert first is not None
    with connection.cursor() as cursor:  # an attacker removes the append-only guard first
        if uses_postgres():
            cursor.execute("ALTER TABLE audit_auditevent DISABLE TRIGGER USER")
        else:
            cursor.execute("DROP TRIGGER audit_event_no_update")
    AuditEvent.objects.filter(seq=first.seq).update(object_id="tampered")
    broken = admin.post(f"{CONSOLE}/administration/audit-chain/verify").json()
    assert broken["ok"] is False
    assert broken["first_break"]["seq"] == first.seq
    assert "altered" in broken["first_break"]["reason"]


@pytest.mark.parametrize(
    ("path", "method"),
    [
        ("administration/practitioners", "get"),
        ("administration/outbox", "get"),
        ("administration/audit-chain/verify", "post"),
    ],
)
def test_only_hospital_administrators_may(path: str, method: str) -> None:
    doctor = PractitionerFactory().user
    regulator = UserFactory(role=Role.REGULATOR)
    loose_admin = UserFactory(role=Role.ADMINISTRATOR)  # no hospital
    for user in (doctor, regulator, loose_admin):
        response = getattr(client_for(user), method)(f"{CONSOLE}/{path}")
        assert response.status_code == 403, (user.role, response.content)
    assert getattr(APIClient(), method)(f"{CONSOLE}/{path}").status_code == 401


# --- the pages' shells ------------------------------------------------------------------------


@pytest.fixture
def _plain_static_files(settings: Any) -> None:
    """The pages name their scripts through ``{% static %}``; without collectstatic the
    plain storage (no manifest) answers."""
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }


def _page_session(user: User) -> APIClient:
    client = APIClient()
    response = client.post(
        f"{CONSOLE}/auth/login", {"username": user.username, "password": PASSWORD}, format="json"
    )
    assert response.status_code == 200, response.content
    return client


@pytest.mark.usefixtures("_plain_static_files")
def test_the_regulator_page_offers_the_hospitals_of_the_officials_province_only() -> None:
    ours = HospitalFactory(name="杭州市互联网医院")
    other_province = ProvinceFactory(code="320000", name="江苏省")
    HospitalFactory(province=other_province, name="南京市互联网医院")
    official = UserFactory(role=Role.REGULATOR)
    RegulatorOfficial.objects.create(user=official, province=ours.province)

    page = _page_session(official).get("/console/regulator/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "<title>监管人员工作台 · " in html
    assert "杭州市互联网医院" in html
    assert "南京市互联网医院" not in html
    assert '"regulator_api": "/api/regulator/v1"' in html
    assert "console/regulator.js" in html


@pytest.mark.usefixtures("_plain_static_files")
def test_the_administrator_page_names_the_hospital_and_others_go_home() -> None:
    hospital = HospitalFactory(name="宁波市互联网医院")
    user, _ = _administrator(hospital)
    page = _page_session(user).get("/console/administrator/?lang=en")
    html = page.content.decode()
    assert "<title>Hospital administrator console · " in html
    assert "宁波市互联网医院" in html
    assert "console/administrator.js" in html
    regulator = _page_session(UserFactory(role=Role.REGULATOR))
    assert regulator.get("/console/administrator/")["Location"] == "/console/regulator/"
