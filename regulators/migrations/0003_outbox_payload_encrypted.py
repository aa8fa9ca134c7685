# The outbox payload names patients and practitioners by ID number: it is now encrypted at
# rest like the columns it was copied from (DOMAIN rule 14). The column becomes text, then
# every stored payload is encrypted in place, in batches; going back decrypts them.

import json
from typing import Any

from django.db import migrations

import backend.crypto.fields

BATCH = 1000


def _rewrite(apps: Any, schema_editor: Any, *, encrypt: bool) -> None:
    from backend.crypto.keyring import keyring

    ring = keyring()
    model = apps.get_model("regulators", "OutboxRecord")
    table = model._meta.db_table
    context = f"{table}.{model._meta.get_field('payload').column}"
    connection = schema_editor.connection
    qn = connection.ops.quote_name
    last = 0
    with connection.cursor() as cursor:
        while True:
            cursor.execute(
                f"SELECT id, {qn('payload')} FROM {qn(table)} WHERE id > %s ORDER BY id LIMIT %s",  # noqa: S608 - names from model metadata
                [last, BATCH],
            )
            rows = cursor.fetchall()
            for pk, stored in rows:
                if encrypt:
                    # Text as the JSON column gave it; re-serialised so the stored form does
                    # not depend on the database's JSON formatting.
                    value = stored if isinstance(stored, str) else json.dumps(stored)
                    text = json.dumps(json.loads(value), ensure_ascii=False)
                    new = ring.encrypt(text, context=context)
                else:
                    new = ring.decrypt(stored, context=context)
                cursor.execute(
                    f"UPDATE {qn(table)} SET {qn('payload')} = %s WHERE id = %s",  # noqa: S608
                    [new, pk],
                )
            if len(rows) < BATCH:
                return
            last = rows[-1][0]


def encrypt(apps: Any, schema_editor: Any) -> None:
    _rewrite(apps, schema_editor, encrypt=True)


def decrypt(apps: Any, schema_editor: Any) -> None:
    _rewrite(apps, schema_editor, encrypt=False)


class Migration(migrations.Migration):
    dependencies = [
        ("regulators", "0002_outbox_drain_indexes"),
    ]

    operations = [
        migrations.AlterField(
            model_name="outboxrecord",
            name="payload",
            field=backend.crypto.fields.EncryptedJSONField(),
        ),
        migrations.RunPython(encrypt, decrypt),
    ]
