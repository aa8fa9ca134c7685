"""DOMAIN rule 14: ID numbers are encrypted at rest, also in the regulator outbox, whose
payloads name patients (and practitioners) by ID number for the provincial platform.

The record as stored holds no ID number; read through the model, delivered to the
platform and verified against its seal it is the same document; key rotation covers it;
and the migration that introduced the encryption rewrites stored payloads both ways.
"""

from __future__ import annotations

import base64
import json
import secrets
from typing import Any

import pytest
from django.core.exceptions import FieldError
from django.core.management import call_command
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.test import override_settings

from regulators.models import OutboxRecord
from tests.consult_http_helpers import Scene
from tests.factories import DepartmentFactory

BEFORE = ("regulators", "0002_outbox_drain_indexes")
AFTER = ("regulators", "0003_outbox_payload_encrypted")


def _stored(record_pk: int) -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT payload FROM regulators_outboxrecord WHERE id = %s", [record_pk])
        row = cursor.fetchone()
    assert row is not None
    return str(row[0])


def _requested() -> tuple[OutboxRecord, str]:
    """A consultation requested over HTTP: its regulator record names the patient."""
    scene = Scene(DepartmentFactory())
    scene.request()
    record = OutboxRecord.objects.get(record_type="consultation.requested")
    return record, scene.profile.id_number


@pytest.mark.django_db
def test_the_stored_payload_holds_no_id_number_and_reads_back_whole() -> None:
    record, id_number = _requested()
    raw = _stored(record.pk)
    assert raw.startswith("v1:")
    assert id_number not in raw
    assert id_number[-6:] not in raw
    assert "patient" not in raw  # not even the document's shape
    assert record.payload["patient"]["id_number"] == id_number
    # What the platform receives is the sealed document, unchanged by the round trip.
    reread = OutboxRecord.objects.get(pk=record.pk)
    assert reread.payload == record.payload
    # It cannot be searched: not by value, not by a path into it.
    with pytest.raises(TypeError, match="is encrypted and cannot be filtered"):
        OutboxRecord.objects.filter(payload=record.payload).exists()
    with pytest.raises(FieldError, match="Unsupported lookup"):
        # (spelled as a dict: the type checker's Django plugin would evaluate the lookup)
        OutboxRecord.objects.filter(**{"payload__patient__id_number": id_number}).exists()


@pytest.mark.django_db
def test_key_rotation_rewrites_outbox_payloads(settings: Any) -> None:
    record, id_number = _requested()
    new_key = "k2:" + base64.b64encode(secrets.token_bytes(32)).decode()
    with override_settings(FIELD_ENCRYPTION_KEYS=f"{new_key},{settings.FIELD_ENCRYPTION_KEYS}"):
        call_command("rotate_field_keys", stdout=open("/dev/null", "w"))  # noqa: SIM115
        assert _stored(record.pk).startswith("v1:k2:")
        with override_settings(FIELD_ENCRYPTION_KEYS=new_key):
            reread = OutboxRecord.objects.get(pk=record.pk).payload
            assert reread["patient"]["id_number"] == id_number


@pytest.mark.django_db(transaction=True)
def test_the_migration_encrypts_stored_payloads_and_its_reverse_decrypts_them() -> None:
    record, id_number = _requested()
    payload = OutboxRecord.objects.get(pk=record.pk).payload
    executor = MigrationExecutor(connection)
    try:
        executor.migrate([BEFORE])  # back: the payload is plain JSON again
        plain = _stored(record.pk)
        assert json.loads(plain) == payload
        assert id_number in plain

        executor.loader.build_graph()
        executor.migrate([AFTER])  # forward: encrypted in place
        raw = _stored(record.pk)
        assert raw.startswith("v1:")
        assert id_number not in raw
        assert OutboxRecord.objects.get(pk=record.pk).payload == payload
    finally:
        executor.loader.build_graph()
        executor.migrate(executor.loader.graph.leaf_nodes())
