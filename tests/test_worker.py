"""A real Celery worker consumes tasks from the configured broker: Redis when REDIS_URL
is set (CI), the broker-less folder transport of the demo otherwise."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings

from backend.celery import app, ping

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def worker():
    queue = f"test-{os.getpid()}-{os.environ.get('PYTEST_XDIST_WORKER', 'main')}"
    proc = subprocess.Popen(
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
            queue,
            "-l",
            "warning",
        ],
        cwd=ROOT,
        env={**os.environ},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        yield queue
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_worker_round_trip_through_the_configured_broker(worker):
    expected_scheme = "redis" if settings.REDIS_URL else "filesystem"
    assert app.conf.broker_url.startswith(expected_scheme)
    result = ping.apply_async(queue=worker)
    assert result.get(timeout=60) == "pong"


def test_beat_schedule_names_registered_tasks():
    app.loader.import_default_modules()
    for entry in settings.CELERY_BEAT_SCHEDULE.values():
        assert entry["task"] in app.tasks, entry["task"]
