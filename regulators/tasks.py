from __future__ import annotations

from celery import shared_task

from regulators.services import record_deliver, records_sweep, upload_delays_check


@shared_task(name="regulators.tasks.deliver_record", ignore_result=True)
def deliver_record(record_pk: int) -> str:
    return record_deliver(record_pk=record_pk).outcome


@shared_task(name="regulators.tasks.sweep_outbox", ignore_result=True)
def sweep_outbox() -> int:
    return records_sweep()


@shared_task(name="regulators.tasks.check_upload_delays", ignore_result=True)
def check_upload_delays() -> int:
    return upload_delays_check()
