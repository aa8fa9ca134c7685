"""The outbox to the provincial platform: append in the business transaction, deliver
afterwards, exactly once at the platform and in order per aggregate.

- ``outbox_append`` validates the payload against its schema, seals it with the
  hospital's institution certificate (over its RFC 8785 bytes) and stores the record in
  the caller's transaction; a delivery task is queued after commit.
- ``record_deliver`` (the Celery task's body) takes a lease on the record, waits while an
  earlier record of the same aggregate is unacknowledged, sends it through the province's
  adapter outside any transaction, and applies the outcome: acknowledged (ack id, feed
  sequence, the next record of the aggregate queued), dead letter on a 4xx (with an
  alert), or a retry with exponential backoff and jitter on a 5xx or timeout.
- ``records_sweep`` (periodic) queues due retries and records whose lease ran out (a
  worker killed mid-delivery); the platform deduplicates by ``record_id``, so a record
  sent twice is acknowledged once ("duplicate").
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
import random
from dataclasses import dataclass
from typing import Any

import rfc8785
from django.conf import settings
from django.db import connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from backend.api.problems import DomainError
from backend.audit.services import RequestMeta, audit_record
from backend.identity.models import User
from backend.organisations.models import Hospital
from backend.pki.services import seal_sign
from backend.realtime import group_send
from regulators.adapters import ADAPTERS, Endpoint, Outcome, WireRecord
from regulators.models import (
    Alert,
    AlertKind,
    FeedCounter,
    OutboxRecord,
    PlatformConnection,
    RecordStatus,
)
from regulators.schemas import payload_errors

logger = logging.getLogger(__name__)

INSTITUTION_FILING = "filing.institution"


def _time(value: dt.datetime) -> str:
    return timezone.localtime(value).isoformat()


def hospital_code(hospital: Hospital) -> str:
    """The platform-issued id from onboarding; the USCC until one is issued."""
    return hospital.platform_id or hospital.unified_social_credit_code


def regulator_group(province_code: str) -> str:
    return f"regulator.province.{province_code}"


# --- Append ---------------------------------------------------------------------------------


def outbox_append(
    *,
    hospital: Hospital,
    record_type: str,
    aggregate_type: str,
    aggregate_id: Any,
    occurred_at: dt.datetime,
    payload: dict[str, Any],
) -> OutboxRecord:
    """Store one record in the caller's transaction; delivery starts after commit."""
    errors = payload_errors(record_type, payload)
    if errors:
        raise DomainError(
            "invalid_record",
            f"The {record_type} record does not match its schema: " + "; ".join(errors[:5]),
        )
    if (
        record_type != INSTITUTION_FILING
        and not OutboxRecord.objects.filter(
            hospital=hospital, record_type=INSTITUTION_FILING
        ).exists()
    ):
        # The platform verifies every record against the seal certificate it learns from
        # the institution's filing: a hospital's first record brings that filing first.
        from regulators.filings import filing_institution

        filing_institution(hospital=hospital)
    seal = seal_sign(hospital=hospital, data=rfc8785.dumps(payload))
    now = timezone.now()
    record = OutboxRecord.objects.create(
        record_type=record_type,
        hospital=hospital,
        province_id=hospital.province_id,
        aggregate_type=aggregate_type,
        aggregate_id=str(aggregate_id),
        occurred_at=occurred_at,
        created_at=now,
        next_attempt_at=now,
        payload=payload,
        payload_signature={
            "alg": seal.algorithm,
            "cert_sha256": seal.certificate.fingerprint_sha256,
            "value": base64.b64encode(seal.value).decode(),
        },
    )
    pk = record.pk
    transaction.on_commit(lambda: enqueue(pk))
    return record


def enqueue(record_pk: int) -> None:
    """Queue a delivery; if the broker is down the sweep will pick the record up."""
    from regulators.tasks import deliver_record

    try:
        deliver_record.delay(record_pk)
    except Exception:  # a missed doorbell is caught by the sweep, never lost
        logger.warning("could not queue delivery of outbox record %s", record_pk, exc_info=True)


# --- Alerts ---------------------------------------------------------------------------------


def alert_raise(
    *,
    hospital: Hospital,
    kind: str,
    rule: str,
    subject_type: str = "",
    subject_id: Any = "",
    details: dict[str, Any] | None = None,
    report: bool = True,
) -> Alert:
    """A row the hospital's administrators see and, unless ``report`` is false, an
    outbox record for the regulator (an alert about a dead alert is not re-sent)."""
    now = timezone.now()
    alert = Alert.objects.create(
        kind=kind,
        hospital=hospital,
        province_id=hospital.province_id,
        rule=rule,
        subject_type=subject_type,
        subject_id=str(subject_id),
        details=details or {},
        created_at=now,
    )
    if report:
        outbox_append(
            hospital=hospital,
            record_type="alert",
            aggregate_type="alert",
            aggregate_id=alert.pk,
            occurred_at=now,
            payload={
                "alert_id": str(alert.pk),
                "kind": kind,
                "rule": rule,
                "raised_at": _time(now),
                "subject_type": subject_type,
                "subject_id": str(subject_id),
                "details": details or {},
            },
        )
    return alert


# --- Delivery -------------------------------------------------------------------------------


def backoff_seconds(attempts: int) -> float:
    """Exponential backoff with jitter: 2, 4, 8 … seconds up to the cap, each scaled by a
    random factor in [0.5, 1] so that a recovering platform is not hit in lockstep."""
    base = settings.REGULATOR_RETRY_BASE_SECONDS
    cap = settings.REGULATOR_RETRY_MAX_SECONDS
    delay = min(cap, base * 2 ** max(attempts - 1, 0))
    return float(delay * random.uniform(0.5, 1.0))  # noqa: S311 - jitter, not a secret


def _endpoint(connection: PlatformConnection) -> Endpoint:
    return Endpoint(
        base_url=connection.base_url,
        app_id=connection.app_id,
        app_secret=connection.app_secret,
        sm4_key=connection.sm4_key,
        timeout=connection.timeout_seconds,
    )


def _wire(record: OutboxRecord) -> WireRecord:
    return WireRecord(
        record_id=str(record.record_id),
        record_type=record.record_type,
        occurred_at=_time(record.occurred_at),
        hospital_code=hospital_code(record.hospital),
        payload=record.payload,
        payload_signature=record.payload_signature,
    )


def _lease(record_pk: int, now: dt.datetime) -> bool:
    lease = dt.timedelta(seconds=settings.REGULATOR_DELIVERY_LEASE_SECONDS)
    return bool(
        OutboxRecord.objects.filter(
            pk=record_pk, status=RecordStatus.PENDING, next_attempt_at__lte=now
        )
        .filter(Q(locked_until__isnull=True) | Q(locked_until__lt=now))
        .update(locked_until=now + lease, attempts=F("attempts") + 1)
    )


def _blocked(record: OutboxRecord) -> bool:
    """An earlier record of the same aggregate, or the hospital's institution filing
    (which carries the certificate the platform verifies with), is not acknowledged."""
    earlier = Q(aggregate_type=record.aggregate_type, aggregate_id=record.aggregate_id)
    if record.record_type != INSTITUTION_FILING:
        earlier |= Q(hospital_id=record.hospital_id, record_type=INSTITUTION_FILING)
    return (
        OutboxRecord.objects.filter(earlier, id__lt=record.pk)
        .exclude(status=RecordStatus.ACKNOWLEDGED)
        .exists()
    )


@dataclass(frozen=True)
class DeliveryResult:
    outcome: str  # skipped, waiting, acknowledged, dead, retry
    record_pk: int


def record_deliver(*, record_pk: int) -> DeliveryResult:
    now = timezone.now()
    if not _lease(record_pk, now):
        return DeliveryResult("skipped", record_pk)
    record = OutboxRecord.objects.select_related("hospital", "province").get(pk=record_pk)
    if _blocked(record):
        # Not an attempt: give the lease back; the earlier record's ack queues this one.
        OutboxRecord.objects.filter(pk=record_pk).update(
            locked_until=None, attempts=F("attempts") - 1, next_attempt_at=now
        )
        return DeliveryResult("waiting", record_pk)
    connection = PlatformConnection.objects.filter(
        province_id=record.province_id, enabled=True
    ).first()
    if connection is None:
        outcome = Outcome("retry", None, message="no enabled platform connection")
    else:
        outcome = ADAPTERS[connection.adapter].send(
            endpoint=_endpoint(connection), record=_wire(record)
        )
    return _apply(record, outcome)


def _next_feed_seq(province_id: Any) -> int:
    """Take the province's next feed number: one statement that also row-locks the
    counter until the caller's transaction ends (so numbers stay gap-free)."""
    table = connection.ops.quote_name(FeedCounter._meta.db_table)
    sql = f"UPDATE {table} SET last_seq = last_seq + 1 WHERE province_id = %s RETURNING last_seq"  # noqa: S608 - the table name is ours
    with connection.cursor() as cursor:
        cursor.execute(sql, [province_id])
        row = cursor.fetchone()
        if row is None:
            FeedCounter.objects.get_or_create(province_id=province_id)
            cursor.execute(sql, [province_id])
            row = cursor.fetchone()
    return int(row[0])


def _apply(record: OutboxRecord, outcome: Outcome) -> DeliveryResult:
    now = timezone.now()
    if outcome.kind == "ack":
        # Two statements: the feed number, then the record, only if still pending; a
        # record another worker finished meanwhile rolls the number back.
        with transaction.atomic():
            seq = _next_feed_seq(record.province_id)
            acknowledged = OutboxRecord.objects.filter(
                pk=record.pk, status=RecordStatus.PENDING
            ).update(
                status=RecordStatus.ACKNOWLEDGED,
                ack_id=outcome.ack_id,
                acknowledged_at=now,
                feed_seq=seq,
                locked_until=None,
                last_status_code=outcome.status_code,
            )
            if not acknowledged:
                transaction.set_rollback(True)
                return DeliveryResult("skipped", record.pk)  # another worker finished it
            record.status = RecordStatus.ACKNOWLEDGED
            record.ack_id = outcome.ack_id
            record.acknowledged_at = now
            record.feed_seq = seq
            record.locked_until = None
            record.last_status_code = outcome.status_code
            _after_ack(record)
        return DeliveryResult("acknowledged", record.pk)
    with transaction.atomic():
        current = OutboxRecord.objects.select_for_update().get(pk=record.pk)
        if current.status != RecordStatus.PENDING:
            return DeliveryResult("skipped", record.pk)  # another worker finished it
        if outcome.kind == "refused":
            current.status = RecordStatus.DEAD
            current.dead_code = outcome.code
            current.dead_message = outcome.message
            current.locked_until = None
            current.last_status_code = outcome.status_code
            current.last_error = f"{outcome.code}: {outcome.message}"[:500]
            current.save()
            alert_raise(
                hospital=record.hospital,
                kind=AlertKind.DEAD_LETTER,
                rule=f"上报被监管平台拒收 (record refused: {outcome.code})",
                subject_type="outbox_record",
                subject_id=current.record_id,
                details={
                    "record_type": current.record_type,
                    "code": outcome.code,
                    "message": outcome.message,
                },
                report=current.record_type != "alert",
            )
            return DeliveryResult("dead", record.pk)
        current.next_attempt_at = now + dt.timedelta(seconds=backoff_seconds(current.attempts))
        current.locked_until = None
        current.last_status_code = outcome.status_code
        current.last_error = (outcome.message or outcome.code or "retry")[:500]
        current.save()
        return DeliveryResult("retry", record.pk)


def feed_item(record: OutboxRecord) -> dict[str, Any]:
    return {
        "seq": record.feed_seq,
        "record_id": str(record.record_id),
        "record_type": record.record_type,
        "hospital": str(record.hospital_id),
        "hospital_code": hospital_code(record.hospital),
        "occurred_at": _time(record.occurred_at),
        "acknowledged_at": _time(record.acknowledged_at) if record.acknowledged_at else None,
        "delivery_latency_seconds": record.delivery_latency_seconds,
        "payload": record.payload,
    }


def _after_ack(record: OutboxRecord) -> None:
    aggregate = (record.aggregate_type, record.aggregate_id)
    institution_filing = record.record_type == INSTITUTION_FILING
    hospital_id = record.hospital_id
    frame = {"type": "record", "record": feed_item(record)}
    group = regulator_group(record.province.code)

    def after() -> None:
        following = (
            OutboxRecord.objects.filter(
                aggregate_type=aggregate[0],
                aggregate_id=aggregate[1],
                status=RecordStatus.PENDING,
            )
            .order_by("id")
            .values_list("pk", flat=True)
            .first()
        )
        if following is not None:
            enqueue(following)
        if institution_filing:  # everything of the hospital was waiting for it
            records_sweep(hospital_id=hospital_id)
        try:
            group_send(group, {"type": "feed.push", "frame": frame})
        except Exception:  # the feed resumes from the database; a lost doorbell is fine
            logger.warning("feed push failed", exc_info=True)

    transaction.on_commit(after)


# --- Periodic work --------------------------------------------------------------------------


def records_sweep(
    *, now: dt.datetime | None = None, limit: int = 2000, hospital_id: Any = None
) -> int:
    """Queue every due record whose lease is free: retries whose time came, records a
    crashed worker left behind, and any whose doorbell was lost. Heads of aggregates
    first (lowest id), which is the order they must go in."""
    now = now or timezone.now()
    due_records = OutboxRecord.objects.filter(
        status=RecordStatus.PENDING, next_attempt_at__lte=now
    ).filter(Q(locked_until__isnull=True) | Q(locked_until__lt=now))
    if hospital_id is not None:
        due_records = due_records.filter(hospital_id=hospital_id)
    due = list(due_records.order_by("id").values_list("pk", flat=True)[:limit])
    for pk in due:
        enqueue(pk)
    return len(due)


def upload_delays_check(*, now: dt.datetime | None = None) -> int:
    """Alert (once per record) on records still unacknowledged past the configured limit
    (DOMAIN rule 15): one alert per hospital per check, naming how many and the oldest."""
    now = now or timezone.now()
    limit = dt.timedelta(seconds=settings.REGULATOR_UPLOAD_DELAY_ALERT_SECONDS)
    late = OutboxRecord.objects.filter(
        status=RecordStatus.PENDING, created_at__lte=now - limit, delay_alerted=False
    ).exclude(record_type="alert")
    raised = 0
    for hospital_id in set(late.values_list("hospital_id", flat=True)):
        with transaction.atomic():
            rows = list(
                late.filter(hospital_id=hospital_id)
                .select_for_update(skip_locked=True)
                .order_by("created_at")
                .values_list("pk", "record_id", "created_at")
            )
            if not rows:
                continue
            OutboxRecord.objects.filter(pk__in=[r[0] for r in rows]).update(delay_alerted=True)
            hospital = Hospital.objects.get(pk=hospital_id)
            alert_raise(
                hospital=hospital,
                kind=AlertKind.UPLOAD_DELAY,
                rule=(
                    f"数据未在规定时间内上传 (upload delayed over {int(limit.total_seconds())} s)"
                ),
                subject_type="outbox_record",
                subject_id=rows[0][1],
                details={
                    "records": len(rows),
                    "oldest_created_at": _time(rows[0][2]),
                    "limit_seconds": int(limit.total_seconds()),
                },
            )
            raised += 1
    return raised


def record_replay(
    *, record: OutboxRecord, actor: User | None = None, meta: RequestMeta | None = None
) -> OutboxRecord:
    """Send a dead letter again once its cause is fixed (command and admin action)."""
    with transaction.atomic():
        current = OutboxRecord.objects.select_for_update().get(pk=record.pk)
        if current.status != RecordStatus.DEAD:
            raise DomainError("not_dead_lettered")
        previous = f"{current.dead_code}: {current.dead_message}"
        current.status = RecordStatus.PENDING
        current.attempts = 0
        current.next_attempt_at = timezone.now()
        current.locked_until = None
        current.dead_code = ""
        current.dead_message = ""
        current.save()
        audit_record(
            action="regulators.record_replayed",
            actor=actor,
            object_type="outbox_record",
            object_id=current.record_id,
            before={"status": RecordStatus.DEAD, "refusal": previous},
            after={"status": RecordStatus.PENDING},
            meta=meta,
        )
        pk = current.pk
        transaction.on_commit(lambda: enqueue(pk))
    return current
