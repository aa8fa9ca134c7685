"""Checks for the identifiers that Chinese institutions and practitioners carry."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.utils.translation import gettext_lazy as _

# GB 32100-2015: 18 characters from this alphabet (no I, O, Z, S, V), the last a check.
_USCC_ALPHABET = "0123456789ABCDEFGHJKLMNPQRTUWXY"
_USCC_WEIGHTS = (1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28)


def uscc_check_character(first17: str) -> str:
    total = sum(_USCC_ALPHABET.index(ch) * w for ch, w in zip(first17, _USCC_WEIGHTS, strict=True))
    return _USCC_ALPHABET[(31 - total % 31) % 31]


def validate_uscc(value: str) -> None:
    """Unified social credit code (统一社会信用代码), including its check character."""
    if len(value) != 18 or any(ch not in _USCC_ALPHABET for ch in value):
        raise ValidationError(
            _("A unified social credit code is 18 characters of digits and capital letters."),
            code="invalid_uscc",
        )
    if uscc_check_character(value[:17]) != value[17]:
        raise ValidationError(
            _("The unified social credit code's check character is wrong."), code="invalid_uscc"
        )
