"""Model fields that keep personal data encrypted at rest (PIPL; DOMAIN rule 14).

``EncryptedTextField`` stores ``v1:<key id>:<base64(nonce|ciphertext|tag)>``; the
associated data binds each value to its table and column so that a ciphertext copied
into another column does not decrypt. It cannot be filtered on: use the companion
``BlindIndexField``, a keyed HMAC of the normalised value computed when the row is saved.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder
from django.db import models
from django.db.models import Lookup

from backend.crypto.keyring import keyring


def _context(field: models.Field[Any, Any]) -> str:
    return f"{field.model._meta.db_table}.{field.column}"


class EncryptedTextField(models.TextField):  # type: ignore[type-arg]
    description = "Text encrypted at rest with AES-256-GCM"

    def from_db_value(self, value: str | None, expression: Any, connection: Any) -> str | None:
        if value is None:
            return None
        return keyring().decrypt(value, context=_context(self))

    def get_prep_value(self, value: Any) -> Any:
        value = super().get_prep_value(value)
        if value is None:
            return None
        return keyring().encrypt(str(value), context=_context(self))

    def get_lookup(self, lookup_name: str) -> type[Lookup[Any]] | None:
        if lookup_name != "isnull":
            raise TypeError(
                f"{self.model.__name__}.{self.name} is encrypted and cannot be filtered with "
                f"'{lookup_name}'; filter on its blind index instead."
            )
        return super().get_lookup(lookup_name)


class EncryptedJSONField(EncryptedTextField):
    """A JSON value encrypted at rest: the encrypted text of its JSON (``json.dumps``,
    UTF-8 kept), read back as the same value. For documents that name people by ID number
    (a regulator record's payload). Like ``EncryptedTextField`` it cannot be filtered on,
    and key rotation re-encrypts it."""

    description = "JSON encrypted at rest with AES-256-GCM"
    # What django-stubs reads as the attribute's type: any JSON value, not text.
    _pyi_private_set_type: Any
    _pyi_private_get_type: Any

    def from_db_value(self, value: str | None, expression: Any, connection: Any) -> Any:
        text = super().from_db_value(value, expression, connection)
        return None if text is None else json.loads(text)

    def to_python(self, value: Any) -> Any:
        return value

    def get_prep_value(self, value: Any) -> Any:
        if value is None:
            return None
        text = json.dumps(value, ensure_ascii=False, cls=DjangoJSONEncoder)
        return keyring().encrypt(text, context=_context(self))

    def value_to_string(self, obj: models.Model) -> str:
        return json.dumps(self.value_from_object(obj), ensure_ascii=False, cls=DjangoJSONEncoder)


def normalize_identity(value: str) -> str:
    """ID numbers: ignore surrounding blanks and case (a trailing 'x' equals 'X')."""
    return value.strip().upper()


def normalize_phone(value: str) -> str:
    digits = "".join(ch for ch in value if ch.isdigit() or ch == "+")
    if digits.startswith("+86"):
        digits = digits[3:]
    elif digits.startswith("0086"):
        digits = digits[4:]
    return digits


class BlindIndexField(models.CharField):  # type: ignore[type-arg]
    """HMAC-SHA256 of another field's normalised value, for exact-match lookups."""

    def __init__(
        self,
        *args: Any,
        source: str = "",
        normalizer: Callable[[str], str] = normalize_identity,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("max_length", 64)
        kwargs.setdefault("editable", False)
        kwargs.setdefault("null", True)
        kwargs.setdefault("blank", True)
        kwargs.setdefault("db_index", True)
        self.source = source
        self.normalizer = normalizer
        super().__init__(*args, **kwargs)

    def deconstruct(self) -> Any:
        name, path, args, kwargs = super().deconstruct()
        kwargs["source"] = self.source
        for default in ("max_length", "editable", "null", "blank", "db_index"):
            kwargs.pop(default, None)
        return name, path, args, kwargs

    def pre_save(self, model_instance: models.Model, add: bool) -> str | None:
        raw = getattr(model_instance, self.source)
        value = blind_index_for(self.model, self.source, raw, normalizer=self.normalizer)
        setattr(model_instance, self.attname, value)
        return value


def blind_index_for(
    model: type[models.Model] | Any,
    source: str,
    raw: str | None,
    *,
    normalizer: Callable[[str], str] | None = None,
) -> str | None:
    """The blind index a row would store for ``raw`` in ``model.source``."""
    if raw is None or raw == "":
        return None
    if normalizer is None:
        index_field = next(
            f
            for f in model._meta.get_fields()
            if isinstance(f, BlindIndexField) and f.source == source
        )
        normalizer = index_field.normalizer
    purpose = f"{model._meta.db_table}.{source}"
    return keyring().blind_index(normalizer(raw), purpose=purpose)
