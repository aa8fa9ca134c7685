from __future__ import annotations

from django.db import models

from backend.crypto.fields import EncryptedTextField


class IdempotencyRecord(models.Model):
    """The stored outcome of a mutating call made with an ``Idempotency-Key``."""

    class Status(models.TextChoices):
        IN_PROGRESS = "in_progress"
        COMPLETED = "completed"

    owner = models.CharField(max_length=80)
    key = models.CharField(max_length=255)
    method = models.CharField(max_length=10)
    path = models.CharField(max_length=500)
    fingerprint = models.CharField(max_length=64)
    status = models.CharField(max_length=20, choices=Status.choices)
    response_status = models.PositiveSmallIntegerField(null=True)
    #: JSON text, encrypted: replayed answers carry health data and credentials (a
    #: pharmacy's claim secret), which must not sit in clear in this table.
    response_body = EncryptedTextField(null=True)
    created_at = models.DateTimeField()
    expires_at = models.DateTimeField(db_index=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["owner", "key"], name="idempotency_owner_key_unique")
        ]
