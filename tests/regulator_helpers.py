"""The provincial platform as a real process (``python -m peers.regulator``) and the
helpers that drive our outbox against it. Nothing is mocked: records go over HTTP with
the real adapters, and the peer verifies HMACs and seal signatures and stores what it
accepts in its own database."""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from backend.organisations.models import Province
from regulators.models import Adapter, OutboxRecord, PlatformConnection, RecordStatus
from regulators.services import record_deliver

ROOT = Path(__file__).resolve().parent.parent
SM4_KEY = "0123456789abcdeffedcba9876543210"


def wait_until_healthy(proc: subprocess.Popen[bytes], http: httpx.Client, log: Path) -> None:
    """Wait (30 s at most) for a peer process to answer ``/healthz``."""
    deadline = time.monotonic() + 30
    while True:
        try:
            if http.get("/healthz").status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the peer did not start: {log.read_text()}")
        time.sleep(0.1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Platform:
    """A running peer with one app for each protocol."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.app_id = "zj-test-app"
        self.secret = secrets.token_hex(16)
        self.sm4_app_id = "zj-test-sm4"
        self.log = (tmp / "peer.log").open("wb")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "peers.regulator",
                "--port",
                str(self.port),
                "--db",
                str(tmp / "peer.sqlite3"),
                "--app",
                f"{self.app_id}:{self.secret}",
                "--app",
                f"{self.sm4_app_id}:{self.secret}:{SM4_KEY}",
            ],
            cwd=ROOT,
            env={**os.environ},
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.http = httpx.Client(base_url=self.url, timeout=10)
        wait_until_healthy(self.proc, self.http, tmp / "peer.log")

    def connect(self, province: Province, adapter: str = Adapter.JSON_HMAC) -> None:
        PlatformConnection.objects.update_or_create(
            province=province,
            defaults={
                "adapter": adapter,
                "base_url": self.url,
                "app_id": self.app_id if adapter == Adapter.JSON_HMAC else self.sm4_app_id,
                "app_secret": self.secret,
                "sm4_key": SM4_KEY if adapter == Adapter.NHSA_SM4 else "",
                "timeout_seconds": 2.0,
                "enabled": True,
            },
        )

    def faults(self, **faults: Any) -> None:
        assert self.http.post("/_faults", json=faults).status_code == 200

    def reset(self) -> None:
        self.faults()
        assert self.http.post("/_reset").status_code == 200

    def records(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        after = 0
        while True:
            page = self.http.get("/api/records", params={"after": after, "limit": 500}).json()
            out += page["results"]
            if not page["results"]:
                return out
            after = page["results"][-1]["seq"]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.http.close()
        self.log.close()


@contextlib.contextmanager
def platform(tmp: Path) -> Iterator[Platform]:
    peer = Platform(tmp)
    try:
        yield peer
    finally:
        peer.stop()


def drain(*, rounds: int = 400, patience: float = 10.0) -> dict[str, int]:
    """Deliver until nothing is due, as the worker and the sweep would (retries are due
    at once: the tests set the backoff base to zero). Returns when every pending record
    waits behind a dead letter; fails if records stay undeliverable for ``patience``."""
    outcomes: dict[str, int] = {}
    deadline = time.monotonic() + patience
    for _ in range(rounds):
        due = list(
            OutboxRecord.objects.filter(status=RecordStatus.PENDING)
            .order_by("id")
            .values_list("pk", flat=True)
        )
        if not due:
            return outcomes
        progress = False
        for pk in due:
            outcome = record_deliver(record_pk=pk).outcome
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            progress |= outcome in ("acknowledged", "dead", "retry")
        if not progress and OutboxRecord.objects.filter(status=RecordStatus.DEAD).exists():
            return outcomes  # everything left waits behind a dead letter
        if time.monotonic() > deadline:
            break
        if not progress or outcomes.get("retry"):
            time.sleep(0.05)
    pending = OutboxRecord.objects.filter(status=RecordStatus.PENDING).count()
    stuck = list(
        OutboxRecord.objects.filter(status=RecordStatus.PENDING).values(
            "record_type", "attempts", "last_error", "next_attempt_at", "locked_until"
        )[:5]
    )
    raise AssertionError(f"{pending} record(s) still pending: {outcomes}; e.g. {stuck}")


def outbox_by_aggregate() -> dict[tuple[str, str], list[str]]:
    groups: dict[tuple[str, str], list[str]] = {}
    for record in OutboxRecord.objects.order_by("id"):
        groups.setdefault((record.aggregate_type, record.aggregate_id), []).append(
            str(record.record_id)
        )
    return groups
