from __future__ import annotations

from celery import shared_task

from prescriptions.services import claims_release_idle, prescriptions_expire_due


@shared_task(name="prescriptions.tasks.expire_prescriptions")
def expire_prescriptions() -> int:
    return prescriptions_expire_due()


@shared_task(name="prescriptions.tasks.release_idle_claims")
def release_idle_claims() -> int:
    return claims_release_idle()
