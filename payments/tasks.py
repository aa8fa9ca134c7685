"""Background steps of payments. Each loads ids and calls one idempotent service."""

from __future__ import annotations

import datetime as dt

from celery import shared_task
from django.utils import timezone

from payments.services import (
    attempt_close,
    close_order_execute,
    payments_sweep,
    reconcile,
    refund_execute,
)


@shared_task(
    name="payments.tasks.execute_refund",
    ignore_result=True,
    autoretry_for=(Exception,),
    retry_backoff=5,
    max_retries=5,
)
def execute_refund(refund_id: str) -> str:
    return refund_execute(refund_id=refund_id)


@shared_task(
    name="payments.tasks.close_order",
    ignore_result=True,
    autoretry_for=(Exception,),
    retry_backoff=5,
    max_retries=5,
)
def close_order(order_id: str) -> None:
    close_order_execute(order_id=order_id)


@shared_task(
    name="payments.tasks.close_attempt",
    ignore_result=True,
    autoretry_for=(Exception,),
    retry_backoff=5,
    max_retries=5,
)
def close_attempt(attempt_id: str) -> None:
    attempt_close(attempt_id=attempt_id)


@shared_task(name="payments.tasks.sweep", ignore_result=True)
def sweep() -> dict[str, int]:
    return payments_sweep()


@shared_task(name="payments.tasks.reconcile_yesterday", ignore_result=True)
def reconcile_yesterday() -> int:
    day = timezone.localdate() - dt.timedelta(days=1)
    return sum(len(run.differences) for run in reconcile(day=day))
