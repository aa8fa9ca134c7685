"""Telling connected clients about changes, after the change is committed.

The channel layer is a doorbell, never the store: every frame sent here describes rows
that are already committed, and a client that missed it catches up from the database
(``sync`` on reconnect). Recipients are chosen from the database, not from group
membership: a consultation's own group reaches its open sockets; console frames go to
each on-duty doctor's personal group.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction

from backend.notifications.services import notify_if_away
from backend.organisations.models import Practitioner
from backend.realtime import group_send_soon
from consultations.models import Consultation, ConsultationEvent

#: What the patient is told on their phone when they are not in the chat (no health data).
STATE_NOTICES = {
    "accept": "医生已接诊，请进入问诊",
    "end": "问诊已结束，可查看诊断与医嘱",
    "refer_offline": "医生建议您到线下就诊",
    "refuse_first_visit": "本次问诊不符合复诊条件，请到线下就诊",
    "expire": "暂无医生接诊，问诊已过期",
}


def consultation_group(consultation_id: Any) -> str:
    return f"consultation.{consultation_id}"


def console_user_group(user_id: Any) -> str:
    # Must match console.consumers.account_group.
    return f"console.user.{user_id}"


def state_frame(consultation: Consultation) -> dict[str, Any]:
    return {
        "type": "consultation.state",
        "status": consultation.status,
        "reason": consultation.status_reason,
    }


def queue_item(consultation: Consultation) -> dict[str, Any]:
    return {
        "id": str(consultation.pk),
        "status": consultation.status,
        "department": str(consultation.department_id),
        "requested_doctor": (
            str(consultation.requested_doctor_id) if consultation.requested_doctor_id else None
        ),
        "doctor": str(consultation.doctor_id) if consultation.doctor_id else None,
        "patient_name": consultation.profile.real_name,
        "requested_at": consultation.requested_at.isoformat(),
        "expires_at": consultation.expires_at.isoformat(),
    }


def console_recipients(consultation: Consultation) -> list[Any]:
    """Account ids of the doctors who should see this consultation move in their queue."""
    doctors = Practitioner.objects.filter(on_duty=True, hospital_id=consultation.hospital_id)
    if consultation.requested_doctor_id:
        doctors = doctors.filter(pk=consultation.requested_doctor_id)
    else:
        doctors = doctors.filter(department_id=consultation.department_id)
    ids = set(doctors.values_list("user_id", flat=True))
    if consultation.doctor_id:
        ids.add(
            Practitioner.objects.values_list("user_id", flat=True).get(pk=consultation.doctor_id)
        )
    return sorted(ids, key=str)


def after_transition(consultation: Consultation, event: ConsultationEvent) -> None:
    state = state_frame(consultation)
    queue = {
        "type": "queue.changed",
        "action": event.action,
        "consultation": queue_item(consultation),
    }
    consultation_id = consultation.pk

    account_id = consultation.account_id

    def deliver() -> None:
        fresh = Consultation.objects.select_related("profile").get(pk=consultation_id)
        group_send_soon(
            [
                (
                    consultation_group(consultation_id),
                    {"type": "consultation.push", "frame": state},
                ),
                *(
                    (console_user_group(user_id), {"type": "console.event", "frame": queue})
                    for user_id in console_recipients(fresh)
                ),
            ]
        )
        if event.action in STATE_NOTICES:
            notify_if_away(
                topic=f"consultation:{consultation_id}",
                user_ids=[account_id],
                title="问诊状态更新",
                body=STATE_NOTICES[event.action],
                data={"consultation": str(consultation_id), "status": state["status"]},
            )

    transaction.on_commit(deliver)
