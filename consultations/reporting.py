"""What the provincial platform receives about consultations (DOMAIN.md, "What the
regulator receives"): one record per lifecycle event, built here and handed to the
regulators outbox in the same transaction. The outbox knows nothing of consultations."""

from __future__ import annotations

from typing import Any

from django.utils import timezone

from backend.patients.models import PatientProfile, Relation
from consultations.models import Consultation, ConsultationEvent
from payments.models import OrderKind
from payments.selectors import order_amounts
from regulators.models import AlertKind
from regulators.services import alert_raise, outbox_append

#: Lifecycle actions reported, with the event name the platform sees.
REPORTED = {
    "enqueue": "requested",
    "accept": "accepted",
    "end": "ended",
    "refer_offline": "referred_offline",
    "refuse_first_visit": "first_visit_refused",
    "cancel": "cancelled",
    "expire": "expired",
}


def _time(value: Any) -> str | None:
    return timezone.localtime(value).isoformat() if value else None


def _person(profile: PatientProfile) -> dict[str, Any]:
    return {"name": profile.real_name, "id_type": profile.id_type, "id_number": profile.id_number}


def _guardian(profile: PatientProfile) -> dict[str, Any] | None:
    if profile.relation == Relation.SELF:
        return None
    holder = PatientProfile.objects.filter(
        account_id=profile.account_id, relation=Relation.SELF
    ).first()
    if holder is None:
        return {"relation": profile.relation}
    return {**_person(holder), "relation": profile.relation}


def consultation_payload(consultation: Consultation, event: str) -> dict[str, Any]:
    profile = consultation.profile
    prior = consultation.prior_diagnosis
    doctor = consultation.doctor
    note = consultation.note or {}
    payload: dict[str, Any] = {
        "consultation_id": str(consultation.pk),
        "event": event,
        "status": consultation.status,
        "kind": "follow_up",
        "mode": consultation.mode,
        "patient": {
            **_person(profile),
            "sex": profile.sex,
            "birth_date": profile.birth_date.isoformat(),
            "guardian": _guardian(profile),
        },
        "doctor": (
            {
                "name": doctor.user.display_name,
                "practice_certificate_number": doctor.practice_certificate_number,
            }
            if doctor is not None
            else None
        ),
        "department_code": consultation.department.code,
        "requested_at": _time(consultation.requested_at),
        "accepted_at": _time(consultation.accepted_at),
        "ended_at": _time(consultation.closed_at),
        "chief_complaint": str(note.get("chief_complaint") or consultation.complaint),
        "history": str(note.get("history", "")),
        "allergies": [str(a) for a in profile.allergies or []],
        "prior_diagnosis": {
            "institution": prior.institution,
            "diagnosed_on": prior.diagnosed_on.isoformat(),
            "icd10": prior.icd10_code,
            "name": prior.icd10_name,
            **({"document_sha256": prior.document_sha256} if prior.document_sha256 else {}),
        },
        "diagnoses": list(consultation.diagnoses or []),
        "end_reason": consultation.status_reason,
        "chat_record": f"consultation:{consultation.pk}:messages:1-{consultation.last_seq}",
        "fee": consultation.fee,
        "payment": order_amounts(kind=OrderKind.CONSULTATION_FEE, subject_id=consultation.pk),
    }
    return payload


def report_transition(consultation: Consultation, event: ConsultationEvent) -> None:
    """Called by the lifecycle service inside its transaction."""
    name = REPORTED.get(event.action)
    if name is None:
        return
    outbox_append(
        hospital=consultation.hospital,
        record_type=f"consultation.{name}",
        aggregate_type="consultation",
        aggregate_id=consultation.pk,
        occurred_at=event.created_at,
        payload=consultation_payload(consultation, name),
    )
    if event.action == "expire":
        alert_raise(
            hospital=consultation.hospital,
            kind=AlertKind.CONSULTATION_EXPIRED,
            rule="复诊请求超时无医生接诊 (consultation expired unanswered)",
            subject_type="consultation",
            subject_id=consultation.pk,
            details={"department": consultation.department.code},
        )
