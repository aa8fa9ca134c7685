from __future__ import annotations

from celery import shared_task

from backend.identity.services import credentials_purge_expired


@shared_task(name="backend.identity.tasks.purge_expired_credentials")
def purge_expired_credentials() -> dict[str, int]:
    return credentials_purge_expired()
