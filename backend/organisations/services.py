"""Practitioners' working state: identity checks and the duty switch."""

from __future__ import annotations

import datetime as dt

from django.db import transaction
from django.utils import timezone

from backend.api.problems import DomainError
from backend.audit.services import RequestMeta, audit_record
from backend.organisations.identity_check import IdentityCheckOutcome, identity_provider
from backend.organisations.models import FilingStatus, Hospital, Practitioner


def practitioner_licence_problems(
    practitioner: Practitioner, *, hospital: Hospital, today: dt.date
) -> list[str]:
    """What keeps a practitioner from acting for ``hospital`` on ``today``: not filed
    there, their practice licence or the hospital's expired (DOMAIN rules 1 and 6).
    Empty when they may act."""
    problems = []
    if practitioner.filing_status != FilingStatus.FILED:
        problems.append(f"filing status is {practitioner.filing_status}, not filed")
    if practitioner.licence_valid_until < today:
        problems.append(f"practice licence expired on {practitioner.licence_valid_until}")
    if hospital.practice_licence_valid_until < today:
        problems.append("the hospital's practice licence has expired")
    return problems


def practitioner_identity_check(
    *, practitioner: Practitioner, meta: RequestMeta | None = None
) -> IdentityCheckOutcome:
    """Run the configured identity provider; on success record the time of the check."""
    outcome = identity_provider().check(practitioner=practitioner)
    with transaction.atomic():
        if outcome.passed:
            practitioner.last_identity_check_at = timezone.now()
            practitioner.save(update_fields=["last_identity_check_at"])
        audit_record(
            action="practitioner.identity_check",
            actor=practitioner.user,
            object_type="practitioner",
            object_id=practitioner.pk,
            after={
                "passed": outcome.passed,
                "provider": outcome.provider,
                "reference": outcome.reference,
            },
            meta=meta,
        )
    return outcome


def practitioner_set_duty(
    *, practitioner: Practitioner, on_duty: bool, meta: RequestMeta | None = None
) -> Practitioner:
    if practitioner.filing_status != "filed" and on_duty:
        raise DomainError("doctor_not_qualified", "Only a filed practitioner can go on duty.")
    with transaction.atomic():
        before = practitioner.on_duty
        Practitioner.objects.filter(pk=practitioner.pk).update(on_duty=on_duty)
        practitioner.on_duty = on_duty
        audit_record(
            action="practitioner.duty",
            actor=practitioner.user,
            object_type="practitioner",
            object_id=practitioner.pk,
            before={"on_duty": before},
            after={"on_duty": on_duty},
            meta=meta,
        )
    return practitioner
