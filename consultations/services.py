"""Writes of the consultations context: prior diagnoses, requests and every lifecycle
transition. Each transition goes through ``_transition``: row lock, the transition
table, an event row, an audit event, and the pushes scheduled after commit."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from django.conf import settings
from django.core.files.uploadedfile import UploadedFile
from django.db import transaction
from django.utils import timezone

from backend.api.problems import DomainError
from backend.api.uploads import DOCUMENT_TYPES, upload_inspect
from backend.audit.services import RequestMeta, audit_record
from backend.identity.models import User
from backend.organisations.models import (
    Department,
    Practitioner,
    PractitionerKind,
)
from backend.organisations.services import practitioner_licence_problems
from backend.patients.models import PatientProfile
from consultations import billing, messaging, push, reporting
from consultations.lifecycle import CLOSED, TRANSITIONS
from consultations.models import (
    Consultation,
    ConsultationEvent,
    ConsultationMode,
    ConsultationStatus,
    Icd10Code,
    PriorDiagnosis,
)

#: WHO/CM codes (E11.9) and the national clinical edition's longer ones (I10.x00x002).
_ICD10 = re.compile(r"[A-Z][0-9]{2}(\.[0-9A-Zx]{1,8})?")


# --- ICD-10 ------------------------------------------------------------------------------


def icd10_resolve(*, code: str) -> Icd10Code:
    """The table entry for ``code``; a national extension (``I10.x00``) not in the table
    is accepted under its known parent category and named after it."""
    category, dot, suffix = code.strip().partition(".")
    # National clinical-edition extensions write a lower-case x placeholder (I10.x00).
    code = category.upper() + dot + suffix.upper().replace("X", "x")
    if not _ICD10.fullmatch(code):
        raise DomainError("invalid_icd10", f"{code!r} is not an ICD-10 code (e.g. I10, E11.9).")
    known = Icd10Code.objects.filter(code=code).first()
    if known is not None:
        return known
    # The longest known prefix names an extension code (I10.x00x002 → I10.x00 → I10).
    prefixes = [code[:n] for n in range(len(code) - 1, 2, -1) if code[n - 1] != "."]
    parent = Icd10Code.objects.filter(code__in=prefixes).order_by("-code").first()
    if parent is not None:
        return Icd10Code(
            code=code, name_zh=parent.name_zh, name_en=parent.name_en, kind="extension"
        )
    raise DomainError("invalid_icd10", f"{code} is not in the ICD-10 table.")


# --- Prior diagnoses (records) -------------------------------------------------------------


def _own_profile(*, account: User, profile: PatientProfile) -> None:
    if profile.account_id != account.pk:
        raise DomainError("not_found", "No such patient profile on this account.")


def prior_diagnosis_create(
    *,
    account: User,
    profile: PatientProfile,
    institution: str,
    diagnosed_on: dt.date,
    icd10_code: str,
    diagnosis_text: str = "",
    document: UploadedFile | None = None,
    meta: RequestMeta | None = None,
) -> PriorDiagnosis:
    _own_profile(account=account, profile=profile)
    if diagnosed_on > timezone.localdate():
        raise DomainError(
            "validation_error",
            "The diagnosis date is in the future.",
            errors={"diagnosed_on": ["Must not be in the future."]},
        )
    entry = icd10_resolve(code=icd10_code)
    record = PriorDiagnosis(
        profile=profile,
        institution=institution.strip(),
        diagnosed_on=diagnosed_on,
        icd10_code=entry.code,
        icd10_name=entry.display_name,
        diagnosis_text=diagnosis_text.strip(),
        created_by=account,
    )
    if document is not None:
        inspected = upload_inspect(
            upload=document, allowed=DOCUMENT_TYPES, max_bytes=settings.UPLOAD_MAX_BYTES
        )
        record.document_content_type = inspected.content_type
        record.document_size = inspected.size
        record.document_sha256 = inspected.sha256
    with transaction.atomic():
        if document is not None:
            extension = {"application/pdf": "pdf", "image/jpeg": "jpg", "image/png": "png"}
            record.document.save(
                f"{record.pk}.{extension[record.document_content_type]}", document, save=False
            )
        record.save()
        audit_record(
            action="prior_diagnosis.created",
            actor=account,
            object_type="prior_diagnosis",
            object_id=record.pk,
            after={
                "profile": str(profile.pk),
                "icd10": record.icd10_code,
                "institution": record.institution,
                "document": bool(document),
            },
            meta=meta,
        )
    return record


# --- Qualification -------------------------------------------------------------------------


def practitioner_qualification_check(*, practitioner: Practitioner) -> None:
    """DOMAIN rule 1: valid licence, ≥3 years of practice, filed here, checked today."""
    today = timezone.localdate()
    problems = []
    if practitioner.kind != PractitionerKind.DOCTOR:
        problems.append("not a doctor")
    problems.extend(
        practitioner_licence_problems(practitioner, hospital=practitioner.hospital, today=today)
    )
    years = settings.DOCTOR_MIN_PRACTICE_YEARS
    try:
        threshold = today.replace(year=today.year - years)
    except ValueError:  # 29 February
        threshold = today.replace(year=today.year - years, day=28)
    if practitioner.practice_start_date > threshold:
        problems.append(f"fewer than {years} years of independent practice")
    if not practitioner.user.is_active:
        problems.append("the account is disabled")
    if problems:
        raise DomainError(
            "doctor_not_qualified",
            "Not qualified: " + "; ".join(problems) + ".",
            extra={"reasons": problems},
        )
    checked = practitioner.last_identity_check_at
    max_age = settings.DOCTOR_IDENTITY_CHECK_MAX_AGE_SECONDS
    now = timezone.now()
    if checked is None:
        fresh = False
    elif max_age:
        fresh = (now - checked).total_seconds() <= max_age
    else:
        fresh = timezone.localdate(checked) == today
    if not fresh:
        raise DomainError(
            "identity_check_required",
            "Complete today's identity check before accepting consultations.",
        )


# --- Requests and transitions ---------------------------------------------------------------


@dataclass(frozen=True)
class _Actor:
    user: User | None
    role: str


def _locked(consultation_id: UUID | str) -> Consultation:
    found = (
        Consultation.objects.select_for_update(of=("self",))
        .select_related("profile", "prior_diagnosis", "department", "hospital", "doctor__user")
        .filter(pk=consultation_id)
        .first()
    )
    if found is None:
        raise DomainError("not_found", "No such consultation.")
    return found


def _transition(
    consultation: Consultation,
    action: str,
    *,
    actor: User | None,
    reason: str = "",
    data: dict[str, Any] | None = None,
    changes: dict[str, Any] | None = None,
    meta: RequestMeta | None = None,
) -> ConsultationEvent:
    """The one place a consultation changes status. Call with the row locked."""
    transition = TRANSITIONS[action]
    source = consultation.status
    if source not in transition.sources:
        raise DomainError(
            "consultation_state_conflict",
            f"Cannot {action.replace('_', ' ')} a consultation that is {source}.",
            extra={"consultation_status": source},
        )
    now = timezone.now()
    if source == ConsultationStatus.IN_PROGRESS and transition.target != source:
        messaging.call_end_with_consultation(consultation, actor=actor)
    consultation.status = transition.target
    if reason:
        consultation.status_reason = reason
    for field, value in (changes or {}).items():
        setattr(consultation, field, value)
    if transition.target in CLOSED:
        consultation.closed_at = now
    consultation.save()
    event = ConsultationEvent.objects.create(
        consultation=consultation,
        action=action,
        from_status=source,
        to_status=transition.target,
        actor=actor,
        reason=reason,
        data=data or {},
        created_at=now,
    )
    audit_record(
        action=f"consultation.{action}",
        actor=actor,
        object_type="consultation",
        object_id=consultation.pk,
        before={"status": source},
        after={"status": transition.target, "reason": reason, **(data or {})},
        meta=meta,
    )
    # The order (closed, refunded, opened post-paid) and then the regulator record, in
    # this same transaction, so the record carries the money (the outbox delivers after).
    billing.after_transition(consultation, event)
    reporting.report_transition(consultation, event)
    push.after_transition(consultation, event)
    return event


def consultation_request(
    *,
    account: User,
    profile: PatientProfile,
    department: Department,
    doctor: Practitioner | None = None,
    prior_diagnosis: PriorDiagnosis | None = None,
    complaint: str = "",
    mode: str = ConsultationMode.TEXT,
    meta: RequestMeta | None = None,
) -> Consultation:
    """A patient (or guardian) asks for a follow-up: needs a prior offline diagnosis."""
    _own_profile(account=account, profile=profile)
    if department.hospital.practice_licence_valid_until < timezone.localdate():
        raise DomainError(
            "validation_error",
            "This hospital cannot take consultations: its practice licence has expired.",
            errors={"department": ["The hospital's practice licence has expired."]},
        )
    if not department.is_active:
        raise DomainError(
            "validation_error",
            "This department takes no consultations.",
            errors={"department": ["Not taking consultations."]},
        )
    if doctor is not None and (
        doctor.department_id != department.pk or doctor.kind != PractitionerKind.DOCTOR
    ):
        raise DomainError(
            "validation_error",
            "The doctor does not work in this department.",
            errors={"doctor": ["Not a doctor of this department."]},
        )
    if prior_diagnosis is None:
        prior_diagnosis = (
            PriorDiagnosis.objects.filter(profile=profile).order_by("-diagnosed_on").first()
        )
    if prior_diagnosis is None:
        raise DomainError(
            "first_visit_forbidden",
            "Register the diagnosis you received at a hospital first: online visits are "
            "follow-ups only.",
        )
    if prior_diagnosis.profile_id != profile.pk:
        raise DomainError(
            "validation_error",
            "That diagnosis belongs to another profile.",
            errors={"prior_diagnosis": ["Not a record of this patient."]},
        )
    fee = billing.listed_fee(department=department, doctor=doctor)
    now = timezone.now()
    with transaction.atomic():
        # Serialise requests of one profile so that two taps do not open two consultations.
        PatientProfile.objects.select_for_update().filter(pk=profile.pk).first()
        open_statuses = [s for s in ConsultationStatus.values if s not in CLOSED]
        if Consultation.objects.filter(
            profile=profile, hospital=department.hospital_id, status__in=open_statuses
        ).exists():
            raise DomainError("consultation_already_open")
        consultation = Consultation.objects.create(
            profile=profile,
            account=account,
            hospital_id=department.hospital_id,
            department=department,
            requested_doctor=doctor,
            prior_diagnosis=prior_diagnosis,
            mode=mode,
            status=ConsultationStatus.REQUESTED,
            complaint=complaint.strip(),
            fee=fee,
            requested_at=now,
            expires_at=now + dt.timedelta(minutes=settings.CONSULTATION_EXPIRE_MINUTES),
        )
        ConsultationEvent.objects.create(
            consultation=consultation,
            action="request",
            from_status="",
            to_status=ConsultationStatus.REQUESTED,
            actor=account,
            created_at=now,
            data={"prior_diagnosis": str(prior_diagnosis.pk)},
        )
        audit_record(
            action="consultation.request",
            actor=account,
            object_type="consultation",
            object_id=consultation.pk,
            after={
                "status": consultation.status,
                "department": str(department.pk),
                "doctor": str(doctor.pk) if doctor else None,
                "prior_diagnosis": str(prior_diagnosis.pk),
            },
            meta=meta,
        )
        # With a fee it waits, out of every queue, until it is paid (consultation_paid).
        if not billing.order_open_for_request(consultation):
            _transition(consultation, "enqueue", actor=None, meta=meta)
    return consultation


def consultation_paid(*, consultation_id: UUID | str) -> bool:
    """Its fee order is paid: a consultation waiting for payment joins the queue.
    Answers whether it still takes the money (False once cancelled or expired)."""
    consultation = _locked(consultation_id)
    if consultation.status == ConsultationStatus.REQUESTED:
        _transition(consultation, "enqueue", actor=None, data={"paid": True})
        return True
    return consultation.status in (
        ConsultationStatus.WAITING,
        ConsultationStatus.IN_PROGRESS,
        ConsultationStatus.ENDED,
    )


def _doctor_of(user: User) -> Practitioner:
    practitioner = (
        Practitioner.objects.select_related("hospital", "user")
        .filter(user=user, kind=PractitionerKind.DOCTOR)
        .first()
    )
    if practitioner is None:
        raise DomainError("permission_denied", "Only doctors can do this.")
    return practitioner


def _treating(consultation: Consultation, practitioner: Practitioner) -> None:
    if consultation.hospital_id != practitioner.hospital_id:
        raise DomainError("outside_hospital")
    if consultation.doctor_id != practitioner.pk:
        raise DomainError("not_a_participant", "Only the doctor who accepted it may do this.")


def consultation_accept(
    *,
    consultation_id: UUID | str,
    user: User,
    follow_up_confirmed: bool,
    meta: RequestMeta | None = None,
) -> Consultation:
    doctor = _doctor_of(user)
    if not follow_up_confirmed:
        raise DomainError(
            "follow_up_not_confirmed",
            "Confirm it is a follow-up, or refuse it as a first visit.",
        )
    practitioner_qualification_check(practitioner=doctor)
    with transaction.atomic():
        consultation = _locked(consultation_id)
        if consultation.hospital_id != doctor.hospital_id:
            raise DomainError("outside_hospital")
        if consultation.status == ConsultationStatus.IN_PROGRESS:
            raise DomainError("already_accepted")
        if consultation.requested_doctor_id not in (None, doctor.pk) or (
            consultation.requested_doctor_id is None
            and consultation.department_id != doctor.department_id
        ):
            raise DomainError("not_your_queue")
        _transition(
            consultation,
            "accept",
            actor=user,
            meta=meta,
            changes={"doctor": doctor, "accepted_at": timezone.now()},
            data={"doctor": str(doctor.pk), "follow_up_confirmed": True},
        )
    return consultation


def _validated_diagnoses(diagnoses: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if not diagnoses:
        raise DomainError(
            "validation_error",
            "At least one diagnosis is required.",
            errors={"diagnoses": ["At least one diagnosis is required."]},
        )
    cleaned = []
    for item in diagnoses:
        entry = icd10_resolve(code=str(item.get("icd10", "")))
        cleaned.append(
            {
                "icd10": entry.code,
                "name": (item.get("name") or entry.display_name),
                "main": bool(item.get("main")),
            }
        )
    mains = sum(1 for d in cleaned if d["main"])
    if mains == 0:
        cleaned[0]["main"] = True
    elif mains > 1:
        raise DomainError(
            "validation_error",
            "Exactly one diagnosis is the main one.",
            errors={"diagnoses": ["Mark exactly one diagnosis as main."]},
        )
    return cleaned


def consultation_end(
    *,
    consultation_id: UUID | str,
    user: User,
    diagnoses: list[dict[str, Any]],
    note: dict[str, str],
    fee: int,
    meta: RequestMeta | None = None,
) -> Consultation:
    doctor = _doctor_of(user)
    cleaned = _validated_diagnoses(diagnoses)
    if fee < 0:
        raise DomainError(
            "validation_error",
            "The fee cannot be negative.",
            errors={"fee": ["Must be zero or more fen."]},
        )
    with transaction.atomic():
        consultation = _locked(consultation_id)
        _treating(consultation, doctor)
        billing.end_fee_check(consultation, fee)
        _transition(
            consultation,
            "end",
            actor=user,
            meta=meta,
            changes={"diagnoses": cleaned, "note": note, "fee": fee},
            data={"diagnoses": cleaned, "fee": fee},
        )
    return consultation


def consultation_refer_offline(
    *, consultation_id: UUID | str, user: User, reason: str, meta: RequestMeta | None = None
) -> Consultation:
    doctor = _doctor_of(user)
    with transaction.atomic():
        consultation = _locked(consultation_id)
        _treating(consultation, doctor)
        _transition(consultation, "refer_offline", actor=user, reason=reason, meta=meta)
    return consultation


def consultation_refuse_first_visit(
    *, consultation_id: UUID | str, user: User, reason: str, meta: RequestMeta | None = None
) -> Consultation:
    """The doctor finds the visit is not a follow-up: from the queue or during it. It is a
    medical decision, so the same qualification as accepting is required."""
    doctor = _doctor_of(user)
    practitioner_qualification_check(practitioner=doctor)
    with transaction.atomic():
        consultation = _locked(consultation_id)
        if consultation.hospital_id != doctor.hospital_id:
            raise DomainError("outside_hospital")
        if consultation.status == ConsultationStatus.IN_PROGRESS:
            _treating(consultation, doctor)
        elif consultation.requested_doctor_id not in (None, doctor.pk) or (
            consultation.requested_doctor_id is None
            and consultation.department_id != doctor.department_id
        ):
            raise DomainError("not_your_queue")
        _transition(
            consultation,
            "refuse_first_visit",
            actor=user,
            reason=reason,
            meta=meta,
            changes={"doctor": consultation.doctor or doctor},
        )
    return consultation


def consultation_cancel(
    *,
    consultation_id: UUID | str,
    account: User,
    reason: str = "",
    meta: RequestMeta | None = None,
) -> Consultation:
    with transaction.atomic():
        consultation = _locked(consultation_id)
        if consultation.account_id != account.pk:
            raise DomainError("not_found", "No such consultation.")
        _transition(
            consultation,
            "cancel",
            actor=account,
            reason=reason or "cancelled by the patient",
            meta=meta,
        )
    return consultation


def consultations_expire_due(*, now: dt.datetime | None = None, limit: int = 500) -> int:
    """Expire every consultation nobody accepted in time. Safe to run concurrently."""
    now = now or timezone.now()
    due = list(
        Consultation.objects.filter(
            status__in=TRANSITIONS["expire"].sources, expires_at__lte=now
        ).values_list("pk", flat=True)[:limit]
    )
    expired = 0
    for pk in due:
        with transaction.atomic():
            consultation = _locked(pk)
            if (
                consultation.status not in TRANSITIONS["expire"].sources
                or consultation.expires_at > now
            ):
                continue
            _transition(consultation, "expire", actor=None, reason="no doctor accepted it in time")
            expired += 1
    return expired
