"""The outbox to the provincial platform: append in the business transaction, deliver
afterwards, exactly once at the platform and in order per aggregate.

- ``outbox_append`` validates the payload against its schema, seals it with the
  hospital's institution certificate (over its RFC 8785 bytes) and stores the record in
  the caller's transaction; a delivery task is queued after commit.
- ``records_drain`` (the Celery task's body) leases batches of records first in line
  (every earlier record of the same aggregate acknowledged), sends each through the
  province's adapter outside any transaction, and applies the outcomes per batch:
  acknowledged (ack id, feed sequence), dead letter on a 4xx (with an alert), or a retry
  with exponential backoff and jitter on a 5xx or timeout; a per-province breaker stops
  it hammering a platform that is down (see the Delivery section).
- ``records_sweep`` (periodic) rings for due retries and records whose lease ran out (a
  worker killed mid-delivery); the platform deduplicates by ``record_id``, so a record
  sent twice is acknowledged once ("duplicate").
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
import math
import os
import random
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Exists, F, OuterRef, Q, QuerySet
from django.utils import timezone

from backend import canonical_json
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

if TYPE_CHECKING:
    from django.db.models import Field

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


#: Hospitals whose institution filing this process has seen committed to the outbox.
#: Records are never deleted, so the question is asked once per hospital and process.
_filed: set[Any] = set()


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
    if record_type != INSTITUTION_FILING and hospital.pk not in _filed:
        if not OutboxRecord.objects.filter(
            hospital=hospital, record_type=INSTITUTION_FILING
        ).exists():
            # The platform verifies every record against the seal certificate it learns
            # from the institution's filing: a hospital's first record brings it first.
            from regulators.filings import filing_institution

            filing_institution(hospital=hospital)
        hospital_pk = hospital.pk
        transaction.on_commit(lambda: _filed.add(hospital_pk))
    seal = seal_sign(hospital=hospital, data=canonical_json.dumps(payload))
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
    transaction.on_commit(doorbell.ring)
    return record


class Doorbell:
    """Queues outbox drains for this process from a thread of its own.

    A request that appends a record rings after its commit and goes on: the Celery
    message is sent here, not on the request's time. Rings that come while one is being
    sent, or within ``interval`` seconds of the last one sent, become one message, since
    a drain delivers every record due when it runs; so a busy process queues at most one
    drain per ``interval`` instead of one per record. A ring is never lost while the
    process lives: the flag is cleared before the message is sent, so a record committed
    after that rings again. One that dies between a commit and its ring leaves the record
    to the periodic sweep (``REGULATOR_SWEEP_SECONDS``), as a broker outage does.
    """

    def __init__(self, send: Any, *, interval: float) -> None:
        self._send = send
        self._interval = interval
        self._wanted = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._last = -math.inf

    def ring(self) -> None:
        thread = self._thread
        if thread is None or not thread.is_alive() or self._pid != os.getpid():
            with self._lock:
                thread = self._thread
                if thread is None or not thread.is_alive() or self._pid != os.getpid():
                    self._wanted = threading.Event()  # a forked child starts afresh
                    self._thread = threading.Thread(
                        target=self._run, name="outbox-doorbell", daemon=True
                    )
                    self._pid = os.getpid()
                    self._thread.start()
        self._wanted.set()

    def _run(self) -> None:
        wanted = self._wanted
        while True:
            wanted.wait()
            pause = self._last + self._interval - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            wanted.clear()
            self._last = time.monotonic()
            try:
                self._send()
            except Exception:  # the thread outlives a failed send; the sweep makes it up
                logger.exception("outbox doorbell could not ring")


def enqueue_drain(countdown: float | None = None) -> None:
    """Ring a worker to drain the outbox; if the broker is down the sweep rings later."""
    from regulators.tasks import drain_outbox

    try:
        if countdown is None:
            drain_outbox.delay()
        else:
            drain_outbox.apply_async(countdown=countdown)
    except Exception:  # a missed doorbell is caught by the sweep, never lost
        logger.warning("could not queue an outbox drain", exc_info=True)


def _queue_drain() -> None:
    """The doorbell's send: always a message to the broker. Even where tasks run in place
    (``task_always_eager``), a drain is not run on the doorbell's thread: Celery's
    "inside a task" flag is process-wide, and an eager task on a second thread leaves it
    set for the first."""
    from regulators.tasks import drain_outbox

    drain_outbox.app.send_task(drain_outbox.name)


#: This process's doorbell (see ``Doorbell``).
doorbell = Doorbell(_queue_drain, interval=settings.REGULATOR_DOORBELL_SECONDS)


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
#
# A worker drains the outbox in batches: one statement leases up to
# ``REGULATOR_DRAIN_BATCH`` records that are first in line (due, lease free, every earlier
# record of their aggregate and their hospital's institution filing acknowledged), each is
# sent over the pooled HTTP client, and the outcomes are applied per batch: one
# transaction acknowledges every accepted record (one feed-counter update hands out their
# feed numbers), another reschedules the retries. Followers of what was acknowledged are
# first in line at the next lease, so the loop takes them without a doorbell. A task
# drains for at most ``REGULATOR_DRAIN_SECONDS`` and then hands over to a fresh task.
#
# A failing platform is not hammered record by record: a connection error or timeout, or
# ``REGULATOR_BREAKER_FAILURES`` retryable answers in a row, opens a per-province breaker
# in the worker process. Records of that province are then given back untried (their
# attempt not counted, so their backoff does not grow while the platform is away) until a
# probe, one record after a pause that doubles up to ``REGULATOR_BREAKER_MAX_SECONDS``,
# is answered. When the platform comes back the whole backlog is due at once and drains
# at the full rate.


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


def _first_in_line(now: dt.datetime) -> QuerySet[OutboxRecord]:
    """Records a worker may send now: pending, due, lease free, every earlier record of
    the same aggregate acknowledged and, for anything but the filing itself, the
    hospital's institution filing (which carries the certificate the platform verifies
    with) acknowledged. At most one record per aggregate is ever first in line."""
    earlier = OutboxRecord.objects.filter(
        aggregate_type=OuterRef("aggregate_type"),
        aggregate_id=OuterRef("aggregate_id"),
        id__lt=OuterRef("id"),
    ).exclude(status=RecordStatus.ACKNOWLEDGED)
    filing = OutboxRecord.objects.filter(
        hospital_id=OuterRef("hospital_id"),
        record_type=INSTITUTION_FILING,
        id__lt=OuterRef("id"),
    ).exclude(status=RecordStatus.ACKNOWLEDGED)
    return (
        OutboxRecord.objects.filter(status=RecordStatus.PENDING, next_attempt_at__lte=now)
        .filter(Q(locked_until__isnull=True) | Q(locked_until__lt=now))
        .exclude(Exists(earlier))
        .filter(Q(record_type=INSTITUTION_FILING) | ~Exists(filing))
    )


def _lease(
    now: dt.datetime, *, limit: int, pk: int | None = None, skip_provinces: Iterable[Any] = ()
) -> list[OutboxRecord]:
    """Lease up to ``limit`` records first in line (rows another worker is leasing are
    skipped, not waited for); each lease counts as an attempt."""
    candidates = _first_in_line(now)
    if pk is not None:
        candidates = candidates.filter(pk=pk)
    skip = list(skip_provinces)
    if skip:
        candidates = candidates.exclude(province_id__in=skip)
    until = now + dt.timedelta(seconds=settings.REGULATOR_DELIVERY_LEASE_SECONDS)
    with transaction.atomic():
        pks = list(
            candidates.select_for_update(skip_locked=True)
            .order_by("id")
            .values_list("pk", flat=True)[:limit]
        )
        if not pks:
            return []
        OutboxRecord.objects.filter(pk__in=pks).update(
            locked_until=until, attempts=F("attempts") + 1
        )
    return list(
        OutboxRecord.objects.select_related("hospital", "province")
        .filter(pk__in=pks)
        .order_by("id")
    )


def _give_back(pks: list[int]) -> None:
    """Release leased records untried: no attempt counted, due again at once."""
    OutboxRecord.objects.filter(pk__in=pks, status=RecordStatus.PENDING).update(
        locked_until=None, attempts=F("attempts") - 1
    )


# The per-province breaker of this worker process (see the section comment).


@dataclass
class _Breaker:
    failures: int = 0  # retryable answers in a row
    trips: int = 0  # openings since the platform last answered; the pause doubles
    open_until: float = 0.0  # time.monotonic()
    probe_queued_until: float = 0.0


_breakers: dict[Any, _Breaker] = {}
_breakers_lock = threading.Lock()


def _open_provinces() -> list[Any]:
    now = time.monotonic()
    with _breakers_lock:
        return [p for p, b in _breakers.items() if b.open_until > now]


def _observe(province_id: Any, outcome: Outcome) -> bool:
    """Record a send's outcome; true when it opened the province's breaker."""
    with _breakers_lock:
        breaker = _breakers.setdefault(province_id, _Breaker())
        if outcome.kind != "retry":  # acknowledged or refused: the platform is answering
            breaker.failures = breaker.trips = 0
            return False
        breaker.failures += 1
        unreachable = outcome.status_code is None  # connection error or timeout
        probing = breaker.trips > 0
        if not (unreachable or probing or breaker.failures >= settings.REGULATOR_BREAKER_FAILURES):
            return False
        breaker.trips += 1
        breaker.failures = 0
        pause = min(settings.REGULATOR_BREAKER_MAX_SECONDS, backoff_seconds(breaker.trips))
        breaker.open_until = time.monotonic() + pause
        return True


def _queue_probe() -> None:
    """One doorbell per process for when the earliest open breaker closes again (new
    records and the sweep ring too, but a backlog must not wait for them)."""
    now = time.monotonic()
    with _breakers_lock:
        open_breakers = [b for b in _breakers.values() if b.open_until > now]
        if not open_breakers:
            return
        soonest = min(open_breakers, key=lambda b: b.open_until)
        if soonest.probe_queued_until >= soonest.open_until:
            return
        soonest.probe_queued_until = soonest.open_until
        countdown = soonest.open_until - now
    enqueue_drain(countdown=countdown)


def _send(records: list[OutboxRecord], leased_at: float) -> dict[int, str]:
    """Send leased records one after another over the pooled client and apply the
    outcomes. A province whose breaker opens, or whose platform stops answering, has the
    rest of its records given back; so has every record once too little of the lease is
    left for a full send."""
    connections = {
        c.province_id: c
        for c in PlatformConnection.objects.filter(
            province_id__in={r.province_id for r in records}, enabled=True
        )
    }
    lease = settings.REGULATOR_DELIVERY_LEASE_SECONDS
    sent: list[tuple[OutboxRecord, Outcome]] = []
    untried: list[int] = []
    stopped: set[Any] = set(_open_provinces())
    tripped: set[int] = set()
    for record in records:
        connection = connections.get(record.province_id)
        if record.province_id in stopped:
            untried.append(record.pk)
            continue
        if connection is None:
            outcome = Outcome("retry", None, message="no enabled platform connection")
        elif time.monotonic() - leased_at + connection.timeout_seconds >= 0.9 * lease:
            untried.append(record.pk)
            continue
        else:
            outcome = ADAPTERS[connection.adapter].send(
                endpoint=_endpoint(connection), record=_wire(record)
            )
        if _observe(record.province_id, outcome):
            tripped.add(record.pk)
            stopped.add(record.province_id)
        elif outcome.status_code is None:
            stopped.add(record.province_id)
        sent.append((record, outcome))
    if untried:
        _give_back(untried)
    results = _apply(sent, tripped)
    results.update(dict.fromkeys(untried, "untried"))
    return results


@dataclass(frozen=True)
class DeliveryResult:
    outcome: str  # skipped, waiting, acknowledged, dead, retry, untried
    record_pk: int


def record_deliver(*, record_pk: int) -> DeliveryResult:
    """Deliver one record now if it is first in line (the tests and the admin use this;
    workers drain with ``records_drain``)."""
    now = timezone.now()
    leased = _lease(now, limit=1, pk=record_pk)
    if not leased:
        waiting = (
            OutboxRecord.objects.filter(
                pk=record_pk, status=RecordStatus.PENDING, next_attempt_at__lte=now
            )
            .filter(Q(locked_until__isnull=True) | Q(locked_until__lt=now))
            .exists()
        )
        return DeliveryResult("waiting" if waiting else "skipped", record_pk)
    outcome = _send(leased, time.monotonic())[record_pk]
    if outcome == "acknowledged":
        transaction.on_commit(enqueue_drain)  # its follower, if any, is first in line now
    return DeliveryResult(outcome, record_pk)


def records_drain(*, seconds: float | None = None, batch: int | None = None) -> dict[str, int]:
    """Deliver every record first in line, batch after batch, until none is left, a batch
    makes no progress (the platform is failing: the backoff and the breaker take over),
    or the time is up (a fresh task carries on). Returns the outcomes counted."""
    budget = settings.REGULATOR_DRAIN_SECONDS if seconds is None else seconds
    size = batch or settings.REGULATOR_DRAIN_BATCH
    deadline = time.monotonic() + budget
    totals: dict[str, int] = {}
    while True:
        leased_at = time.monotonic()
        records = _lease(timezone.now(), limit=size, skip_provinces=_open_provinces())
        if not records:
            break
        outcomes = _send(records, leased_at)
        for outcome in outcomes.values():
            totals[outcome] = totals.get(outcome, 0) + 1
        if not {"acknowledged", "dead"} & set(outcomes.values()):
            break
        if time.monotonic() >= deadline:
            enqueue_drain()
            break
    _queue_probe()
    return totals


def _take_feed_seqs(province_id: Any, count: int) -> int:
    """Take the province's next ``count`` feed numbers and answer the last: one statement
    that also row-locks the counter until the caller's transaction ends (so numbers stay
    gap-free)."""
    table = connection.ops.quote_name(FeedCounter._meta.db_table)
    sql = f"UPDATE {table} SET last_seq = last_seq + %s WHERE province_id = %s RETURNING last_seq"  # noqa: S608 - the table name is ours
    with connection.cursor() as cursor:
        cursor.execute(sql, [count, province_id])
        row = cursor.fetchone()
        if row is None:
            FeedCounter.objects.get_or_create(province_id=province_id)
            cursor.execute(sql, [count, province_id])
            row = cursor.fetchone()
    return int(row[0])


def _apply(sent: list[tuple[OutboxRecord, Outcome]], tripped: set[int]) -> dict[int, str]:
    """Apply outcomes per batch. A send that opened its province's breaker waits on the
    breaker (due again as soon as a probe gets through), not on a backoff of its own."""
    now = timezone.now()
    results: dict[int, str] = {}
    by_province: dict[Any, list[tuple[OutboxRecord, Outcome]]] = {}
    retries: list[tuple[OutboxRecord, Outcome]] = []
    for record, outcome in sent:
        if outcome.kind == "ack":
            by_province.setdefault(record.province_id, []).append((record, outcome))
        elif outcome.kind == "retry":
            retries.append((record, outcome))
        else:
            results[record.pk] = _dead_letter(record, outcome)
    for province_id, acks in by_province.items():
        results.update(_acknowledge(province_id, acks, now))
    if retries:
        results.update(_reschedule(retries, now, tripped))
        _queue_wakeups(r.next_attempt_at for r, _ in retries if r.pk not in tripped)
    return results


#: Whole seconds (epoch) at which this process has a drain queued for retries coming due.
_wakeups: set[int] = set()
WAKEUP_HORIZON_SECONDS = 60


def _queue_wakeups(times: Iterable[dt.datetime]) -> None:
    """Ring again when retries come due (to the second, one doorbell per second), so a
    retry waits for its backoff and not for the next sweep; retries further away than
    the horizon are left to the sweep."""
    now = time.time()
    due: list[int] = []
    with _breakers_lock:
        _wakeups.difference_update([s for s in _wakeups if s < now])
        for moment in times:
            second = math.ceil(moment.timestamp())
            if second - now <= WAKEUP_HORIZON_SECONDS and second not in _wakeups:
                _wakeups.add(second)
                due.append(second)
    for second in due:
        enqueue_drain(countdown=max(0.0, second - now))


_ACK_FIELDS = [
    "status",
    "ack_id",
    "acknowledged_at",
    "feed_seq",
    "locked_until",
    "last_status_code",
]


def _write_each(records: list[OutboxRecord], fields: list[str]) -> None:
    """Write ``fields`` of each record with one parameterised UPDATE sent for all rows
    (psycopg pipelines ``executemany``: one round trip). ``bulk_update`` builds a
    ``CASE`` per field and row, and building that query cost the worker more CPU than
    sending the records."""
    if not records:
        return
    meta = OutboxRecord._meta
    quote = connection.ops.quote_name
    columns = [cast("Field[Any, Any]", meta.get_field(name)) for name in fields]
    assignments = ", ".join(f"{quote(c.column)} = %s" for c in columns)
    sql = f"UPDATE {quote(meta.db_table)} SET {assignments} WHERE {quote(meta.pk.column)} = %s"  # noqa: S608 - names are ours
    rows = [
        [c.get_db_prep_save(getattr(r, c.attname), connection) for c in columns] + [r.pk]
        for r in records
    ]
    with connection.cursor() as cursor:
        cursor.executemany(sql, rows)


def _acknowledge(
    province_id: Any, acks: list[tuple[OutboxRecord, Outcome]], now: dt.datetime
) -> dict[int, str]:
    """One transaction: lock the records still pending (one another worker finished
    meanwhile is skipped), take their feed numbers in id order, update them together."""
    results: dict[int, str] = {}
    with transaction.atomic():
        pending = set(
            OutboxRecord.objects.select_for_update()
            .filter(pk__in=[r.pk for r, _ in acks], status=RecordStatus.PENDING)
            .order_by("pk")
            .values_list("pk", flat=True)
        )
        fresh = [(r, o) for r, o in acks if r.pk in pending]
        results.update({r.pk: "skipped" for r, _ in acks if r.pk not in pending})
        if not fresh:
            return results
        first = _take_feed_seqs(province_id, len(fresh)) - len(fresh) + 1
        for offset, (record, outcome) in enumerate(fresh):
            record.status = RecordStatus.ACKNOWLEDGED
            record.ack_id = outcome.ack_id
            record.acknowledged_at = now
            record.feed_seq = first + offset
            record.locked_until = None
            record.last_status_code = outcome.status_code
            results[record.pk] = "acknowledged"
        _write_each([r for r, _ in fresh], _ACK_FIELDS)
        _after_ack([r for r, _ in fresh])
    return results


def _reschedule(
    retries: list[tuple[OutboxRecord, Outcome]], now: dt.datetime, tripped: set[int]
) -> dict[int, str]:
    results: dict[int, str] = {}
    with transaction.atomic():
        current = {
            r.pk: r
            for r in OutboxRecord.objects.select_for_update()
            .filter(pk__in=[r.pk for r, _ in retries], status=RecordStatus.PENDING)
            .order_by("pk")
        }
        changed = []
        for record, outcome in retries:
            row = current.get(record.pk)
            if row is None:
                results[record.pk] = "skipped"  # another worker finished it
                continue
            if record.pk in tripped:
                row.next_attempt_at = now
            else:
                row.next_attempt_at = now + dt.timedelta(seconds=backoff_seconds(row.attempts))
            row.locked_until = None
            row.last_status_code = outcome.status_code
            row.last_error = (outcome.message or outcome.code or "retry")[:500]
            record.next_attempt_at = row.next_attempt_at
            changed.append(row)
            results[record.pk] = "retry"
        _write_each(changed, ["next_attempt_at", "locked_until", "last_status_code", "last_error"])
    return results


def _dead_letter(record: OutboxRecord, outcome: Outcome) -> str:
    with transaction.atomic():
        current = OutboxRecord.objects.select_for_update().get(pk=record.pk)
        if current.status != RecordStatus.PENDING:
            return "skipped"  # another worker finished it
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
    return "dead"


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


#: Feed frames per channel-layer message (a batch's pushes travel together).
FEED_FRAMES_PER_PUSH = 50


def _after_ack(records: list[OutboxRecord]) -> None:
    """After commit: ring the province's feed with the new frames (in feed order), and
    if an institution filing was acknowledged, ring for the records that waited on it."""
    frames = [{"type": "record", "record": feed_item(r)} for r in records]
    group = regulator_group(records[0].province.code)
    filing = any(r.record_type == INSTITUTION_FILING for r in records)

    def after() -> None:
        if filing:
            enqueue_drain()
        try:
            for i in range(0, len(frames), FEED_FRAMES_PER_PUSH):
                chunk = frames[i : i + FEED_FRAMES_PER_PUSH]
                group_send(group, {"type": "feed.push", "frames": chunk})
        except Exception:  # the feed resumes from the database; a lost doorbell is fine
            logger.warning("feed push failed", exc_info=True)

    transaction.on_commit(after)


# --- Periodic work --------------------------------------------------------------------------


def records_sweep(*, now: dt.datetime | None = None, limit: int = 2000) -> int:
    """Ring for every due record whose lease is free: retries whose time came, records a
    crashed worker left behind, and any whose doorbell was lost. One doorbell per batch
    of due records (a drain takes everything first in line; several doorbells let
    several workers drain at once). Returns how many records were due."""
    now = now or timezone.now()
    due = (
        OutboxRecord.objects.filter(status=RecordStatus.PENDING, next_attempt_at__lte=now)
        .filter(Q(locked_until__isnull=True) | Q(locked_until__lt=now))
        .order_by("id")
        .values_list("pk", flat=True)[:limit]
        .count()
    )
    for _ in range(-(-due // settings.REGULATOR_DRAIN_BATCH)):
        enqueue_drain()
    return due


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
        transaction.on_commit(enqueue_drain)
    return current
