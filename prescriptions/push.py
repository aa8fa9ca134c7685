"""Telling people about prescription changes, after commit (the database is the store).

On-duty pharmacists of the hospital see their review queue move on ``/ws/console/``;
the prescribing doctor sees their prescription change; the staff of the pharmacy that
holds the claim are told (a cancel requested while they hold it); the patient gets a
push when it becomes active, is rejected, ships or is delivered and they are not in the
app. Pharmacy systems without a socket read ``cancel_requested`` from the API.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from channels.layers import get_channel_layer
from django.db import transaction

from backend.compiled_queries import CompiledQuery
from backend.notifications.services import notify_if_away
from backend.organisations.models import PharmacyStaff, Practitioner, PractitionerKind
from backend.realtime import group_send_soon
from consultations.push import console_user_group
from prescriptions.models import Prescription, PrescriptionEvent, PrescriptionStatus

PATIENT_NOTICES = {
    "approve": "处方已审核通过，可选择取药方式",
    "reject": "处方未通过审核，医生将修改后重新开具",
    "dispense": "药品已调配",
    "ship": "药品已发出，可查看物流",
    "deliver": "药品已送达",
    "cancel": "处方已作废",
    "expire": "处方已过有效期",
}


def _frame(prescription: Prescription, event: PrescriptionEvent, status: str) -> dict[str, Any]:
    return {
        "type": "prescription.changed",
        "action": event.action,
        "prescription": {
            "id": str(prescription.pk),
            "status": status,
            "version": prescription.version,
            "consultation": str(prescription.consultation_id),
            "doctor": str(prescription.doctor_id),
            "patient_name": prescription.profile.real_name,
            "cancel_requested": prescription.cancel_requested_at is not None,
        },
    }


@dataclass(frozen=True)
class _Change:
    """One change as it stood when it was made (a later change in the same transaction
    does not rewrite what this one says)."""

    frame: dict[str, Any]
    action: str
    status: str
    hospital_id: Any
    doctor_user_id: Any
    account_id: Any
    prescription_id: Any
    pharmacy_id: Any


_held = threading.local()


@contextmanager
def together() -> Iterator[None]:
    """Changes made inside are told after commit in one go: who to tell is looked up
    once (a signature is two changes, ``sign`` and ``submit``). Nothing is told if the
    block raises, like a change whose transaction rolls back."""
    outer: list[_Change] | None = getattr(_held, "changes", None)
    changes: list[_Change] = []
    _held.changes = changes
    try:
        yield
    finally:
        _held.changes = outer
    if outer is not None:
        outer.extend(changes)
    elif changes:
        transaction.on_commit(lambda: _deliver(changes))


def after_change(
    prescription: Prescription, event: PrescriptionEvent, *, status: str | None = None
) -> None:
    """``status``: the status this change left (default: the prescription's now), when
    later changes told together have moved it on already."""
    status = status or prescription.status
    change = _Change(
        frame=_frame(prescription, event, status),
        action=event.action,
        status=status,
        hospital_id=prescription.hospital_id,
        # The row was locked with its doctor (``services._locked``): no query after commit.
        doctor_user_id=prescription.doctor.user_id,
        account_id=prescription.profile.account_id,
        prescription_id=prescription.pk,
        pharmacy_id=prescription.claimed_by_id or event.pharmacy_id or None,
    )
    held: list[_Change] | None = getattr(_held, "changes", None)
    if held is not None:
        held.append(change)
    else:
        transaction.on_commit(lambda: _deliver([change]))


_PHARMACISTS_ON_DUTY = CompiledQuery(
    lambda p: Practitioner.objects.filter(
        hospital_id=p.hospital, kind=PractitionerKind.PHARMACIST, on_duty=True
    ).values_list("user_id", flat=True),
    hospital=Practitioner._meta.get_field("hospital"),
)
_PHARMACY_STAFF = CompiledQuery(
    lambda p: PharmacyStaff.objects.filter(pharmacy_id=p.pharmacy).values_list(
        "user_id", flat=True
    ),
    pharmacy=PharmacyStaff._meta.get_field("pharmacy"),
)


def _recipients(change: _Change) -> set[Any]:
    recipients: set[Any] = set()
    if change.status != PrescriptionStatus.DRAFT:  # drafts are the doctor's own work
        recipients.update(_PHARMACISTS_ON_DUTY.all(hospital=change.hospital_id))
    recipients.add(change.doctor_user_id)
    if change.pharmacy_id is not None:
        recipients.update(_PHARMACY_STAFF.all(pharmacy=change.pharmacy_id))
    return recipients


def _deliver(changes: list[_Change]) -> None:
    layer = get_channel_layer()
    if layer is not None:
        # Changes told together are of one prescription, in order; the last one's
        # audience (status, pharmacy) is everyone who needs to hear any of them.
        recipients = sorted(_recipients(changes[-1]), key=str)
        group_send_soon(
            [
                (console_user_group(user_id), {"type": "console.event", "frame": change.frame})
                for change in changes
                for user_id in recipients
            ]
        )
    for change in changes:
        if change.action in PATIENT_NOTICES:
            notify_if_away(
                topic=f"prescription:{change.prescription_id}",
                user_ids=[change.account_id],
                title="处方状态更新",
                body=PATIENT_NOTICES[change.action],
                data={"prescription": str(change.prescription_id), "status": change.status},
            )
