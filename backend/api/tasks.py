from __future__ import annotations

from celery import shared_task

from backend.api.idempotency import idempotency_purge_expired


@shared_task(name="backend.api.tasks.purge_expired_idempotency_keys")
def purge_expired_idempotency_keys() -> int:
    return idempotency_purge_expired()
