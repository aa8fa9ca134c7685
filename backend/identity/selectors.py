"""Reads about accounts, shaped for the edges."""

from __future__ import annotations

from typing import Any

from backend.identity.models import Role, User


def phone_masked(phone: str | None) -> str | None:
    if not phone:
        return None
    return f"{phone[:3]}****{phone[-4:]}" if len(phone) >= 7 else "****"


def account_affiliation(*, user: User) -> dict[str, Any] | None:
    """The organisation that scopes what this account may see."""
    if user.role in (Role.DOCTOR, Role.PHARMACIST) and hasattr(user, "practitioner"):
        p = user.practitioner
        return {
            "kind": "hospital",
            "hospital": str(p.hospital_id),
            "hospital_name": p.hospital.name,
            "department": str(p.department_id) if p.department_id else None,
            "filing_status": p.filing_status,
        }
    if user.role == Role.PHARMACY_STAFF and hasattr(user, "pharmacy_staff"):
        s = user.pharmacy_staff
        return {
            "kind": "pharmacy",
            "pharmacy": str(s.pharmacy_id),
            "pharmacy_name": s.pharmacy.name,
        }
    if user.role == Role.REGULATOR and hasattr(user, "regulator_official"):
        r = user.regulator_official
        return {"kind": "province", "province": r.province.code, "province_name": r.province.name}
    if user.role == Role.ADMINISTRATOR and hasattr(user, "hospital_administrator"):
        a = user.hospital_administrator
        return {
            "kind": "hospital",
            "hospital": str(a.hospital_id),
            "hospital_name": a.hospital.name,
        }
    return None


def account_summary(*, user: User) -> dict[str, Any]:
    return {
        "id": str(user.pk),
        "username": user.username,
        "role": user.role,
        "display_name": user.display_name,
        "phone": phone_masked(user.phone),
        "affiliation": account_affiliation(user=user),
    }
