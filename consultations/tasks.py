from __future__ import annotations

from celery import shared_task

from consultations.services import consultations_expire_due


@shared_task(name="consultations.tasks.expire_unanswered_consultations")
def expire_unanswered_consultations() -> int:
    return consultations_expire_due()
