"""Reads of the prescriptions context, each scoped to who is asking."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from django.db.models import Exists, OuterRef, Prefetch, QuerySet
from django.utils import timezone

from backend.api.problems import DomainError
from backend.compiled_queries import CompiledQuery
from backend.identity.models import Role, User
from backend.organisations.models import Practitioner, PractitionerKind
from backend.patients.models import PatientProfile
from prescriptions.lifecycle import BEFORE_REVIEW, CLAIMABLE
from prescriptions.models import (
    Prescription,
    PrescriptionEvent,
    PrescriptionLine,
    PrescriptionStatus,
    PrescriptionVersion,
)
from prescriptions.signing import PRIVATE_KEYS, prescription_bundle
from prescriptions.verify import VerificationError, verify_bundle

_RELATED = ("profile", "doctor__user", "doctor__department", "hospital", "claimed_by")


def _with_lines(qs: QuerySet[Prescription]) -> QuerySet[Prescription]:
    return qs.select_related(*_RELATED).prefetch_related(
        Prefetch("lines", queryset=PrescriptionLine.objects.select_related("drug"))
    )


def _signed_once() -> Exists:
    return Exists(PrescriptionVersion.objects.filter(prescription=OuterRef("pk")))


def prescriptions_of_account(*, account: User) -> QuerySet[Prescription]:
    """A patient's (and their dependants') prescriptions once signed: drafts, and drafts
    the doctor threw away unsigned, are the doctor's own work."""
    return _with_lines(
        Prescription.objects.filter(profile__account=account)
        .filter(_signed_once())
        .exclude(status=PrescriptionStatus.DRAFT)
    )


def prescriptions_of_practitioner(
    *, practitioner: Practitioner, status: str | None = None
) -> QuerySet[Prescription]:
    """A doctor's own prescriptions; a pharmacist's hospital's (from signing on)."""
    if practitioner.kind == PractitionerKind.DOCTOR:
        qs = Prescription.objects.filter(doctor=practitioner)
    else:
        qs = Prescription.objects.filter(hospital_id=practitioner.hospital_id).exclude(
            status=PrescriptionStatus.DRAFT
        )
    if status:
        qs = qs.filter(status=status)
    return _with_lines(qs)


def review_queue(*, practitioner: Practitioner) -> QuerySet[Prescription]:
    return _with_lines(
        Prescription.objects.filter(
            hospital_id=practitioner.hospital_id, status=PrescriptionStatus.UNDER_REVIEW
        )
    )


_PK = Prescription._meta.pk
_LINES = CompiledQuery(
    lambda p: PrescriptionLine.objects.select_related("drug").filter(
        prescription_id=p.prescription
    ),
    prescription=PrescriptionLine._meta.get_field("prescription"),
)
_LINE_PRESCRIPTION = PrescriptionLine._meta.get_field("prescription")


def lines_hold(prescription: Prescription, lines: list[PrescriptionLine]) -> None:
    """Keep ``lines`` (with their drugs) as the prescription's prefetched lines, where
    ``prefetch_related("lines")`` puts them, for the rest of the request."""
    for line in lines:
        _LINE_PRESCRIPTION.set_cached_value(line, prescription)
    held = {**getattr(prescription, "_prefetched_objects_cache", {}), "lines": lines}
    setattr(prescription, "_prefetched_objects_cache", held)  # noqa: B010 - Django's own slot


def lines_read(prescription: Prescription) -> list[PrescriptionLine]:
    """Read the lines with their drugs once, and hold them for the rest of the request."""
    lines = _LINES.all(prescription=prescription.pk)
    lines_hold(prescription, lines)
    return lines


def _visible(qs: QuerySet[Prescription]) -> QuerySet[Prescription]:
    return qs.select_related(*_RELATED)[:1]


#: ``prescription_visible_to``'s read for each kind of reader.
_VISIBLE_TO_PATIENT = CompiledQuery(
    lambda p: _visible(
        Prescription.objects.filter(pk=p.id, profile__account=p.account)
        .filter(_signed_once())
        .exclude(status=PrescriptionStatus.DRAFT)
    ),
    id=_PK,
    account=PatientProfile._meta.get_field("account"),
)
_VISIBLE_TO_DOCTOR = CompiledQuery(
    lambda p: _visible(Prescription.objects.filter(pk=p.id, doctor=p.doctor)),
    id=_PK,
    doctor=Prescription._meta.get_field("doctor"),
)
_VISIBLE_TO_PHARMACIST = CompiledQuery(
    lambda p: _visible(
        Prescription.objects.filter(pk=p.id, hospital_id=p.hospital).exclude(
            status=PrescriptionStatus.DRAFT
        )
    ),
    id=_PK,
    hospital=Prescription._meta.get_field("hospital"),
)
_PRACTITIONER_OF = CompiledQuery(
    lambda p: Practitioner.objects.filter(user=p.user).order_by("pk")[:1],
    user=Practitioner._meta.get_field("user"),
)


def prescription_visible_to(*, user: User, prescription_id: UUID | str) -> Prescription:
    """The prescription if ``user`` may see it (patient's account, its doctor, a
    pharmacist of the hospital), with its lines; 404 otherwise, so ids are not probed."""
    found: Prescription | None = None
    if user.role == Role.PATIENT:
        found = _VISIBLE_TO_PATIENT.first(id=prescription_id, account=user)
    elif user.role in (Role.DOCTOR, Role.PHARMACIST):
        practitioner = _PRACTITIONER_OF.first(user=user)
        if practitioner is not None and practitioner.kind == PractitionerKind.DOCTOR:
            found = _VISIBLE_TO_DOCTOR.first(id=prescription_id, doctor=practitioner)
        elif practitioner is not None:
            found = _VISIBLE_TO_PHARMACIST.first(
                id=prescription_id, hospital=practitioner.hospital_id
            )
    if found is None:
        raise DomainError("not_found", "No such prescription.")
    lines_read(found)
    return found


_STATUS = CompiledQuery(
    lambda p: Prescription.objects.filter(pk=p.id).values_list("status", flat=True),
    id=_PK,
)


def prescription_status(*, prescription_id: UUID | str) -> str | None:
    """The prescription's status as stored now, or None if there is no such prescription."""
    found = _STATUS.all(id=prescription_id)
    return found[0] if found else None


def access_code_refusal(*, prescription: Prescription) -> DomainError | None:
    """Why the patient is not shown the access code and its QR now, or None when they
    are: approved, not claimed, and within the prescription's validity (until the
    periodic job marks it expired, a prescription past its validity is treated as
    expired here, as a claim treats it)."""
    code: str | None = None
    extra: dict[str, Any] = {}
    if prescription.status in CLAIMABLE:
        if prescription.valid_until is not None and timezone.now() < prescription.valid_until:
            return None
        code = "prescription_expired"
    elif prescription.status == PrescriptionStatus.CANCELLED:
        code = "prescription_cancelled"
    elif prescription.status == PrescriptionStatus.EXPIRED:
        code = "prescription_expired"
    elif prescription.status in BEFORE_REVIEW:
        code = "not_reviewed"
    else:  # a pharmacy has it (the patient's own choice, as a rule)
        code, extra = "prescription_state_conflict", {"prescription_status": prescription.status}
    return DomainError(
        code,
        "The code is shown while the prescription is approved, not yet claimed and valid.",
        extra=extra,
    )


_HISTORY = CompiledQuery(
    lambda p: (
        PrescriptionEvent.objects.select_related("pharmacy")
        .filter(prescription_id=p.prescription)
        .order_by("created_at", "id")
    ),
    prescription=PrescriptionEvent._meta.get_field("prescription"),
)
_EVENT_PRESCRIPTION = PrescriptionEvent._meta.get_field("prescription")


def prescription_history(*, prescription: Prescription) -> list[PrescriptionEvent]:
    events = _HISTORY.all(prescription=prescription.pk)
    for event in events:
        _EVENT_PRESCRIPTION.set_cached_value(event, prescription)
    return events


_VERSION = CompiledQuery(
    lambda p: (
        PrescriptionVersion.objects.select_related(
            "doctor_certificate__authority",
            "pharmacist_certificate__authority",
            "reviewed_by__user",
        )
        .defer(*PRIVATE_KEYS)
        .filter(prescription_id=p.prescription, version=p.version)
        .order_by("pk")[:1]
    ),
    prescription=PrescriptionVersion._meta.get_field("prescription"),
    version=PrescriptionVersion._meta.get_field("version"),
)


def version_current(*, prescription: Prescription) -> PrescriptionVersion | None:
    in_hand = prescription.current_version_in_hand()
    if in_hand is not None:
        return in_hand
    if prescription.status == PrescriptionStatus.DRAFT:
        return None  # a version is written when it is signed (a revision opens a new one)
    return _VERSION.first(prescription=prescription.pk, version=prescription.version)


def prescription_verification(*, prescription: Prescription) -> dict[str, Any] | None:
    """Verify the current version's stored signatures and chains now (what the
    pharmacist sees before approving, and what a pharmacy will check)."""
    version = version_current(prescription=prescription)
    if version is None:
        return None
    bundle = prescription_bundle(version, status=prescription.status)
    try:
        verified = verify_bundle(
            bundle,
            trusted_roots={version.doctor_certificate.authority.fingerprint_sha256},
            require_review=version.review_result == "approved",
        )
    except VerificationError as exc:
        return {"valid": False, "code": exc.code, "reason": exc.message}
    return verified.summary()


def prescription_bundle_or_none(*, prescription: Prescription) -> dict[str, Any] | None:
    version = version_current(prescription=prescription)
    return None if version is None else prescription_bundle(version, status=prescription.status)


def prescription_bundle_of(*, prescription: Prescription) -> dict[str, Any]:
    version = version_current(prescription=prescription)
    if version is None:
        raise DomainError("signature_required", "The prescription has not been signed yet.")
    return prescription_bundle(version, status=prescription.status)
