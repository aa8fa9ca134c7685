"""Reads of patient profiles."""

from __future__ import annotations

from backend.crypto.fields import blind_index_for
from backend.patients.models import PatientProfile


def patient_profile_find_by_id_number(*, id_type: str, id_number: str) -> PatientProfile | None:
    """Exact-match lookup through the blind index (the number itself is encrypted)."""
    index = blind_index_for(PatientProfile, "id_number", id_number)
    return PatientProfile.objects.filter(id_type=id_type, id_number_index=index).first()
