"""Reads of patient profiles."""

from __future__ import annotations

import datetime as dt

from backend.crypto.fields import blind_index_for
from backend.patients.models import PatientProfile


def patient_profile_find_by_id_number(*, id_type: str, id_number: str) -> PatientProfile | None:
    """Exact-match lookup through the blind index (the number itself is encrypted)."""
    index = blind_index_for(PatientProfile, "id_number", id_number)
    return PatientProfile.objects.filter(id_type=id_type, id_number_index=index).first()


def age_on(birth_date: dt.date, day: dt.date) -> int:
    """Completed years of life on ``day``."""
    return day.year - birth_date.year - ((day.month, day.day) < (birth_date.month, birth_date.day))
