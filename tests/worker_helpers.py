"""A real ``celery -A backend worker`` process for the tests that need one: it takes the
tasks this test process queues (its own ``CELERY_DEFAULT_QUEUE``) from the real broker and
works on the test database through its own connections (PostgreSQL only: SQLite's test
database is in memory)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from django.db import connection

from backend.celery import app, ping

ROOT = Path(__file__).resolve().parent.parent


def worker_database_url() -> str:
    """``DATABASE_URL`` rewritten to the database this test process really uses
    (pytest-django's ``test_<name>``, with a ``_gwN`` suffix under xdist)."""
    parts = urlsplit(os.environ["DATABASE_URL"])
    return urlunsplit(parts._replace(path="/" + connection.settings_dict["NAME"]))


class WorkerProcess:
    """``celery -A backend worker --pool solo`` on ``queue`` (default: this test
    process's default queue, where ``.delay()`` sends), with the test database unless
    ``test_database`` is false; ``env`` adds settings."""

    def __init__(
        self,
        log: Path,
        *,
        env: dict[str, str] | None = None,
        queue: str | None = None,
        test_database: bool = True,
    ) -> None:
        self.queue = queue or os.environ["CELERY_DEFAULT_QUEUE"]
        self.log = log
        environment = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        if test_database:
            environment["DATABASE_URL"] = worker_database_url()
        with log.open("ab") as output:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "celery",
                    "-A",
                    "backend",
                    "worker",
                    "--pool",
                    "solo",
                    "--without-gossip",
                    "--without-mingle",
                    "-Q",
                    self.queue,
                    "-l",
                    "warning",
                ],
                cwd=ROOT,
                env=environment,
                stdout=output,
                stderr=subprocess.STDOUT,
            )

    def wait_ready(self) -> None:
        try:
            assert ping.apply_async(queue=self.queue).get(timeout=60) == "pong"
        except Exception as exc:
            raise AssertionError(self.tail()) from exc

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


def purge_queue() -> None:
    """Forget messages an earlier test of this process left on its queue (the app's only
    queue: ``task_default_queue`` is this process's ``CELERY_DEFAULT_QUEUE``)."""
    app.control.purge()


@contextlib.contextmanager
def running(log: Path, *, env: dict[str, str] | None = None) -> Iterator[WorkerProcess]:
    worker = WorkerProcess(log, env=env)
    try:
        worker.wait_ready()
        yield worker
    finally:
        worker.stop()
