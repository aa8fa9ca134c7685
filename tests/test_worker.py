"""A real Celery worker consumes tasks from the configured broker: Redis when REDIS_URL
is set (CI), the broker-less folder transport of the demo otherwise."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from django.conf import settings

from backend.celery import app, ping
from tests.conftest import require_redis
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


def test_publishing_reuses_one_redis_client_per_channel_and_every_message_arrives() -> None:
    require_redis()  # the Redis transport is the broker's when REDIS_URL is set
    from backend.kombu_redis import Channel

    queue = f"test-publish-{os.getpid()}-{os.environ.get('PYTEST_XDIST_WORKER', 'main')}"
    with app.connection_for_write() as connection:
        channel = connection.default_channel
        assert isinstance(channel, Channel)
        client = channel._create_client()
        assert channel._create_client() is client
        try:
            with app.producer_or_acquire() as producer:
                for n in range(3):
                    ping.apply_async(queue=queue, producer=producer, task_id=f"{queue}-{n}")
            # Every message is in the queue's Redis list, none lost to the shared client.
            assert client.llen(queue) == 3
        finally:
            client.delete(queue)
