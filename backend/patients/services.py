"""Real-name registration of patients and their dependants (DOMAIN rules 2 and 14)."""

from __future__ import annotations

import datetime as dt

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from backend.api.problems import DomainError
from backend.audit.services import RequestMeta, audit_record
from backend.identity.models import Role, User
from backend.patients.models import IdDocumentType, PatientProfile, Relation
from backend.patients.selectors import age_on, patient_profile_find_by_id_number
from backend.patients.validators import resident_id_birth_date, resident_id_sex

register_problem_codes = (
    ("profile_exists", 409, "A profile with this ID document is already registered"),
    ("consent_required", 422, "Consent to process sensitive personal information is required"),
    ("guardian_consent_required", 422, "A child under 14 is registered by a guardian"),
)

#: Under this age all of a person's data is sensitive and only a guardian may consent to
#: processing it (PIPL 28 and 31): such a child is a dependant of a guardian's account.
GUARDIAN_CONSENT_AGE = 14


def patient_profile_create(
    *,
    account: User,
    relation: str,
    real_name: str,
    id_type: str,
    id_number: str,
    birth_date: dt.date,
    sex: str,
    phone: str | None = None,
    allergies: list[str] | None = None,
    consent: bool,
    meta: RequestMeta | None = None,
) -> PatientProfile:
    """Register the account holder (``relation="self"``) or a dependant. Sensitive data
    (health data, and all data of children under 14) needs explicit consent (PIPL 28-31):
    for a dependant, the guardian gives it."""
    if account.role != Role.PATIENT:
        raise DomainError("permission_denied", "Only patient accounts hold patient profiles.")
    if not consent:
        raise DomainError("consent_required")
    id_number = id_number.strip().upper()
    if id_type == IdDocumentType.RESIDENT_ID:
        try:
            encoded_birth = resident_id_birth_date(id_number)
        except ValidationError as exc:
            raise DomainError(
                "validation_error", exc.messages[0], errors={"id_number": exc.messages}
            ) from exc
        if encoded_birth != birth_date:
            raise DomainError(
                "validation_error",
                "The birth date does not match the ID number.",
                errors={"birth_date": ["Does not match the ID number."]},
            )
        if sex != resident_id_sex(id_number):
            raise DomainError(
                "validation_error",
                "The sex does not match the ID number.",
                errors={"sex": ["Does not match the ID number."]},
            )
    if birth_date > timezone.localdate():
        raise DomainError(
            "validation_error",
            "The birth date is in the future.",
            errors={"birth_date": ["Must not be in the future."]},
        )
    if (
        relation == Relation.SELF
        and age_on(birth_date, timezone.localdate()) < GUARDIAN_CONSENT_AGE
    ):
        raise DomainError(
            "guardian_consent_required",
            "A child under 14 cannot consent for themselves: a guardian registers them as a "
            "dependant from the guardian's own account.",
        )
    if patient_profile_find_by_id_number(id_type=id_type, id_number=id_number) is not None:
        raise DomainError("profile_exists")
    try:
        with transaction.atomic():
            profile = PatientProfile.objects.create(
                account=account,
                relation=relation,
                real_name=real_name.strip(),
                id_type=id_type,
                id_number=id_number,
                birth_date=birth_date,
                sex=sex,
                phone=phone or None,
                allergies=[a.strip() for a in (allergies or []) if a.strip()],
                sensitive_data_consent_at=timezone.now(),
            )
            audit_record(
                action="patient_profile.created",
                actor=account,
                object_type="patient_profile",
                object_id=profile.pk,
                after={"relation": relation, "id_type": id_type},
                meta=meta,
            )
    except IntegrityError as exc:
        if relation == Relation.SELF:
            raise DomainError(
                "profile_exists", "This account already has its own profile."
            ) from exc
        raise DomainError("profile_exists") from exc
    return profile


def patient_profile_update_allergies(
    *,
    account: User,
    profile: PatientProfile,
    allergies: list[str],
    meta: RequestMeta | None = None,
) -> PatientProfile:
    if profile.account_id != account.pk:
        raise DomainError("not_found", "No such patient profile on this account.")
    before = list(profile.allergies)
    with transaction.atomic():
        profile.allergies = [a.strip() for a in allergies if a.strip()]
        profile.save(update_fields=["allergies", "updated_at"])
        audit_record(
            action="patient_profile.allergies",
            actor=account,
            object_type="patient_profile",
            object_id=profile.pk,
            before={"allergies": before},
            after={"allergies": profile.allergies},
            meta=meta,
        )
    return profile
