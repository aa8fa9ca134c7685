"""Writes of the prescriptions context: drafts, the doctor's signature, the pharmacist's
review, a pharmacy's claim, dispense and delivery, cancel and expiry.

Every status change goes through ``_transition``: the row is locked, the move is checked
against ``prescriptions.lifecycle.TRANSITIONS``, and an event row, an audit event and
the after-commit pushes are written. The regulator hook (issue 7) is marked there.
"""

from __future__ import annotations

import datetime as dt
import hmac
import json
import secrets
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, TypeVar
from uuid import UUID

from django.conf import settings
from django.db import transaction
from django.db.models import F, Model, Q, QuerySet
from django.utils import timezone

from backend.api.problems import DomainError
from backend.audit.services import (
    AuditEntry,
    RequestMeta,
    audit_record,
    audit_records,
    audit_together,
)
from backend.compiled_queries import CompiledQuery, CompiledVariants
from backend.identity.models import Role, User
from backend.organisations.models import (
    Hospital,
    Pharmacy,
    PharmacyStaff,
    Practitioner,
    PractitionerKind,
)
from backend.organisations.services import practitioner_licence_problems
from backend.pki.services import (
    SigningAct,
    seal_sign,
    signature_create,
    signing_act_authorise,
)
from consultations.lifecycle import CLOSED as CONSULTATION_CLOSED
from consultations.models import Consultation, ConsultationStatus
from prescriptions import billing, push, reporting, rules
from prescriptions.lifecycle import BEFORE_REVIEW, CLOSED, TRANSITIONS
from prescriptions.models import (
    AccessCodeFailure,
    ControlledDrugAttempt,
    DispenseEntry,
    Drug,
    Fulfilment,
    Prescription,
    PrescriptionEvent,
    PrescriptionLine,
    PrescriptionStatus,
    PrescriptionVersion,
)
from prescriptions.selectors import lines_hold, lines_read
from prescriptions.signing import (
    PRIVATE_KEYS,
    canonical,
    prescription_bundle,
    prescription_content,
    receipt,
    review_statement,
    sealed_receipt,
)
from prescriptions.verify import VerificationError, verify_bundle

S = PrescriptionStatus
M = TypeVar("M", bound=Model)


# --- Locks and the one transition -------------------------------------------------------------


#: The locking read of ``_locked``, per set of relations read with it.
_LOCKED: CompiledVariants[tuple[str, ...], Prescription] = CompiledVariants(
    lambda also: CompiledQuery(
        lambda p: (
            Prescription.objects.select_for_update(of=("self",))
            .select_related("profile", "doctor__user", "doctor__department", "hospital", *also)
            .filter(pk=p.id)[:1]
        ),
        id=Prescription._meta.pk,
    )
)


def _locked(prescription_id: UUID | str, *also: str) -> Prescription:
    """The prescription, row-locked, with what transitions read (``also``: more
    relations the caller needs, read in the same statement)."""
    found = _LOCKED[also].first(id=prescription_id)
    if found is None:
        raise DomainError("not_found", "No such prescription.")
    return found


@dataclass(frozen=True)
class Step:
    """One move of a prescription's status (see ``_transitions``)."""

    action: str
    actor: User | None
    pharmacy: Pharmacy | None = None
    reason: str = ""
    data: dict[str, Any] | None = None
    changes: dict[str, Any] | None = None


def _transition(
    prescription: Prescription,
    action: str,
    *,
    actor: User | None,
    pharmacy: Pharmacy | None = None,
    reason: str = "",
    data: dict[str, Any] | None = None,
    changes: dict[str, Any] | None = None,
    meta: RequestMeta | None = None,
) -> PrescriptionEvent:
    """The one place a prescription changes status. Call with the row locked."""
    step = Step(action, actor, pharmacy, reason, data, changes)
    return _transitions(prescription, [step], meta=meta)[0]


#: Who an account acts as in the transition table; a move without an account is the
#: system's (a periodic job, or one that follows another in the same transaction).
_ACTOR_KINDS = {
    Role.DOCTOR: "doctor",
    Role.PHARMACIST: "pharmacist",
    Role.PHARMACY_STAFF: "pharmacy",
    Role.PATIENT: "patient",
}


def _actor_kind(actor: User | None) -> str:
    return "system" if actor is None else _ACTOR_KINDS.get(Role(actor.role), str(actor.role))


def _transitions(
    prescription: Prescription, steps: list[Step], *, meta: RequestMeta | None = None
) -> list[PrescriptionEvent]:
    """Moves made together (signing is ``sign`` then ``submit``): each checked against
    the transition table (from the status the one before left, and by whom), each with
    its event row, audit event, regulator record and push; written with one update of
    the row, one insert of the events and one append to the audit chain. Call with the
    row locked."""
    now = timezone.now()
    fields = {"status", "status_reason", "updated_at"}
    events: list[PrescriptionEvent] = []
    entries: list[AuditEntry] = []
    for step in steps:
        transition = TRANSITIONS[step.action]
        source = prescription.status
        if source not in transition.sources:
            raise _state_error(prescription, step.action)
        actor = _actor_kind(step.actor)
        if actor not in transition.actors:
            raise DomainError(
                "permission_denied", f"A {actor} account cannot {step.action} a prescription."
            )
        prescription.status = transition.target
        prescription.status_reason = step.reason
        for name, value in (step.changes or {}).items():
            setattr(prescription, name, value)
        fields.update(step.changes or {})
        events.append(
            PrescriptionEvent(
                prescription=prescription,
                action=step.action,
                from_status=source,
                to_status=transition.target,
                actor=step.actor,
                pharmacy=step.pharmacy,
                reason=step.reason,
                data=step.data or {},
                created_at=now,
            )
        )
        entries.append(
            AuditEntry(
                action=f"prescription.{step.action}",
                actor=step.actor,
                object_type="prescription",
                object_id=prescription.pk,
                before={"status": source},
                after={
                    "status": transition.target,
                    "version": prescription.version,
                    "reason": step.reason,
                    "pharmacy": step.pharmacy.code if step.pharmacy else None,
                    **(step.data or {}),
                },
            )
        )
    # Only what the transitions change (not every column, with its encrypted ones).
    prescription.save(update_fields=sorted(fields))
    PrescriptionEvent.objects.bulk_create(events)
    # One append for the moves' events and those of what follows them (the order an
    # approval opens), and one lookup of who to tell.
    with audit_together(), push.together():
        audit_records(entries, meta=meta)
        for event in events:
            # The order (opened on approval, closed or refunded) and then the regulator
            # record, in this same transaction, so the record carries the money
            # (delivered after commit).
            billing.after_transition(prescription, event)
            reporting.report_transition(prescription, event)
            push.after_change(prescription, event, status=event.to_status)
    return events


def _state_error(prescription: Prescription, action: str) -> DomainError:
    status = prescription.status
    if status == S.CANCELLED:
        return DomainError("prescription_cancelled")
    if status == S.EXPIRED:
        return DomainError("prescription_expired")
    if action in ("claim", "dispense", "release") and status in BEFORE_REVIEW:
        return DomainError("not_reviewed")
    if action == "claim" and status == S.CLAIMED:
        return DomainError("already_claimed")
    if action in ("approve", "reject") and status in (S.DRAFT, S.SIGNED):
        return DomainError("signature_required", "The doctor has not signed it.")
    return DomainError(
        "prescription_state_conflict",
        f"Cannot {action} a prescription that is {status.replace('_', ' ')}.",
        extra={"prescription_status": status},
    )


# --- Who may act ----------------------------------------------------------------------------


#: ``_practitioner``'s read, per set of relations read with it.
_PRACTITIONER: CompiledVariants[tuple[str, ...], Practitioner] = CompiledVariants(
    lambda related: CompiledQuery(
        lambda p: (
            _joined(Practitioner.objects.all(), related)
            .filter(user=p.user, kind=p.kind)
            .order_by("pk")[:1]
        ),
        user=Practitioner._meta.get_field("user"),
        kind=Practitioner._meta.get_field("kind"),
    )
)


def _joined(qs: QuerySet[M], related: tuple[str, ...]) -> QuerySet[M]:
    """``qs`` with exactly ``related`` joined (``select_related()`` with no names would
    join every non-null foreign key)."""
    return qs.select_related(*related) if related else qs


def _practitioner(
    user: User, kind: str, related: tuple[str, ...] = ("hospital", "department")
) -> Practitioner:
    """The account's practitioner record of ``kind``, with the ``related`` rows the
    caller reads (each join costs its compilation on every request)."""
    practitioner = _PRACTITIONER[related].first(user=user, kind=kind)
    if practitioner is None:
        raise DomainError("permission_denied", f"Only a {kind} can do this.")
    practitioner.user = user  # the account in hand, not a second copy of its row
    return practitioner


def _treating(consultation: Consultation, doctor: Practitioner) -> None:
    """DOMAIN rule 5: the consultation's own doctor, while it is open or just after."""
    if consultation.doctor_id != doctor.pk:
        raise DomainError(
            "not_treating_doctor", "Only the doctor who holds this consultation may prescribe."
        )
    if consultation.status == ConsultationStatus.IN_PROGRESS:
        return
    grace = dt.timedelta(minutes=settings.PRESCRIPTION_GRACE_MINUTES)
    if (
        consultation.status == ConsultationStatus.ENDED
        and consultation.closed_at is not None
        and timezone.now() - consultation.closed_at <= grace
    ):
        return
    if consultation.status in CONSULTATION_CLOSED:
        raise DomainError(
            "prescribing_closed",
            f"The consultation is {consultation.status}; prescribing ended with it"
            + (
                f" (or {settings.PRESCRIPTION_GRACE_MINUTES} minutes after it ended)."
                if consultation.status == ConsultationStatus.ENDED
                else "."
            ),
        )
    raise DomainError("prescribing_closed", "Accept the consultation before prescribing.")


def _licensed(practitioner: Practitioner, hospital: Hospital, code: str) -> None:
    """A prescriber or a reviewer acts only while filed here with a valid licence, at a
    hospital whose own licence is valid (DOMAIN rules 1 and 6): checked at each act,
    since a filing can be withdrawn or a licence lapse after the consultation began."""
    problems = practitioner_licence_problems(
        practitioner, hospital=hospital, today=timezone.localdate()
    )
    if problems:
        raise DomainError(
            code, "Not qualified: " + "; ".join(problems) + ".", extra={"reasons": problems}
        )


def _pharmacist_of(user: User, prescription: Prescription) -> Practitioner:
    """The reviewing pharmacist: of the prescription's hospital, filed and licensed."""
    pharmacist = _practitioner(user, PractitionerKind.PHARMACIST, related=())
    if pharmacist.hospital_id != prescription.hospital_id:
        raise DomainError("not_your_review")
    _licensed(pharmacist, prescription.hospital, "pharmacist_not_qualified")
    return pharmacist


_STAFF = CompiledQuery(
    lambda p: (
        PharmacyStaff.objects.select_related("pharmacy").filter(user=p.user).order_by("pk")[:1]
    ),
    user=PharmacyStaff._meta.get_field("user"),
)


def staff_of(user: User) -> PharmacyStaff:
    staff = _STAFF.first(user=user)
    if staff is None or not staff.pharmacy.is_active:
        raise DomainError("permission_denied", "Only the staff of an active pharmacy can do this.")
    return staff


# --- Drafts ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Draft:
    prescription: Prescription
    checks: list[rules.Check]


def _line_drafts(lines: list[dict[str, Any]]) -> list[rules.LineDraft]:
    if not lines:
        raise DomainError(
            "validation_error",
            "A prescription needs at least one line.",
            errors={"lines": ["Add at least one drug."]},
        )
    codes = {str(line.get("drug", "")) for line in lines}
    by_id: dict[str, Drug] = {}
    uuids = []
    for code in codes:
        try:
            uuids.append(UUID(code))
        except ValueError:
            continue
    if uuids:  # drugs named by id (an empty IN is still built and compiled by Django)
        for drug in Drug.objects.filter(is_active=True, pk__in=uuids):
            by_id[str(drug.pk)] = drug
    for drug in Drug.objects.filter(is_active=True, code__in=codes):
        by_id[drug.code] = drug
    drafts = []
    errors: dict[str, list[str]] = {}
    for n, line in enumerate(lines):
        found = by_id.get(str(line.get("drug", "")))
        if found is None:
            errors[f"lines.{n}.drug"] = ["Not an available drug of the catalogue (id or code)."]
            continue
        try:
            dose = Decimal(str(line.get("dose")))
        except InvalidOperation:
            errors[f"lines.{n}.dose"] = ["A number, e.g. 0.5."]
            continue
        if not dose.is_finite() or dose <= 0 or dose >= Decimal(10) ** 7:
            errors[f"lines.{n}.dose"] = ["Must be a positive number."]
            continue
        drafts.append(
            rules.LineDraft(
                drug=found,
                dose=dose.quantize(Decimal("0.001")),
                dose_unit=str(line.get("dose_unit", "")).strip(),
                frequency=str(line.get("frequency", "")).strip(),
                route=str(line.get("route") or found.route).strip(),
                days=int(line["days"]),
                quantity=int(line["quantity"]),
            )
        )
    if errors:
        unknown = all(k.endswith(".drug") for k in errors)
        raise DomainError(
            "unknown_drug" if unknown else "validation_error",
            "Some lines are not valid.",
            errors=errors,
        )
    return drafts


def _record_controlled_attempt(
    *,
    consultation: Consultation,
    doctor: Practitioner,
    checks: list[rules.Check],
    drafts: list[rules.LineDraft],
    meta: RequestMeta | None,
) -> None:
    """DOMAIN rule 7: the refusal is kept (in its own transaction) and raises an alert."""
    controlled = [
        {"code": d.drug.code, "name": d.drug.generic_name, "class": d.drug.control_class}
        for d in drafts
        if d.drug.is_controlled
    ]
    if not controlled:
        return
    with transaction.atomic():
        attempt = ControlledDrugAttempt.objects.create(
            consultation=consultation,
            doctor=doctor,
            drugs=controlled,
            created_at=timezone.now(),
        )
        audit_record(
            action="prescription.controlled_drug_refused",
            actor=doctor.user,
            object_type="consultation",
            object_id=consultation.pk,
            after={"attempt": attempt.pk, "drugs": controlled},
            meta=meta,
        )
        reporting.report_controlled_attempt(attempt)


def _checked(
    *,
    consultation: Consultation,
    doctor: Practitioner,
    drafts: list[rules.LineDraft],
    validity_days: int,
    chronic_reason: str,
    guardian: dict[str, Any] | None,
    specialist: dict[str, Any] | None,
    meta: RequestMeta | None,
) -> list[rules.Check]:
    checks = rules.prescription_checks(
        profile=consultation.profile,
        lines=drafts,
        validity_days=validity_days,
        chronic_reason=chronic_reason,
        guardian=guardian,
        specialist=specialist,
        today=timezone.localdate(),
    )
    if any(c.rule == "controlled_drug_forbidden" and c.outcome == "error" for c in checks):
        _record_controlled_attempt(
            consultation=consultation, doctor=doctor, checks=checks, drafts=drafts, meta=meta
        )
    rules.raise_for(checks)
    return checks


def _validity(validity_days: int) -> int:
    if validity_days < 1:
        raise DomainError(
            "validation_error",
            "The validity is at least one day.",
            errors={"validity_days": ["At least 1."]},
        )
    return validity_days


def _diagnoses(consultation: Consultation, given: list[dict[str, Any]] | None) -> list[Any]:
    if given:
        from consultations.services import icd10_resolve

        cleaned = []
        for item in given:
            entry = icd10_resolve(code=str(item.get("icd10", "")))
            cleaned.append(
                {
                    "icd10": entry.code,
                    "name": item.get("name") or entry.display_name,
                    "main": bool(item.get("main")),
                }
            )
        if cleaned and not any(d["main"] for d in cleaned):
            cleaned[0]["main"] = True
        return cleaned
    if consultation.diagnoses:
        return list(consultation.diagnoses)
    prior = consultation.prior_diagnosis
    return [{"icd10": prior.icd10_code, "name": prior.icd10_name, "main": True}]


def _total(drafts: list[rules.LineDraft]) -> int:
    return sum(d.drug.unit_price * d.quantity for d in drafts)


def _write_lines(
    prescription: Prescription, drafts: list[rules.LineDraft], *, fresh: bool = False
) -> None:
    """The draft's lines replaced by ``drafts`` (``fresh``: a new prescription, which has
    none yet and was created with its total)."""
    if not fresh:
        prescription.lines.all().delete()
    lines = PrescriptionLine.objects.bulk_create(
        PrescriptionLine(
            prescription=prescription,
            position=n,
            drug=d.drug,
            drug_code=d.drug.code,
            drug_name=d.drug.generic_name,
            specification=d.drug.specification,
            unit=d.drug.unit,
            unit_price=d.drug.unit_price,
            dose=d.dose,
            dose_unit=d.dose_unit,
            frequency=d.frequency,
            route=d.route,
            days=d.days,
            quantity=d.quantity,
        )
        for n, d in enumerate(drafts, 1)
    )
    lines_hold(prescription, lines)
    if not fresh:
        prescription.total = _total(drafts)
        prescription.save(update_fields=["total", "updated_at"])


_CONSULTATION_OF_HOSPITAL = CompiledQuery(
    lambda p: (
        Consultation.objects.select_related("profile", "prior_diagnosis")
        .filter(pk=p.id, hospital_id=p.hospital)
        .order_by("pk")[:1]
    ),
    id=Consultation._meta.pk,
    hospital=Consultation._meta.get_field("hospital"),
)


def prescription_create(
    *,
    user: User,
    consultation_id: UUID | str,
    lines: list[dict[str, Any]],
    validity_days: int = 1,
    chronic_reason: str = "",
    guardian: dict[str, Any] | None = None,
    specialist: dict[str, Any] | None = None,
    diagnoses: list[dict[str, Any]] | None = None,
    meta: RequestMeta | None = None,
) -> Draft:
    """A draft by the treating doctor; every rule is checked and returned."""
    doctor = _practitioner(user, PractitionerKind.DOCTOR)
    consultation = _CONSULTATION_OF_HOSPITAL.first(id=consultation_id, hospital=doctor.hospital_id)
    if consultation is None:
        raise DomainError("not_found", "No such consultation.")
    _treating(consultation, doctor)
    drafts = _line_drafts(lines)
    checks = _checked(
        consultation=consultation,
        doctor=doctor,
        drafts=drafts,
        validity_days=_validity(validity_days),
        chronic_reason=chronic_reason,
        guardian=guardian,
        specialist=specialist,
        meta=meta,
    )
    with transaction.atomic():
        prescription = Prescription.objects.create(
            consultation=consultation,
            hospital=doctor.hospital,  # the consultation's: it was found in the doctor's
            profile=consultation.profile,
            doctor=doctor,
            total=_total(drafts),
            diagnoses=_diagnoses(consultation, diagnoses),
            validity_days=validity_days,
            chronic_reason=chronic_reason.strip(),
            guardian=guardian,
            specialist=specialist,
            access_code=secrets.token_urlsafe(16),
        )
        _write_lines(prescription, drafts, fresh=True)
        event = PrescriptionEvent.objects.create(
            prescription=prescription,
            action="create",
            to_status=S.DRAFT,
            actor=user,
            created_at=timezone.now(),
            data={"lines": len(drafts)},
        )
        audit_record(
            action="prescription.create",
            actor=user,
            object_type="prescription",
            object_id=prescription.pk,
            after={
                "consultation": str(consultation.pk),
                "lines": [d.drug.code for d in drafts],
                "warnings": [c.rule for c in checks if c.outcome == "warning"],
            },
            meta=meta,
        )
        push.after_change(prescription, event)
    return Draft(prescription, checks)


def prescription_update(
    *,
    user: User,
    prescription_id: UUID | str,
    lines: list[dict[str, Any]] | None = None,
    validity_days: int | None = None,
    chronic_reason: str | None = None,
    guardian: dict[str, Any] | None = None,
    specialist: dict[str, Any] | None = None,
    diagnoses: list[dict[str, Any]] | None = None,
    fields: frozenset[str] = frozenset(),
    meta: RequestMeta | None = None,
) -> Draft:
    """Edit a draft (PATCH): only the fields named in ``fields`` change."""
    doctor = _practitioner(user, PractitionerKind.DOCTOR)
    with transaction.atomic():
        prescription = _locked(prescription_id)
        if prescription.hospital_id != doctor.hospital_id:
            raise DomainError("not_found", "No such prescription.")
        consultation = Consultation.objects.select_related("profile", "prior_diagnosis").get(
            pk=prescription.consultation_id
        )
        _treating(consultation, doctor)
        if prescription.status != S.DRAFT:
            raise _state_error(prescription, "edit")
        drafts = (
            _line_drafts(lines)
            if "lines" in fields and lines is not None
            else _stored_drafts(prescription)
        )
        if "validity_days" in fields and validity_days is not None:
            prescription.validity_days = _validity(validity_days)
        if "chronic_reason" in fields:
            prescription.chronic_reason = (chronic_reason or "").strip()
        if "guardian" in fields:
            prescription.guardian = guardian
        if "specialist" in fields:
            prescription.specialist = specialist
        if "diagnoses" in fields:
            prescription.diagnoses = _diagnoses(consultation, diagnoses)
    # Checks run outside the lock so that a controlled-drug attempt is kept on refusal.
    checks = _checked(
        consultation=consultation,
        doctor=doctor,
        drafts=drafts,
        validity_days=prescription.validity_days,
        chronic_reason=prescription.chronic_reason,
        guardian=prescription.guardian,
        specialist=prescription.specialist,
        meta=meta,
    )
    with transaction.atomic():
        current = _locked(prescription_id)
        if current.status != S.DRAFT or current.version != prescription.version:
            raise _state_error(current, "edit")
        prescription.save()
        if "lines" in fields:
            _write_lines(prescription, drafts)
        audit_record(
            action="prescription.edit",
            actor=user,
            object_type="prescription",
            object_id=prescription.pk,
            after={"fields": sorted(fields)},
            meta=meta,
        )
    return Draft(prescription, checks)


def _stored_lines(prescription: Prescription) -> list[PrescriptionLine]:
    """The lines with their drugs: the prefetched ones when the selector loaded them."""
    if "lines" in getattr(prescription, "_prefetched_objects_cache", {}):
        return list(prescription.lines.all())
    return list(prescription.lines.select_related("drug"))


def _stored_drafts(
    prescription: Prescription, lines: list[PrescriptionLine] | None = None
) -> list[rules.LineDraft]:
    return [
        rules.LineDraft(
            drug=line.drug,
            dose=line.dose,
            dose_unit=line.dose_unit,
            frequency=line.frequency,
            route=line.route,
            days=line.days,
            quantity=line.quantity,
        )
        for line in (_stored_lines(prescription) if lines is None else lines)
    ]


def prescription_checks_of(
    *, prescription: Prescription, lines: list[PrescriptionLine] | None = None
) -> list[rules.Check]:
    """The rule checks of a stored prescription (for the console's detail view);
    ``lines``, with their drugs, when the caller has them already."""
    drafts = _stored_drafts(prescription, lines)
    return rules.prescription_checks(
        profile=prescription.profile,
        lines=drafts,
        validity_days=prescription.validity_days,
        chronic_reason=prescription.chronic_reason,
        guardian=prescription.guardian,
        specialist=prescription.specialist,
        today=timezone.localdate(prescription.issued_at or timezone.now()),
    )


# --- Signature and review ---------------------------------------------------------------------


def _end_of_validity(issued_at: dt.datetime, days: int) -> dt.datetime:
    """Valid on the day of issue and ``days - 1`` more (Asia/Shanghai): until midnight."""
    local = timezone.localtime(issued_at)
    last = local.date() + dt.timedelta(days=days)
    return dt.datetime.combine(last, dt.time.min, tzinfo=local.tzinfo)


def prescription_sign(
    *,
    user: User,
    prescription_id: UUID | str,
    otp: str | None,
    machine_credential: bool = False,
    meta: RequestMeta | None = None,
) -> Prescription:
    """The doctor's signing act: their own second factor, then a signature over the
    canonical content; the prescription goes to the pharmacists' review queue."""
    # Refused before the second factor is spent: not a doctor's account. The doctor's
    # record itself comes with the locked prescription (``_sign``).
    if user.role != Role.DOCTOR:
        raise DomainError("permission_denied", "Only a doctor can do this.")
    act = signing_act_authorise(
        user=user,
        otp=otp,
        purpose="prescription",
        machine_credential=machine_credential,
        meta=meta,
    )
    try:
        return _sign(user=user, act=act, prescription_id=prescription_id, meta=meta)
    except _ControlledRefused as refused:
        # The rules run again at signing (the catalogue or the patient's age may have
        # changed since drafting); a controlled drug refused here is kept, in its own
        # transaction once the signing one is rolled back, like at drafting.
        _record_controlled_attempt(
            consultation=refused.consultation,
            doctor=refused.doctor,
            checks=refused.checks,
            drafts=refused.drafts,
            meta=meta,
        )
        rules.raise_for(refused.checks)
        raise  # pragma: no cover - raise_for raises on the refusal


class _ControlledRefused(Exception):
    def __init__(
        self,
        consultation: Consultation,
        doctor: Practitioner,
        checks: list[rules.Check],
        drafts: list[rules.LineDraft],
    ) -> None:
        super().__init__("controlled_drug_forbidden")
        self.consultation, self.doctor = consultation, doctor
        self.checks, self.drafts = checks, drafts


def _sign(
    *, user: User, act: SigningAct, prescription_id: UUID | str, meta: RequestMeta | None
) -> Prescription:
    with transaction.atomic():
        prescription = _locked(prescription_id, "consultation")
        # The prescriber's record came with the row; anyone else's is read to tell them
        # which refusal is theirs (another hospital's prescription, or not their patient).
        doctor = prescription.doctor
        if doctor.user_id != user.pk:
            doctor = _practitioner(user, PractitionerKind.DOCTOR, related=())
        if prescription.hospital_id != doctor.hospital_id:
            raise DomainError("not_found", "No such prescription.")
        consultation = prescription.consultation
        consultation.profile = prescription.profile  # a prescription is for its visit's patient
        _treating(consultation, doctor)
        _licensed(doctor, prescription.hospital, "doctor_not_qualified")
        if prescription.status != S.DRAFT:
            raise _state_error(prescription, "sign")
        lines = lines_read(prescription)
        drafts = _stored_drafts(prescription, lines)
        checks = prescription_checks_of(prescription=prescription, lines=lines)
        if any(c.rule == "controlled_drug_forbidden" and c.outcome == "error" for c in checks):
            raise _ControlledRefused(consultation, doctor, checks, drafts)
        rules.raise_for(checks)
        # One clock reading for the issue time and the signature time, so that a
        # signature made at midnight is not dated the day after its issue: the one the
        # signing act read the certificate at, which then needs no second read.
        issued_at = act.checked_at or timezone.now()
        valid_until = _end_of_validity(issued_at, prescription.validity_days)
        content = prescription_content(
            prescription, lines, issued_at=issued_at, valid_until=valid_until
        )
        signed_bytes = canonical(content)
        signature = signature_create(
            act=act, purpose="prescription", data=signed_bytes, signed_at=issued_at
        )
        prescription.version_in_hand = PrescriptionVersion.objects.create(
            prescription=prescription,
            version=prescription.version,
            signed_bytes=signed_bytes,
            doctor_signature=signature.value,
            doctor_certificate=signature.certificate,
            signed_at=signature.signed_at,
        )
        sign = Step(
            "sign",
            actor=user,
            changes={"issued_at": issued_at, "valid_until": valid_until},
            data={
                "certificate_serial": signature.certificate.serial_number,
                "signature_sha256": signature.value_sha256,
            },
        )
        _transitions(prescription, [sign, Step("submit", actor=None)], meta=meta)
    return prescription


_CURRENT_VERSION = CompiledQuery(
    lambda p: (
        PrescriptionVersion.objects.select_related(
            "doctor_certificate__authority", "pharmacist_certificate__authority"
        )
        .defer(*PRIVATE_KEYS)
        .filter(prescription_id=p.prescription, version=p.version)
    ),
    prescription=PrescriptionVersion._meta.get_field("prescription"),
    version=PrescriptionVersion._meta.get_field("version"),
)


def _current_version(prescription: Prescription) -> PrescriptionVersion:
    found = _CURRENT_VERSION.all(prescription=prescription.pk, version=prescription.version)
    if len(found) != 1:
        raise PrescriptionVersion.DoesNotExist(
            f"prescription {prescription.pk} has {len(found)} version {prescription.version} rows"
        )
    found[0].prescription = prescription
    return found[0]


def _verified(version: PrescriptionVersion, *, require_review: bool) -> None:
    """The stored bytes, signatures and chains verify now, against the authority's
    current revocation list (``crl_der``: every revocation committed so far)."""
    bundle = prescription_bundle(version)
    try:
        verify_bundle(
            bundle,
            trusted_roots={version.doctor_certificate.authority.fingerprint_sha256},
            require_review=require_review,
        )
    except VerificationError as exc:
        raise DomainError(
            "bundle_invalid", exc.message, extra={"verification_code": exc.code}
        ) from exc


def prescription_approve(
    *,
    user: User,
    prescription_id: UUID | str,
    otp: str | None,
    machine_credential: bool = False,
    meta: RequestMeta | None = None,
) -> Prescription:
    """The pharmacist's review passes: a countersignature over the hash of the doctor's
    signature. Only now is the prescription effective (DOMAIN rule 6)."""
    act = signing_act_authorise(
        user=user,
        otp=otp,
        purpose="review",
        machine_credential=machine_credential,
        meta=meta,
    )
    with transaction.atomic():
        prescription = _locked(prescription_id)
        pharmacist = _pharmacist_of(user, prescription)
        if prescription.status != S.UNDER_REVIEW:
            raise _state_error(prescription, "approve")
        now = act.checked_at or timezone.now()  # as at ``_sign``
        if prescription.valid_until is not None and prescription.valid_until <= now:
            raise DomainError("prescription_expired")
        version = _current_version(prescription)
        _verified(version, require_review=False)
        prescription.version_in_hand = version
        lines_read(prescription)  # the order's items, the response
        statement = canonical(review_statement(version, pharmacist=pharmacist, reviewed_at=now))
        signature = signature_create(act=act, purpose="review", data=statement, signed_at=now)
        version.review_result = "approved"
        version.reviewed_by = pharmacist
        version.reviewed_at = signature.signed_at
        version.review_bytes = statement
        version.pharmacist_signature = signature.value
        version.pharmacist_certificate = signature.certificate
        # The review only: the doctor's signed bytes are never written again.
        version.save(
            update_fields=[
                "review_result",
                "reviewed_by",
                "reviewed_at",
                "review_bytes",
                "pharmacist_signature",
                "pharmacist_certificate",
            ]
        )
        _transition(
            prescription,
            "approve",
            actor=user,
            meta=meta,
            data={
                "pharmacist": str(pharmacist.pk),
                "certificate_serial": signature.certificate.serial_number,
            },
        )
    return prescription


def prescription_reject(
    *, user: User, prescription_id: UUID | str, reason: str, meta: RequestMeta | None = None
) -> Prescription:
    if not reason.strip():
        raise DomainError("validation_error", "Give the reason.", errors={"reason": ["Required."]})
    with transaction.atomic():
        prescription = _locked(prescription_id)
        pharmacist = _pharmacist_of(user, prescription)
        if prescription.status != S.UNDER_REVIEW:
            raise _state_error(prescription, "reject")
        version = _current_version(prescription)
        version.review_result = "rejected"
        version.review_reason = reason.strip()
        version.reviewed_by = pharmacist
        version.reviewed_at = timezone.now()
        version.save(update_fields=["review_result", "review_reason", "reviewed_by", "reviewed_at"])
        _transition(
            prescription,
            "reject",
            actor=user,
            reason=reason.strip(),
            meta=meta,
            data={"pharmacist": str(pharmacist.pk)},
        )
    return prescription


def prescription_revise(
    *, user: User, prescription_id: UUID | str, meta: RequestMeta | None = None
) -> Prescription:
    """After a rejection, the doctor opens a new version as a draft; the rejected
    version is superseded. The new version must be signed again."""
    doctor = _practitioner(user, PractitionerKind.DOCTOR)
    with transaction.atomic():
        prescription = _locked(prescription_id)
        if prescription.hospital_id != doctor.hospital_id:
            raise DomainError("not_found", "No such prescription.")
        consultation = Consultation.objects.get(pk=prescription.consultation_id)
        _treating(consultation, doctor)
        if prescription.status != S.REVIEW_REJECTED:
            raise _state_error(prescription, "revise")
        now = timezone.now()
        PrescriptionVersion.objects.filter(
            prescription=prescription, version=prescription.version
        ).update(superseded_at=now)
        _transition(
            prescription,
            "revise",
            actor=user,
            meta=meta,
            changes={
                "version": prescription.version + 1,
                "issued_at": None,
                "valid_until": None,
            },
            data={"superseded_version": prescription.version},
        )
    return prescription


# --- Cancel and expiry ------------------------------------------------------------------------


def _patient_sees(prescription: Prescription) -> bool:
    """Patients see a prescription once it was signed; drafts are the doctor's."""
    return (
        prescription.status != S.DRAFT
        and PrescriptionVersion.objects.filter(prescription=prescription).exists()
    )


@dataclass(frozen=True)
class CancelOutcome:
    prescription: Prescription
    pending: bool


def prescription_cancel(
    *,
    user: User,
    prescription_id: UUID | str,
    reason: str,
    meta: RequestMeta | None = None,
) -> CancelOutcome:
    """Cancelled by the prescribing doctor or by the patient's account before a claim.
    While a pharmacy holds a claim the cancel is pending: the pharmacy is told, cannot
    dispense, and the prescription is cancelled when the claim is released."""
    reason = reason.strip() or "cancelled"
    with transaction.atomic():
        prescription = _locked(prescription_id)
        is_patient = prescription.profile.account_id == user.pk and _patient_sees(prescription)
        is_doctor = prescription.doctor.user_id == user.pk
        if not (is_patient or is_doctor):
            raise DomainError("not_found", "No such prescription.")
        if prescription.status == S.CLAIMED:
            if prescription.cancel_requested_at is None:
                prescription.cancel_requested_at = timezone.now()
                prescription.cancel_requested_reason = reason
                prescription.save(
                    update_fields=["cancel_requested_at", "cancel_requested_reason", "updated_at"]
                )
                event = PrescriptionEvent.objects.create(
                    prescription=prescription,
                    action="cancel_requested",
                    from_status=S.CLAIMED,
                    to_status=S.CLAIMED,
                    actor=user,
                    reason=reason,
                    created_at=timezone.now(),
                )
                audit_record(
                    action="prescription.cancel_requested",
                    actor=user,
                    object_type="prescription",
                    object_id=prescription.pk,
                    after={"reason": reason},
                    meta=meta,
                )
                push.after_change(prescription, event)
            return CancelOutcome(prescription, pending=True)
        _transition(prescription, "cancel", actor=user, reason=reason, meta=meta)
    return CancelOutcome(prescription, pending=False)


def prescriptions_expire_due(*, now: dt.datetime | None = None, limit: int = 500) -> int:
    """Expire every prescription whose validity ended before a pharmacy claimed it."""
    now = now or timezone.now()
    due = list(
        Prescription.objects.filter(
            status__in=TRANSITIONS["expire"].sources, valid_until__lte=now
        ).values_list("pk", flat=True)[:limit]
    )
    expired = 0
    for pk in due:
        with transaction.atomic():
            prescription = _locked(pk)
            if (
                prescription.status not in TRANSITIONS["expire"].sources
                or prescription.valid_until is None
                or prescription.valid_until > now
            ):
                continue
            _transition(prescription, "expire", actor=None, reason="validity ended unclaimed")
            expired += 1
    return expired


# --- Pharmacies: claim, release, dispense, delivery ----------------------------------------------


def _codes_equal(given: str, expected: str) -> bool:
    return bool(expected) and hmac.compare_digest(given.encode(), expected.encode())


#: Wrong codes in the window by this pharmacy or for this prescription. The limits stop
#: new rows once reached (the check comes first), so there are about as many as the two
#: limits together at most.
_RECENT_FAILURES = CompiledQuery(
    lambda p: AccessCodeFailure.objects.filter(
        Q(pharmacy=p.pharmacy) | Q(prescription_id=p.prescription), created_at__gte=p.since
    ).values_list("pharmacy_id", "prescription_id"),
    pharmacy=AccessCodeFailure._meta.get_field("pharmacy"),
    prescription=AccessCodeFailure._meta.get_field("prescription_id"),
    since=AccessCodeFailure._meta.get_field("created_at"),
)


def _failures_exceeded(pharmacy: Pharmacy, prescription_id: UUID | str) -> bool:
    since = timezone.now() - dt.timedelta(seconds=settings.ACCESS_CODE_WINDOW_SECONDS)
    prescription = prescription_id if isinstance(prescription_id, UUID) else UUID(prescription_id)
    rows = _RECENT_FAILURES.all(pharmacy=pharmacy.pk, prescription=prescription, since=since)
    by_pharmacy = sum(1 for of_pharmacy, _ in rows if of_pharmacy == pharmacy.pk)
    for_prescription = sum(1 for _, of_prescription in rows if of_prescription == prescription)
    return (
        by_pharmacy >= settings.ACCESS_CODE_MAX_FAILURES_PER_PHARMACY
        or for_prescription >= settings.ACCESS_CODE_MAX_FAILURES_PER_PRESCRIPTION
    )


def _bad_access_code(
    staff: PharmacyStaff, prescription_id: UUID | str, meta: RequestMeta | None
) -> DomainError:
    with transaction.atomic():
        AccessCodeFailure.objects.create(
            pharmacy=staff.pharmacy, prescription_id=prescription_id, created_at=timezone.now()
        )
        audit_record(
            action="prescription.bad_access_code",
            actor=staff.user,
            object_type="prescription",
            object_id=prescription_id,
            after={"pharmacy": staff.pharmacy.code},
            meta=meta,
        )
    return DomainError("bad_access_code")


@dataclass(frozen=True)
class Claim:
    prescription: Prescription
    claim_secret: str


#: What a claim checks before it queues for the row lock.
_CLAIM_CHECK = CompiledQuery(
    lambda p: Prescription.objects.filter(pk=p.id).only("access_code", "status", "claimed_by_id")[
        :1
    ],
    id=Prescription._meta.pk,
)


def prescription_claim(
    *,
    user: User,
    prescription_id: UUID | str,
    access_code: str,
    meta: RequestMeta | None = None,
) -> Claim:
    """A pharmacy takes the prescription with the patient's access code. The same
    pharmacy claiming again gets its secret back; another pharmacy gets 409."""
    staff = staff_of(user)
    pharmacy = staff.pharmacy
    if _failures_exceeded(pharmacy, prescription_id):
        audit_record(
            action="prescription.access_code_rate_limited",
            actor=user,
            object_type="prescription",
            object_id=prescription_id,
            after={"pharmacy": pharmacy.code},
            meta=meta,
        )
        # CONTRACT 5: the rate limit answers as a wrong code does (403 ``bad_access_code``),
        # whatever code was sent, so that a guesser learns nothing; the detail and
        # ``retry_after`` (at most the window) tell an honest pharmacy what happened.
        window = settings.ACCESS_CODE_WINDOW_SECONDS
        raise DomainError(
            "bad_access_code",
            "Too many wrong access codes for this prescription or from this pharmacy: "
            f"no code is accepted for up to {window} seconds.",
            extra={"rate_limited": True, "retry_after": window},
        )
    stored = _CLAIM_CHECK.first(id=prescription_id)
    if stored is None or not _codes_equal(access_code.strip(), stored.access_code):
        raise _bad_access_code(staff, prescription_id, meta)
    if stored.status == S.CLAIMED and stored.claimed_by_id != pharmacy.pk:
        # Held by another pharmacy: answered without queueing for the row lock (a claim
        # race's losers cost one read each).
        raise DomainError("already_claimed")
    with transaction.atomic():
        prescription = _locked(prescription_id)
        now = timezone.now()
        lapsed = _claim_lapsed(prescription, now)
        if lapsed:
            # A claim kept past the prescription's validity and idle since: it ends
            # here as the periodic job would end it, and the prescription expires.
            _release(prescription, actor=None, pharmacy=None, reason=_IDLE_CLAIM, meta=meta)
        elif prescription.status == S.CLAIMED and prescription.claimed_by_id == pharmacy.pk:
            if _keeps_claim(prescription, now):
                prescription.claim_touched_at = now
                prescription.save(update_fields=["claim_touched_at", "updated_at"])
            return Claim(prescription, prescription.claim_secret)
        else:
            secret = _claim(prescription, user=user, pharmacy=pharmacy, now=now, meta=meta)
    if lapsed:
        raise _lapsed_error()
    lines_read(prescription)  # the response's lines
    return Claim(prescription, secret)


def _claim(
    prescription: Prescription,
    *,
    user: User,
    pharmacy: Pharmacy,
    now: dt.datetime,
    meta: RequestMeta | None,
) -> str:
    if prescription.status == S.CLAIMED:
        raise DomainError("already_claimed")
    if prescription.status == S.ACTIVE and (
        prescription.valid_until is None or prescription.valid_until <= now
    ):
        raise DomainError("prescription_expired")
    if prescription.status == S.ACTIVE:
        _verified(_current_version(prescription), require_review=True)
    secret = secrets.token_urlsafe(32)
    _transition(
        prescription,
        "claim",
        actor=user,
        pharmacy=pharmacy,
        meta=meta,
        changes={
            "claimed_by": pharmacy,
            "claim_secret": secret,
            "claimed_at": now,
            "claim_touched_at": now,
        },
    )
    return secret


def _lapsed_error() -> DomainError:
    return DomainError(
        "prescription_expired",
        "The prescription's validity ended while this pharmacy held it, and the claim "
        "lapsed after the idle time: the prescription has expired.",
    )


def _claimed(
    prescription: Prescription, pharmacy: Pharmacy, claim_secret: str, action: str
) -> None:
    """The caller holds this prescription's claim (not another pharmacy, not an old
    secret from before a release)."""
    if prescription.claimed_by_id != pharmacy.pk:
        if prescription.status in (S.CANCELLED, S.EXPIRED):
            raise _state_error(prescription, action)
        # CONTRACT 5: a secret that is not this pharmacy's current claim (never claimed,
        # released, idle-released, or another pharmacy's) is a bad claim secret.
        raise DomainError(
            "bad_claim_secret", "This pharmacy does not hold a claim on the prescription."
        )
    if not _codes_equal(claim_secret.strip(), prescription.claim_secret):
        raise DomainError("bad_claim_secret")


def prescription_for_pharmacy(
    *, user: User, prescription_id: UUID | str, touch: bool = True
) -> Prescription:
    """Read access for the claiming pharmacy only; with ``touch`` the read keeps the
    claim alive, while the prescription is valid (``_keeps_claim``)."""
    staff = staff_of(user)
    prescription = (
        Prescription.objects.select_related("profile", "doctor__user", "hospital")
        .filter(pk=prescription_id)
        .first()
    )
    if prescription is None or prescription.claimed_by_id != staff.pharmacy_id:
        raise DomainError("not_claimant", "Claim the prescription with its access code first.")
    now = timezone.now()
    if touch and prescription.status == S.CLAIMED and _keeps_claim(prescription, now):
        Prescription.objects.filter(pk=prescription.pk).update(claim_touched_at=now)
    return prescription


def _keeps_claim(prescription: Prescription, now: dt.datetime) -> bool:
    """The pharmacy's activity keeps its claim alive only while the prescription is
    valid. Past its validity the claim has what was left of its idle time and no more:
    a claim made at 23:59 can be dispensed at 00:05, not next week after a pharmacy kept
    it by polling (DOMAIN rule 9)."""
    return prescription.valid_until is not None and now < prescription.valid_until


def _claim_lapsed(prescription: Prescription, now: dt.datetime) -> bool:
    """Past its validity and idle for the configured time: the claim is over, and the
    prescription expires rather than going back to active (``_release``)."""
    idle = dt.timedelta(minutes=settings.PRESCRIPTION_CLAIM_IDLE_MINUTES)
    return (
        prescription.status == S.CLAIMED
        and not _keeps_claim(prescription, now)
        and prescription.claim_touched_at is not None
        and prescription.claim_touched_at <= now - idle
    )


#: The reason an idle claim ends with (by the periodic job, or by the request that finds it).
_IDLE_CLAIM = "claim idle for too long"


def _end_claim() -> dict[str, Any]:
    return {"claimed_by": None, "claim_secret": "", "claimed_at": None, "claim_touched_at": None}


def prescription_release(
    *,
    user: User,
    prescription_id: UUID | str,
    claim_secret: str,
    reason: str,
    meta: RequestMeta | None = None,
) -> Prescription:
    """The pharmacy gives the claim back, with a reason (CONTRACT 5); the old secret is
    useless from now on. A cancel that was pending takes effect."""
    if not reason.strip():
        raise DomainError(
            "validation_error",
            "Say why the claim is given back.",
            errors={"reason": ["This field may not be blank."]},
        )
    staff = staff_of(user)
    with transaction.atomic():
        prescription = _locked(prescription_id)
        _claimed(prescription, staff.pharmacy, claim_secret, "release")
        _release(prescription, actor=user, pharmacy=staff.pharmacy, reason=reason, meta=meta)
    return prescription


def _release(
    prescription: Prescription,
    *,
    actor: User | None,
    pharmacy: Pharmacy | None,
    reason: str,
    meta: RequestMeta | None,
) -> None:
    _transition(
        prescription,
        "release",
        actor=actor,
        # The pharmacy whose claim ends (an idle claim is ended by the system).
        pharmacy=pharmacy or prescription.claimed_by,
        reason=reason.strip(),
        meta=meta,
        changes=_end_claim(),
    )
    if prescription.cancel_requested_at is not None:
        _transition(
            prescription,
            "cancel",
            actor=None,
            reason=prescription.cancel_requested_reason or "cancelled while claimed",
            meta=meta,
        )
    elif prescription.valid_until is None or prescription.valid_until <= timezone.now():
        # Given back after its validity ended: unclaimed past its validity, so expired
        # now rather than active until the periodic job comes.
        _transition(
            prescription, "expire", actor=None, reason="validity ended unclaimed", meta=meta
        )


def claims_release_idle(*, now: dt.datetime | None = None, limit: int = 500) -> int:
    """Claims with no pharmacy activity for the configured time go back to active."""
    now = now or timezone.now()
    cutoff = now - dt.timedelta(minutes=settings.PRESCRIPTION_CLAIM_IDLE_MINUTES)
    due = list(
        Prescription.objects.filter(status=S.CLAIMED, claim_touched_at__lte=cutoff).values_list(
            "pk", flat=True
        )[:limit]
    )
    released = 0
    for pk in due:
        with transaction.atomic():
            prescription = _locked(pk)
            if prescription.status != S.CLAIMED or (
                prescription.claim_touched_at is not None and prescription.claim_touched_at > cutoff
            ):
                continue
            _release(prescription, actor=None, pharmacy=None, reason=_IDLE_CLAIM, meta=None)
            released += 1
    return released


@dataclass(frozen=True)
class DispenseItem:
    line: int  # position on the prescription
    quantity: int
    batch_number: str


def prescription_dispense(
    *,
    user: User,
    prescription_id: UUID | str,
    claim_secret: str,
    items: list[DispenseItem],
    pharmacist_name: str,
    pharmacist_licence: str,
    meta: RequestMeta | None = None,
) -> Prescription:
    """Close the prescription with the per-line ledger (dispensed ≤ prescribed) and a
    receipt sealed by the hospital. One prescription, one dispense (DOMAIN rule 11)."""
    staff = staff_of(user)
    if not items:
        raise DomainError(
            "dispense_mismatch", "Nothing to dispense.", errors={"items": ["Required."]}
        )
    if not (pharmacist_name.strip() and pharmacist_licence.strip()):
        raise DomainError(
            "validation_error",
            "Name the dispensing pharmacist and their licence number.",
            errors={"pharmacist": ["Name and licence number are required."]},
        )
    with transaction.atomic():
        prescription = _locked(prescription_id)
        _claimed(prescription, staff.pharmacy, claim_secret, "dispense")
        if prescription.status == S.CLAIMED and prescription.cancel_requested_at is not None:
            raise DomainError("cancel_pending")
        if prescription.status != S.CLAIMED:
            raise _state_error(prescription, "dispense")
        lapsed = _claim_lapsed(prescription, timezone.now())
        if lapsed:  # ended here as the periodic job would end it; refused below
            _release(prescription, actor=None, pharmacy=None, reason=_IDLE_CLAIM, meta=meta)
        else:
            _dispense(
                prescription,
                staff=staff,
                items=items,
                pharmacist_name=pharmacist_name,
                pharmacist_licence=pharmacist_licence,
                user=user,
                meta=meta,
            )
    if lapsed:
        raise _lapsed_error()
    return prescription


def _dispense(
    prescription: Prescription,
    *,
    staff: PharmacyStaff,
    items: list[DispenseItem],
    pharmacist_name: str,
    pharmacist_licence: str,
    user: User,
    meta: RequestMeta | None,
) -> None:
    """The ledger, the sealed receipt and the move to dispensed, on a claim the caller
    checked with the row locked."""
    prescription.claimed_by = staff.pharmacy  # the claimant (``_claimed``): the same row
    # the ledger's, the receipt's and the answer's lines
    lines = {line.position: line for line in lines_read(prescription)}
    wanted: dict[int, int] = {}
    errors: dict[str, list[str]] = {}
    for n, item in enumerate(items):
        if item.line not in lines:
            errors[f"items.{n}.line"] = ["Not a line of this prescription."]
        elif item.quantity <= 0:
            errors[f"items.{n}.quantity"] = ["Must be positive."]
        elif not item.batch_number.strip():
            errors[f"items.{n}.batch_number"] = ["Required."]
        else:
            wanted[item.line] = wanted.get(item.line, 0) + item.quantity
    for position, quantity in wanted.items():
        line = lines[position]
        if line.dispensed_quantity + quantity > line.quantity:
            errors[f"line.{position}"] = [
                f"{quantity} {line.unit} asked, {line.quantity} prescribed."
            ]
    if errors:
        raise DomainError(
            "dispense_mismatch", "The dispense does not match the prescription.", errors=errors
        )
    now = timezone.now()
    DispenseEntry.objects.bulk_create(
        DispenseEntry(
            line=lines[item.line],
            pharmacy=staff.pharmacy,
            staff=staff,
            quantity=item.quantity,
            batch_number=item.batch_number.strip(),
            pharmacist_name=pharmacist_name.strip(),
            pharmacist_licence=pharmacist_licence.strip(),
            created_at=now,
        )
        for item in items
    )
    for position, quantity in wanted.items():
        PrescriptionLine.objects.filter(pk=lines[position].pk).update(
            dispensed_quantity=F("dispensed_quantity") + quantity
        )
        lines[position].dispensed_quantity += quantity  # as stored: the row is locked
    version = _current_version(prescription)
    content = receipt(
        version=version,
        pharmacy_code=staff.pharmacy.code,
        dispensed_at=now,
        lines=[
            {
                "position": position,
                "drug_code": lines[position].drug_code,
                "quantity": quantity,
                "batches": sorted({i.batch_number.strip() for i in items if i.line == position}),
            }
            for position, quantity in sorted(wanted.items())
        ],
    )
    seal = seal_sign(hospital=prescription.hospital, data=canonical(content))
    _transition(
        prescription,
        "dispense",
        actor=user,
        pharmacy=staff.pharmacy,
        meta=meta,
        changes={
            "dispensed_at": now,
            "dispensed_by": staff.pharmacy,
            "receipt": sealed_receipt(content, seal),
        },
        data={
            "pharmacist": pharmacist_name.strip(),
            "lines": {str(k): v for k, v in wanted.items()},
        },
    )


def prescription_ship(
    *,
    user: User,
    prescription_id: UUID | str,
    claim_secret: str,
    courier: str,
    tracking_number: str,
    meta: RequestMeta | None = None,
) -> Prescription:
    staff = staff_of(user)
    if not (courier.strip() and tracking_number.strip()):
        raise DomainError(
            "validation_error",
            "Give the courier and the tracking number.",
            errors={"tracking_number": ["Courier and tracking number are required."]},
        )
    with transaction.atomic():
        prescription = _locked(prescription_id)
        _claimed(prescription, staff.pharmacy, claim_secret, "ship")
        if prescription.fulfilment != Fulfilment.DELIVERY:
            raise DomainError(
                "prescription_state_conflict", "The patient chose pick-up, not delivery."
            )
        _transition(
            prescription,
            "ship",
            actor=user,
            pharmacy=staff.pharmacy,
            meta=meta,
            changes={
                "courier": courier.strip(),
                "tracking_number": tracking_number.strip(),
                "shipped_at": timezone.now(),
            },
            data={"courier": courier.strip(), "tracking_number": tracking_number.strip()},
        )
    return prescription


def prescription_deliver(
    *,
    user: User,
    prescription_id: UUID | str,
    claim_secret: str,
    meta: RequestMeta | None = None,
) -> Prescription:
    staff = staff_of(user)
    with transaction.atomic():
        prescription = _locked(prescription_id)
        _claimed(prescription, staff.pharmacy, claim_secret, "deliver")
        _transition(
            prescription,
            "deliver",
            actor=user,
            pharmacy=staff.pharmacy,
            meta=meta,
            changes={"delivered_at": timezone.now()},
        )
    return prescription


# --- The patient's choices ----------------------------------------------------------------------


def prescription_fulfilment_choose(
    *,
    account: User,
    prescription_id: UUID | str,
    method: str,
    pharmacy: Pharmacy | None = None,
    address: dict[str, str] | None = None,
    meta: RequestMeta | None = None,
) -> Prescription:
    """Pick-up at a pharmacy or home delivery; changeable until a pharmacy claims it."""
    with transaction.atomic():
        prescription = _locked(prescription_id)
        if prescription.profile.account_id != account.pk or not _patient_sees(prescription):
            raise DomainError("not_found", "No such prescription.")
        if prescription.status in CLOSED or prescription.status not in (
            *BEFORE_REVIEW,
            S.ACTIVE,
        ):
            raise _state_error(prescription, "choose fulfilment for")
        if method == Fulfilment.PICKUP:
            if pharmacy is None:
                raise DomainError(
                    "validation_error",
                    "Choose a pharmacy.",
                    errors={"pharmacy": ["Required for pick-up."]},
                )
            if not pharmacy.is_active:
                raise DomainError(
                    "validation_error",
                    "Choose an open pharmacy.",
                    errors={"pharmacy": ["This pharmacy is closed."]},
                )
            prescription.fulfilment = Fulfilment.PICKUP
            prescription.pickup_pharmacy = pharmacy
            prescription.delivery_address = ""
        elif method == Fulfilment.DELIVERY:
            required = ("recipient", "phone", "address")
            if not address or not all(str(address.get(k, "")).strip() for k in required):
                raise DomainError(
                    "validation_error",
                    "Give the recipient, phone and address.",
                    errors={"address": ["recipient, phone and address are required."]},
                )
            prescription.fulfilment = Fulfilment.DELIVERY
            prescription.pickup_pharmacy = None
            prescription.delivery_address = json.dumps(
                {k: str(address[k]).strip() for k in required}, ensure_ascii=False
            )
        else:
            raise DomainError(
                "validation_error",
                "Choose pickup or delivery.",
                errors={"method": ["pickup or delivery"]},
            )
        prescription.save()
        billing.after_fulfilment(prescription)
        audit_record(
            action="prescription.fulfilment",
            actor=account,
            object_type="prescription",
            object_id=prescription.pk,
            after={
                "method": method,
                "pharmacy": pharmacy.code if pharmacy and method == Fulfilment.PICKUP else None,
            },
            meta=meta,
        )
    return prescription
