"""Checks for patient identity documents."""

from __future__ import annotations

import datetime as dt

from django.core.exceptions import ValidationError
from django.utils.translation import gettext_lazy as _

_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_CHECK = "10X98765432"


def resident_id_birth_date(number: str) -> dt.date:
    """Validate an 18-digit resident identity card number (GB 11643, ISO 7064 MOD 11-2)
    and return the birth date it encodes."""
    number = number.strip().upper()
    if len(number) != 18 or not number[:17].isdigit() or number[17] not in "0123456789X":
        raise ValidationError(
            _("A resident ID number is 17 digits followed by a digit or X."), code="invalid_id"
        )
    total = sum(int(ch) * w for ch, w in zip(number[:17], _WEIGHTS, strict=True))
    if _CHECK[total % 11] != number[17]:
        raise ValidationError(
            _("The resident ID number's check digit is wrong."), code="invalid_id"
        )
    try:
        return dt.date(int(number[6:10]), int(number[10:12]), int(number[12:14]))
    except ValueError as exc:
        raise ValidationError(
            _("The resident ID number encodes an impossible birth date."), code="invalid_id"
        ) from exc


def resident_id_sex(number: str) -> str:
    return "male" if int(number.strip()[16]) % 2 else "female"
