from __future__ import annotations

from typing import Any

from celery import shared_task

from backend.notifications.backends import PushDeliveryError
from backend.notifications.services import presence_purge_stale, push_deliver


@shared_task(
    name="backend.notifications.tasks.deliver_push",
    # Nobody reads its result: without this every call also subscribed to one in Redis.
    ignore_result=True,
    autoretry_for=(PushDeliveryError,),
    retry_backoff=5,
    retry_backoff_max=300,
    retry_jitter=True,
    max_retries=8,
)
def deliver_push(*, user_id: str, title: str, body: str, data: dict[str, Any]) -> int:
    return push_deliver(user_id=user_id, title=title, body=body, data=data)


@shared_task(name="backend.notifications.tasks.purge_stale_presence")
def purge_stale_presence() -> int:
    return presence_purge_stale()
