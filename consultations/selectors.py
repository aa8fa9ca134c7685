"""Reads of the consultations context, each scoped to who is asking."""

from __future__ import annotations

from uuid import UUID

from django.db.models import Q, QuerySet

from backend.api.problems import DomainError
from backend.identity.models import Role, User
from backend.organisations.models import Practitioner
from consultations.lifecycle import QUEUED
from consultations.models import Consultation, Icd10Code, Message, PriorDiagnosis

_RELATED = (
    "profile",
    "hospital",
    "department",
    "doctor__user",
    "requested_doctor__user",
    "prior_diagnosis",
)


def consultations_of_account(*, account: User) -> QuerySet[Consultation]:
    return Consultation.objects.filter(account=account).select_related(*_RELATED)


def consultations_of_doctor(
    *, practitioner: Practitioner, status: str | None = None
) -> QuerySet[Consultation]:
    """The doctor's queue (waiting in their department or asked of them) and their own."""
    queue = Q(status__in=QUEUED, hospital_id=practitioner.hospital_id) & (
        Q(requested_doctor=practitioner)
        | Q(requested_doctor__isnull=True, department_id=practitioner.department_id)
    )
    qs = Consultation.objects.filter(queue | Q(doctor=practitioner)).select_related(*_RELATED)
    if status:
        qs = qs.filter(status=status)
    return qs


def consultation_visible_to(*, user: User, consultation_id: UUID | str) -> Consultation:
    """The consultation if ``user`` may see it: its account (patient or guardian), its
    doctor, or a doctor whose queue holds it. Otherwise 404 (no existence leak)."""
    consultation = Consultation.objects.select_related(*_RELATED).filter(pk=consultation_id).first()
    if consultation is None or not consultation_can_view(user=user, consultation=consultation):
        raise DomainError("not_found", "No such consultation.")
    return consultation


def consultation_can_view(*, user: User, consultation: Consultation) -> bool:
    if consultation.account_id == user.pk:
        return True
    if user.role != Role.DOCTOR:
        return False
    practitioner = Practitioner.objects.filter(user=user).first()
    if practitioner is None or practitioner.hospital_id != consultation.hospital_id:
        return False
    if consultation.doctor_id == practitioner.pk:
        return True
    return consultation.status in QUEUED and (
        consultation.requested_doctor_id == practitioner.pk
        or (
            consultation.requested_doctor_id is None
            and consultation.department_id == practitioner.department_id
        )
    )


def consultation_participant_ids(*, consultation: Consultation) -> set[str]:
    """Accounts that may open the consultation's WebSocket (CONTRACT section 3)."""
    ids = {str(consultation.account_id)}
    if consultation.doctor_id:
        # One query unless the caller loaded the doctor with select_related("doctor").
        ids.add(str(consultation.doctor.user_id))  # type: ignore[union-attr]
    return ids


def messages_after(
    *, consultation: Consultation, after_seq: int, limit: int = 500
) -> list[Message]:
    return list(
        Message.objects.filter(consultation=consultation, seq__gt=after_seq)
        .select_related("attachment")
        .order_by("seq")[:limit]
    )


def prior_diagnoses_of_account(*, account: User) -> QuerySet[PriorDiagnosis]:
    return PriorDiagnosis.objects.filter(profile__account=account).select_related("profile")


def earlier_consultations(*, consultation: Consultation, limit: int = 10) -> list[Consultation]:
    """The same patient's other consultations at the same hospital, newest first (the
    caller has already been allowed to see ``consultation``)."""
    return list(
        Consultation.objects.filter(
            profile_id=consultation.profile_id, hospital_id=consultation.hospital_id
        )
        .exclude(pk=consultation.pk)
        .select_related("department", "doctor__user")
        .order_by("-requested_at")[:limit]
    )


def icd10_search(*, query: str) -> QuerySet[Icd10Code]:
    """Codes that start with ``query`` or whose Chinese or English name contains it."""
    query = query.strip()
    if not query:
        return Icd10Code.objects.none()
    return Icd10Code.objects.filter(
        Q(code__istartswith=query) | Q(name_zh__icontains=query) | Q(name_en__icontains=query)
    )
