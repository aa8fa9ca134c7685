"""Telling people about prescription changes, after commit (the database is the store).

On-duty pharmacists of the hospital see their review queue move on ``/ws/console/``;
the prescribing doctor sees their prescription change; the staff of the pharmacy that
holds the claim are told (a cancel requested while they hold it); the patient gets a
push when it becomes active, is rejected, ships or is delivered and they are not in the
app. Pharmacy systems without a socket read ``cancel_requested`` from the API.
"""

from __future__ import annotations

from typing import Any

from channels.layers import get_channel_layer
from django.db import transaction

from backend.notifications.services import notify_if_away
from backend.organisations.models import PharmacyStaff, Practitioner, PractitionerKind
from backend.realtime import group_send
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


def _frame(prescription: Prescription, event: PrescriptionEvent) -> dict[str, Any]:
    return {
        "type": "prescription.changed",
        "action": event.action,
        "prescription": {
            "id": str(prescription.pk),
            "status": prescription.status,
            "version": prescription.version,
            "consultation": str(prescription.consultation_id),
            "doctor": str(prescription.doctor_id),
            "patient_name": prescription.profile.real_name,
            "cancel_requested": prescription.cancel_requested_at is not None,
        },
    }


def after_change(prescription: Prescription, event: PrescriptionEvent) -> None:
    frame = _frame(prescription, event)
    hospital_id = prescription.hospital_id
    # The row was locked with its doctor (``services._locked``): no query after commit.
    doctor_user_id = prescription.doctor.user_id
    account_id = prescription.profile.account_id
    prescription_id = prescription.pk
    status = prescription.status
    pharmacy_id = prescription.claimed_by_id or (event.pharmacy_id if event.pharmacy_id else None)

    def deliver() -> None:
        layer = get_channel_layer()
        if layer is not None:
            recipients: set[Any] = set()
            if status != PrescriptionStatus.DRAFT:  # drafts are the doctor's own work
                recipients.update(
                    Practitioner.objects.filter(
                        hospital_id=hospital_id, kind=PractitionerKind.PHARMACIST, on_duty=True
                    ).values_list("user_id", flat=True)
                )
            recipients.add(doctor_user_id)
            if pharmacy_id is not None:
                recipients.update(
                    PharmacyStaff.objects.filter(pharmacy_id=pharmacy_id).values_list(
                        "user_id", flat=True
                    )
                )
            for user_id in sorted(recipients, key=str):
                group_send(console_user_group(user_id), {"type": "console.event", "frame": frame})
        if event.action in PATIENT_NOTICES:
            notify_if_away(
                topic=f"prescription:{prescription_id}",
                user_ids=[account_id],
                title="处方状态更新",
                body=PATIENT_NOTICES[event.action],
                data={"prescription": str(prescription_id), "status": status},
            )

    transaction.on_commit(deliver)
