"""Nothing lost, nothing doubled, with a real Celery worker (issue 7, "Done when"): the
records real flows append are queued on commit to this test process's own queue, a real
``celery -A backend worker`` process delivers them over HTTP to the bundled platform peer
(a real process), and the sweep (``records_sweep``, called here as beat would call it)
picks up what a fault or a killed worker left behind. Through a healthy platform, a down
window, 30 % 5xx answers, answers slower than the 2 s client timeout, and a worker killed
with SIGKILL in the middle of a delivery, every record ends acknowledged exactly once at
the platform (its own store: no duplicates, no gaps) and in order per aggregate.

PostgreSQL and Redis only: the worker shares the test database through its own
connections (SQLite's test database is in memory) and takes tasks from Redis."""

from __future__ import annotations

import contextlib
import datetime as dt
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgiref.sync import sync_to_async
from django.utils import timezone
from rest_framework.test import APIClient

from backend.identity.models import Role
from backend.organisations.models import Department, RegulatorOfficial
from regulators.models import OutboxRecord, RecordStatus
from regulators.services import records_sweep
from tests.chat_helpers import release_connections
from tests.conftest import require_redis
from tests.consult_helpers import client_for, close_socket, open_socket
from tests.consult_http_helpers import CONSOLE, end_body, require_postgres
from tests.factories import UserFactory
from tests.regulator_helpers import Platform, outbox_by_aggregate, platform
from tests.rx_helpers import RxScene
from tests.worker_helpers import WorkerProcess, purge_queue

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("icd10")]

ROOT = Path(__file__).resolve().parent.parent
LEASE_SECONDS = 3
CLIENT_TIMEOUT = 2.0  # tests.regulator_helpers.Platform.connect


# --- The worker -----------------------------------------------------------------------------------


class Worker(WorkerProcess):
    """A worker with the test database and a short lease (records retried at once)."""

    def __init__(self, log: Path) -> None:
        super().__init__(
            log,
            env={
                "REGULATOR_DELIVERY_LEASE_SECONDS": str(LEASE_SECONDS),
                "REGULATOR_RETRY_BASE_SECONDS": "0",
            },
        )


@contextlib.contextmanager
def running_worker(log: Path) -> Iterator[Worker]:
    worker = Worker(log)
    try:
        worker.wait_ready()
        yield worker
    finally:
        worker.stop()


# --- Set-up ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def peer(tmp_path_factory: pytest.TempPathFactory) -> Any:
    require_postgres("a Celery worker sharing the test database (SQLite's is in memory)")
    require_redis()
    with platform(tmp_path_factory.mktemp("peer")) as running:
        yield running


@pytest.fixture
def province_peer(peer: Platform, settings: Any, department: Department) -> Platform:
    settings.REGULATOR_DELIVERY_LEASE_SECONDS = LEASE_SECONDS
    settings.REGULATOR_RETRY_BASE_SECONDS = 0
    purge_queue()
    peer.reset()
    peer.connect(department.hospital.province)
    return peer


def _official(department: Department) -> APIClient:
    user = UserFactory(role=Role.REGULATOR)
    RegulatorOfficial.objects.create(user=user, province=department.hospital.province)
    return client_for(user)


def _end(scene: RxScene) -> None:
    ended = scene.doctor_api.post(
        f"{CONSOLE}/consultations/{scene.consultation_id}/end", end_body(), format="json"
    )
    assert ended.status_code == 200, ended.content


def _story(scene: RxScene) -> None:
    """A prescription signed, approved, claimed and dispensed; the consultation ended."""
    prescription_id, secret = scene.claimed()
    assert scene.dispense(prescription_id, secret).status_code == 200
    _end(scene)


def _states() -> list[Any]:
    return list(
        OutboxRecord.objects.exclude(status=RecordStatus.ACKNOWLEDGED).values(
            "id", "record_type", "status", "attempts", "last_error", "locked_until"
        )[:10]
    )


def settle(worker: Worker, *, timeout: float, sweep: bool = True, every: float = 0.5) -> int:
    """Wait until every record is acknowledged, sweeping as beat would (``sweep``).
    Returns the number of sweeps that queued something."""
    deadline = time.monotonic() + timeout
    sweeps = 0
    while OutboxRecord.objects.exclude(status=RecordStatus.ACKNOWLEDGED).exists():
        if time.monotonic() > deadline:
            raise AssertionError(f"not all acknowledged: {_states()}\n{worker.tail()}")
        if sweep and records_sweep():
            sweeps += 1
        time.sleep(every)
    return sweeps


def wait_for(condition: Any, *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}: {_states()}")
        time.sleep(0.05)


def assert_exactly_once_in_order(peer: Platform) -> dict[str, dict[str, Any]]:
    """The peer's own store holds every outbox record once, gap-free, each aggregate in
    order; each record is acknowledged once with the peer's ack id and a gap-free feed
    sequence."""
    received = peer.records()
    ids = [r["record_id"] for r in received]
    ours = list(OutboxRecord.objects.order_by("id"))
    assert len(ids) == len(set(ids)), "duplicates at the platform"
    assert sorted(ids) == sorted(str(r.record_id) for r in ours), "lost or foreign records"
    assert [r["seq"] for r in received] == list(range(1, len(received) + 1)), "gaps"
    assert received[0]["record_type"] == "filing.institution"
    by_id = {r["record_id"]: r for r in received}
    for record in ours:
        assert record.status == RecordStatus.ACKNOWLEDGED, record
        assert record.ack_id == by_id[str(record.record_id)]["ack_id"], record
        assert record.locked_until is None, record
    assert sorted(r.feed_seq or 0 for r in ours) == list(range(1, len(ours) + 1))
    feed_seq = {str(r.record_id): r.feed_seq or 0 for r in ours}
    for aggregate, record_ids in outbox_by_aggregate().items():
        peer_seqs = [by_id[i]["seq"] for i in record_ids]
        assert peer_seqs == sorted(peer_seqs), aggregate
        ours_seqs = [feed_seq[i] for i in record_ids]
        assert ours_seqs == sorted(ours_seqs), aggregate
    return by_id


# --- Scenarios ------------------------------------------------------------------------------------


async def test_a_healthy_platform_gets_everything_once_in_order_and_the_feed_live(
    province_peer: Platform, department: Department, tmp_path: Path
) -> None:
    """The doorbells queued on commit (and each acknowledgement's queueing of the next
    record of its aggregate) are enough: no sweep. Each acknowledgement by the worker
    process reaches an official's feed socket in this process, live, in feed order."""

    def build() -> None:
        first = RxScene(department)
        _story(first)
        second = RxScene(department)
        second.active()
        second.active()

    official = await sync_to_async(_official)(department)
    worker = await sync_to_async(Worker)(tmp_path / "worker.log")
    socket = None
    try:
        await sync_to_async(worker.wait_ready)()
        ticket = (await sync_to_async(official.post)("/api/regulator/v1/ws-ticket")).json()
        socket, hello = await open_socket(f"/ws/regulator/feed/?ticket={ticket['ticket']}")
        assert hello["type"] == "hello"
        await sync_to_async(build)()
        await sync_to_async(settle)(worker, timeout=20, sweep=False)
        count = await sync_to_async(OutboxRecord.objects.count)()
        assert count == 8 + 2 + 4  # the story's claim is reported too
        frames = [await socket.receive_json_from(timeout=5) for _ in range(count)]
        assert await socket.receive_nothing(timeout=0.3)

        assert {f["type"] for f in frames} == {"record"}
        assert [f["record"]["seq"] for f in frames] == list(range(1, count + 1))
        by_id = await sync_to_async(assert_exactly_once_in_order)(province_peer)
        # The feed's order is the order the platform stored them in.
        assert [f["record"]["record_id"] for f in frames] == sorted(
            by_id, key=lambda i: by_id[i]["seq"]
        )
        stats = (await sync_to_async(province_peer.http.get)("/api/stats")).json()
        assert stats["duplicates"] == 0
        attempts = await sync_to_async(
            lambda: set(OutboxRecord.objects.values_list("attempts", flat=True))
        )()
        assert attempts == {1}
    finally:
        if socket is not None:
            await close_socket(socket)
        await sync_to_async(worker.stop)()
        # The thread sync_to_async ran in holds a connection: give it back, so that the
        # test database can be dropped.
        await release_connections()


def test_down_then_5xx_then_slow_answers_are_retried_by_the_sweep(
    province_peer: Platform, department: Department, tmp_path: Path
) -> None:
    with running_worker(tmp_path / "worker.log") as worker:
        # A down window: everything answered 503 (the records are queued and tried). The
        # window is measured from before the peer starts it, so it ends no later there.
        down_until = time.monotonic() + 3
        down_ends_at = timezone.now() + dt.timedelta(seconds=3)
        province_peer.faults(down_for_seconds=3)
        scene = RxScene(department)
        wait_for(
            lambda: OutboxRecord.objects.filter(last_status_code=503).exists(),
            timeout=10,
            what="a 503 from the down platform",
        )
        while time.monotonic() < down_until:
            records_sweep()
            time.sleep(min(0.5, max(0.0, down_until - time.monotonic())))

        # Back, but 30 % of the submissions answer 500.
        province_peer.faults(error_rate=0.3)
        _story(scene)
        extra = RxScene(department)
        extra.active()
        settle(worker, timeout=30)
        for _ in range(5):  # the peer's dice are not seeded: roll until one 500 came
            if province_peer.http.get("/api/stats").json()["injected_5xx"]["error_rate"]:
                break
            extra.active()
            settle(worker, timeout=30)
        stats = province_peer.http.get("/api/stats").json()
        assert stats["injected_5xx"]["down"] > 0
        assert stats["injected_5xx"]["error_rate"] > 0, stats

        # Slow: the platform stores each record, then answers after 3 s, beyond the 2 s
        # client timeout; the sender retries and gets "duplicate" once it answers in time.
        province_peer.faults(hang_seconds=CLIENT_TIMEOUT + 1)
        late = RxScene(department)
        wait_for(
            lambda: OutboxRecord.objects.filter(
                status=RecordStatus.PENDING, last_error__icontains="timeout"
            ).exists(),
            timeout=15,
            what="a delivery that timed out",
        )
        timed_out = OutboxRecord.objects.filter(last_error__icontains="timeout").first()
        assert timed_out is not None
        province_peer.faults()
        _end(late)
        settle(worker, timeout=30)

    by_id = assert_exactly_once_in_order(province_peer)
    first_ack = min(r.acknowledged_at for r in OutboxRecord.objects.all() if r.acknowledged_at)
    assert first_ack >= down_ends_at  # nothing got through while the platform was down
    timed_out.refresh_from_db()
    assert timed_out.attempts >= 2
    assert str(timed_out.record_id) in by_id  # stored once, though sent twice
    stats = province_peer.http.get("/api/stats").json()
    assert stats["duplicates"] >= 1, stats
    assert OutboxRecord.objects.filter(attempts__gt=1).count() >= 2


def _kill_when_stored(
    peer: Platform, worker: Worker, baseline: int
) -> tuple[threading.Thread, list[float]]:
    """Watch the platform's store from another thread and SIGKILL the worker as soon as
    a new record is stored: the worker is then waiting for the (hanging) answer."""
    killed: list[float] = []

    def watch() -> None:
        with httpx.Client(base_url=peer.url, timeout=5) as http:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                page = http.get("/api/records", params={"after": baseline, "limit": 10}).json()
                if page["results"]:
                    worker.kill()
                    killed.append(time.monotonic())
                    return
                time.sleep(0.02)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread, killed


def test_a_worker_killed_mid_delivery_loses_and_doubles_nothing(
    province_peer: Platform, department: Department, tmp_path: Path
) -> None:
    log = tmp_path / "worker.log"
    first = Worker(log)
    try:
        first.wait_ready()
        scene = RxScene(department)
        settle(first, timeout=20)
        baseline = len(province_peer.records())
        assert baseline == 3  # filing, requested, accepted

        # The platform takes the next record, then hangs; the worker waits for the answer
        # and is killed right then, holding the lease.
        province_peer.faults(hang_seconds=CLIENT_TIMEOUT + 3)
        watcher, killed = _kill_when_stored(province_peer, first, baseline)
        scene.active()  # prescription.issued, then review (waits behind it)
        watcher.join(timeout=20)
        assert killed, first.tail()
    finally:
        first.stop()
    assert first.proc.returncode == -signal.SIGKILL
    stored = province_peer.records()[baseline:]
    assert [r["record_type"] for r in stored] == ["prescription.issued"]
    in_flight = OutboxRecord.objects.get(record_id=stored[0]["record_id"])
    assert in_flight.status == RecordStatus.PENDING  # stored there, not acknowledged here
    assert in_flight.locked_until is not None
    lease_end = in_flight.locked_until
    province_peer.faults()

    # More work arrives while no worker runs; a new worker starts.
    _end(scene)
    with running_worker(log) as second:
        settle(second, timeout=30)
    by_id = assert_exactly_once_in_order(province_peer)
    in_flight.refresh_from_db()
    assert in_flight.acknowledged_at is not None
    assert in_flight.acknowledged_at >= lease_end  # resent only after the lease ran out
    assert in_flight.attempts == 2
    assert in_flight.ack_id == by_id[str(in_flight.record_id)]["ack_id"]
    stats = province_peer.http.get("/api/stats").json()
    assert stats["duplicates"] == 1, stats  # the resend was answered "duplicate"
    review = OutboxRecord.objects.get(record_type="review")
    assert by_id[str(review.record_id)]["seq"] > by_id[str(in_flight.record_id)]["seq"]
