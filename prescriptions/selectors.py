"""Reads of the prescriptions context, each scoped to who is asking."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from django.db.models import Exists, OuterRef, Prefetch, QuerySet

from backend.api.problems import DomainError
from backend.identity.models import Role, User
from backend.organisations.models import Practitioner, PractitionerKind
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


def prescription_visible_to(*, user: User, prescription_id: UUID | str) -> Prescription:
    """The prescription if ``user`` may see it (patient's account, its doctor, a
    pharmacist of the hospital); 404 otherwise, so ids are not probed."""
    qs = _with_lines(Prescription.objects.filter(pk=prescription_id))
    if user.role == Role.PATIENT:
        qs = (
            qs.filter(profile__account=user)
            .filter(_signed_once())
            .exclude(status=PrescriptionStatus.DRAFT)
        )
    elif user.role in (Role.DOCTOR, Role.PHARMACIST):
        practitioner = Practitioner.objects.filter(user=user).first()
        if practitioner is None:
            qs = qs.none()
        elif practitioner.kind == PractitionerKind.DOCTOR:
            qs = qs.filter(doctor=practitioner)
        else:
            qs = qs.filter(hospital_id=practitioner.hospital_id).exclude(
                status=PrescriptionStatus.DRAFT
            )
    else:
        qs = qs.none()
    found = qs.first()
    if found is None:
        raise DomainError("not_found", "No such prescription.")
    return found


def prescription_history(*, prescription: Prescription) -> list[PrescriptionEvent]:
    return list(prescription.events.select_related("pharmacy").order_by("created_at", "id"))


def version_current(*, prescription: Prescription) -> PrescriptionVersion | None:
    in_hand = prescription.current_version_in_hand()
    if in_hand is not None:
        return in_hand
    if prescription.status == PrescriptionStatus.DRAFT:
        return None  # a version is written when it is signed (a revision opens a new one)
    return (
        PrescriptionVersion.objects.select_related(
            "doctor_certificate__authority",
            "pharmacist_certificate__authority",
            "reviewed_by__user",
        )
        .defer(*PRIVATE_KEYS)
        .filter(prescription=prescription, version=prescription.version)
        .first()
    )


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
