"""Re-encrypting stored values under the active key after a key rotation."""

from __future__ import annotations

from dataclasses import dataclass

from django.apps import apps
from django.db import connection, transaction
from django.db.models import Model

from backend.crypto.fields import EncryptedTextField, _context
from backend.crypto.keyring import KeyRing, keyring


@dataclass(frozen=True)
class RotationResult:
    table: str
    column: str
    rewritten: int


def encrypted_columns() -> list[tuple[type[Model], EncryptedTextField]]:
    found: list[tuple[type[Model], EncryptedTextField]] = []
    for model in apps.get_models():
        for field in model._meta.concrete_fields:
            if isinstance(field, EncryptedTextField):
                found.append((model, field))
    return found


def field_keys_rotate(*, batch_size: int = 500) -> list[RotationResult]:
    """Rewrite every value whose key id is not the active one. Safe to re-run."""
    ring: KeyRing = keyring()
    results = []
    qn = connection.ops.quote_name
    for model, field in encrypted_columns():
        table, column, pk = model._meta.db_table, field.column, model._meta.pk.column
        context = _context(field)
        rewritten = 0
        while True:
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute(
                    f"SELECT {qn(pk)}, {qn(column)} FROM {qn(table)} "  # noqa: S608 - names come from model metadata
                    f"WHERE {qn(column)} IS NOT NULL AND {qn(column)} NOT LIKE %s LIMIT %s",
                    [f"v1:{ring.active_id}:%", batch_size],
                )
                rows = cursor.fetchall()
                for row_pk, stored in rows:
                    plain = ring.decrypt(stored, context=context)
                    cursor.execute(
                        f"UPDATE {qn(table)} SET {qn(column)} = %s WHERE {qn(pk)} = %s",  # noqa: S608
                        [ring.encrypt(plain, context=context), row_pk],
                    )
            rewritten += len(rows)
            if len(rows) < batch_size:
                break
        results.append(RotationResult(table=table, column=column, rewritten=rewritten))
    return results
