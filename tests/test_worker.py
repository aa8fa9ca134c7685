"""A real Celery worker consumes tasks from the configured broker: Redis when REDIS_URL
is set (CI), the broker-less folder transport of the demo otherwise."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from django.conf import settings

from backend.celery import app, ping
from tests.worker_helpers import WorkerProcess

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def worker(tmp_path):
    queue = f"test-{os.getpid()}-{os.environ.get('PYTEST_XDIST_WORKER', 'main')}"
    process = WorkerProcess(tmp_path / "worker.log", queue=queue, test_database=False)
    try:
        yield queue
    finally:
        process.stop()


def test_worker_round_trip_through_the_configured_broker(worker):
    expected_scheme = "redis" if settings.REDIS_URL else "filesystem"
    assert app.conf.broker_url.startswith(expected_scheme)
    result = ping.apply_async(queue=worker)
    assert result.get(timeout=60) == "pong"


def test_beat_schedule_names_registered_tasks():
    app.loader.import_default_modules()
    for entry in settings.CELERY_BEAT_SCHEDULE.values():
        assert entry["task"] in app.tasks, entry["task"]
