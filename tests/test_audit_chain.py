"""The audit trail is append-only and hash-chained; tampering is found and located."""

from __future__ import annotations

import json
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import DatabaseError, connection, transaction

from backend.audit.models import AuditEvent
from backend.audit.services import (
    AuditEntry,
    RequestMeta,
    audit_chain_verify,
    audit_record,
    audit_records,
    audit_together,
)
from tests.conftest import uses_postgres

pytestmark = pytest.mark.django_db


def _write_events(actor, count=5):
    return [
        audit_record(
            action="consultation.accepted",
            actor=actor,
            object_type="consultation",
            object_id=f"c-{i}",
            before={"status": "waiting"},
            after={"status": "in_progress"},
            meta=RequestMeta(ip="10.1.2.3", user_agent="pytest"),
        )
        for i in range(count)
    ]


def _disable_guard():
    """What an attacker with database access does first: remove the append-only guard."""
    with connection.cursor() as cursor:
        if uses_postgres():
            cursor.execute("ALTER TABLE audit_auditevent DISABLE TRIGGER USER")
        else:
            cursor.execute("DROP TRIGGER audit_event_no_update")


def test_events_record_who_what_where_and_chain_to_each_other(doctor):
    events = _write_events(doctor, 3)
    first, second, third = (AuditEvent.objects.get(seq=e.seq) for e in events)
    assert first.actor_id == str(doctor.pk)
    assert first.actor_role == "doctor"
    assert first.ip == "10.1.2.3"
    assert first.user_agent == "pytest"
    assert first.before == {"status": "waiting"}
    assert first.after == {"status": "in_progress"}
    assert second.prev_hash == first.hash
    assert third.prev_hash == second.hash
    assert [second.seq - first.seq, third.seq - second.seq] == [1, 1]
    report = audit_chain_verify()
    assert report.ok
    assert report.last_seq == third.seq


def test_verify_command_reports_an_intact_chain(doctor):
    _write_events(doctor, 3)
    out = StringIO()
    call_command("verify_audit_chain", "--json", stdout=out)
    result = json.loads(out.getvalue())
    assert result["ok"] is True
    assert result["first_break"] is None
    assert result["checked"] == result["last_seq"] >= 3


def test_the_database_refuses_to_update_an_event(doctor):
    event = _write_events(doctor, 1)[0]
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        AuditEvent.objects.filter(seq=event.seq).update(action="nothing.happened")
    assert AuditEvent.objects.get(seq=event.seq).action == "consultation.accepted"


def test_the_database_refuses_to_delete_an_event_on_postgresql(doctor):
    if not uses_postgres():
        pytest.skip(
            "row deletes are refused by the PostgreSQL trigger only (SQLite flushes need DELETE)"
        )
    event = _write_events(doctor, 1)[0]
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        AuditEvent.objects.filter(seq=event.seq).delete()
    assert AuditEvent.objects.filter(seq=event.seq).exists()


def test_an_altered_row_is_found_and_named(doctor):
    events = _write_events(doctor, 5)
    target = events[2]
    _disable_guard()
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE audit_auditevent SET after = %s WHERE seq = %s",
            [json.dumps({"status": "ended"}), target.seq],
        )
    report = audit_chain_verify()
    assert not report.ok
    assert report.first_break is not None
    assert report.first_break.seq == target.seq
    assert "altered" in report.first_break.reason
    with pytest.raises(CommandError, match=f"broken at row {target.seq}"):
        call_command("verify_audit_chain", stdout=StringIO())


def test_a_rehashed_forgery_breaks_the_next_link(doctor):
    """Recomputing the altered row's own hash does not help: the next row points at the old one."""
    from backend.audit.services import event_hash

    events = _write_events(doctor, 4)
    target = AuditEvent.objects.get(seq=events[1].seq)
    target.actor_repr = "someone else"
    forged_hash = event_hash(target)
    _disable_guard()
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE audit_auditevent SET actor_repr = %s, hash = %s WHERE seq = %s",
            ["someone else", forged_hash, target.seq],
        )
    report = audit_chain_verify()
    assert report.first_break is not None
    assert report.first_break.seq == events[2].seq
    assert "prev_hash" in report.first_break.reason


def test_a_deleted_row_is_found(doctor):
    events = _write_events(doctor, 4)
    _disable_guard()
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM audit_auditevent WHERE seq = %s", [events[1].seq])
    report = audit_chain_verify()
    assert report.first_break is not None
    assert report.first_break.seq == events[1].seq
    assert "missing" in report.first_break.reason


def test_rows_removed_from_the_end_are_found_through_the_chain_head(doctor):
    events = _write_events(doctor, 4)
    _disable_guard()
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM audit_auditevent WHERE seq >= %s", [events[2].seq])
    report = audit_chain_verify()
    assert report.first_break is not None
    assert report.first_break.seq == events[2].seq
    assert "removed from the end" in report.first_break.reason


def test_events_recorded_together_are_appended_at_the_end_in_order(doctor):
    before = AuditEvent.objects.count()
    with transaction.atomic():
        with audit_together():
            first = audit_record(action="prescription.approve", actor=doctor, object_id="p-1")
            with audit_together():  # a service inside another: appended with the outer
                audit_record(action="order.create", object_type="order", object_id="o-1")
            audit_records(
                [AuditEntry(action="prescription.note", actor=doctor, object_id="p-1")],
                meta=RequestMeta(ip="10.9.8.7", user_agent="console"),
            )
            assert first is None
            assert AuditEvent.objects.count() == before  # nothing written yet
        assert AuditEvent.objects.count() == before + 3
    events = list(AuditEvent.objects.order_by("seq"))[-3:]
    assert [e.action for e in events] == [
        "prescription.approve",
        "order.create",
        "prescription.note",
    ]
    assert [e.actor_role for e in events] == ["doctor", "system", "doctor"]
    assert events[2].ip == "10.9.8.7"
    assert events[0].ip is None
    assert [events[1].seq - events[0].seq, events[2].seq - events[1].seq] == [1, 1]
    assert events[1].prev_hash == events[0].hash
    assert events[2].prev_hash == events[1].hash
    assert audit_chain_verify().ok


def test_a_block_that_raises_appends_nothing(doctor):
    _write_events(doctor, 1)
    before = AuditEvent.objects.count()

    def failing_change() -> None:
        with transaction.atomic(), audit_together():
            audit_record(action="prescription.approve", actor=doctor, object_id="p-2")
            raise RuntimeError("the change failed")

    with pytest.raises(RuntimeError):
        failing_change()
    assert AuditEvent.objects.count() == before
    _write_events(doctor, 1)  # the chain goes on without a gap
    assert audit_chain_verify().ok
