"""The Celery application. Tasks live in each app's ``tasks.py`` and are discovered;
the periodic schedule is ``CELERY_BEAT_SCHEDULE`` in settings (run ``celery -A backend
beat``, or ``worker -B`` in the demo)."""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "backend.settings")

app = Celery("backend")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@app.task(name="backend.celery.ping")
def ping() -> str:
    """Answers "pong": used by tests and operators to prove a worker is consuming."""
    return "pong"
