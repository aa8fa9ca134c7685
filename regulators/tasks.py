from __future__ import annotations

from celery import shared_task

from regulators.services import records_drain, records_sweep, upload_delays_check


@shared_task(name="regulators.tasks.drain_outbox", ignore_result=True)
def drain_outbox() -> str:
    """Deliver what is first in line, batch after batch (``records_drain``)."""
    outcomes = records_drain()
    return "drained" if outcomes else "idle"


@shared_task(name="regulators.tasks.deliver_record", ignore_result=True)
def deliver_record(record_pk: int) -> str:
    """The doorbell of earlier releases (one per record), still queued after an upgrade:
    it drains like ``drain_outbox``."""
    return drain_outbox()


@shared_task(name="regulators.tasks.sweep_outbox", ignore_result=True)
def sweep_outbox() -> int:
    return records_sweep()


@shared_task(name="regulators.tasks.check_upload_delays", ignore_result=True)
def check_upload_delays() -> int:
    return upload_delays_check()
