"""The transactional outbox to the provincial platform, alerts, and the feed sequence.

A record is written in the same transaction as the business event it reports
(``regulators.services.outbox_append``) and delivered afterwards by Celery
(``regulators.services.record_deliver``). ``record_id`` is the idempotency key at the
platform; ``id`` orders records, and within one aggregate (a consultation, a
prescription) a record is sent only after every earlier one was acknowledged.
``feed_seq`` is given at acknowledgement, gap-free per province: the regulator's feed
resumes by it.
"""

from __future__ import annotations

import uuid

from django.db import models
from django.utils.translation import gettext_lazy as _

from backend.crypto.fields import EncryptedJSONField, EncryptedTextField
from backend.organisations.models import Hospital, Province


class Adapter(models.TextChoices):
    JSON_HMAC = "json_hmac", _("Reference JSON + HMAC-SHA256 (CONTRACT section 6)")
    NHSA_SM4 = "nhsa_sm4", _("SM3-signed, SM4-encrypted JSON envelope (NHSA style)")


class PlatformConnection(models.Model):
    """How one province's platform is reached: the app id and secret it issued at
    onboarding, and which protocol adapter speaks to it."""

    province = models.OneToOneField(
        Province, on_delete=models.PROTECT, related_name="platform_connection"
    )
    adapter = models.CharField(max_length=20, choices=Adapter.choices, default=Adapter.JSON_HMAC)
    base_url = models.URLField(_("platform base URL"))
    app_id = models.CharField(_("app id"), max_length=64)
    app_secret = EncryptedTextField(_("app secret"))
    #: The SM4 key (hex, 16 bytes) for the NHSA-style envelope; empty for JSON + HMAC.
    sm4_key = EncryptedTextField(_("SM4 key (hex)"), blank=True)
    timeout_seconds = models.FloatField(default=5.0)
    enabled = models.BooleanField(default=True)

    class Meta:
        verbose_name = _("platform connection")

    def __str__(self) -> str:
        return f"{self.province} → {self.base_url}"


class RecordStatus(models.TextChoices):
    PENDING = "pending", _("Pending")
    ACKNOWLEDGED = "acknowledged", _("Acknowledged")
    DEAD = "dead", _("Dead letter")


class OutboxRecord(models.Model):
    id = models.BigAutoField(primary_key=True)
    record_id = models.UUIDField(unique=True, default=uuid.uuid4, editable=False)
    record_type = models.CharField(max_length=40, db_index=True)
    hospital = models.ForeignKey(Hospital, on_delete=models.PROTECT, related_name="+")
    province = models.ForeignKey(Province, on_delete=models.PROTECT, related_name="+")
    aggregate_type = models.CharField(max_length=30)
    aggregate_id = models.CharField(max_length=64)
    occurred_at = models.DateTimeField()
    created_at = models.DateTimeField(db_index=True)
    #: Encrypted at rest: it names patients and practitioners by ID number (DOMAIN rule 14).
    payload = EncryptedJSONField()
    payload_signature = models.JSONField()
    status = models.CharField(
        max_length=20, choices=RecordStatus.choices, default=RecordStatus.PENDING
    )
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField()
    #: A worker holds the record until then; a crashed worker's lease simply runs out.
    locked_until = models.DateTimeField(null=True, blank=True)
    last_error = models.CharField(max_length=500, blank=True)
    last_status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    ack_id = models.CharField(max_length=100, blank=True)
    acknowledged_at = models.DateTimeField(null=True, blank=True)
    dead_code = models.CharField(max_length=64, blank=True)
    dead_message = models.CharField(max_length=500, blank=True)
    delay_alerted = models.BooleanField(default=False)
    feed_seq = models.PositiveBigIntegerField(null=True, blank=True)

    class Meta:
        verbose_name = _("outbox record")
        ordering = ["id"]
        indexes = [
            models.Index(fields=["status", "next_attempt_at"]),
            models.Index(fields=["aggregate_type", "aggregate_id", "id"]),
            models.Index(fields=["province", "feed_seq"]),
            # A drain walks what is pending in id order and stops at a batch; the table
            # keeps every acknowledged record, so the walk must not pass through those.
            models.Index(
                fields=["id"], condition=models.Q(status="pending"), name="outbox_pending_idx"
            ),
            # "Is this hospital's institution filing acknowledged?" is asked for every
            # record a drain looks at: one index entry per hospital, not all its records.
            models.Index(
                fields=["hospital", "id"],
                condition=models.Q(record_type="filing.institution"),
                name="outbox_filing_idx",
            ),
        ]
        constraints = [
            models.UniqueConstraint(fields=["province", "feed_seq"], name="outbox_feed_seq_unique")
        ]

    def __str__(self) -> str:
        return f"{self.record_type} {self.record_id} ({self.status})"

    @property
    def delivery_latency_seconds(self) -> float | None:
        if self.acknowledged_at is None:
            return None
        return (self.acknowledged_at - self.created_at).total_seconds()


class FeedCounter(models.Model):
    """The last feed sequence number given in a province (row-locked on each ack)."""

    province = models.OneToOneField(Province, on_delete=models.CASCADE, related_name="+")
    last_seq = models.PositiveBigIntegerField(default=0)

    def __str__(self) -> str:
        return f"{self.province}: {self.last_seq}"


class AlertKind(models.TextChoices):
    UPLOAD_DELAY = "upload_delay", _("Upload delayed past the limit")
    CONTROLLED_DRUG = "controlled_drug", _("Controlled drug prescription refused")
    CONSULTATION_EXPIRED = "consultation_expired", _("Consultation expired unanswered")
    DEAD_LETTER = "dead_letter", _("Record refused by the platform")
    PAYMENT_MISMATCH = "payment_mismatch", _("Payment notification mismatch")


class Alert(models.Model):
    """An alert for the hospital's administrators (and, as an outbox record, for the
    regulator). ``rule`` names the rule broken, as the provinces' scoring does."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    kind = models.CharField(max_length=30, choices=AlertKind.choices, db_index=True)
    hospital = models.ForeignKey(Hospital, on_delete=models.PROTECT, related_name="alerts")
    province = models.ForeignKey(Province, on_delete=models.PROTECT, related_name="+")
    rule = models.CharField(max_length=200)
    subject_type = models.CharField(max_length=30, blank=True)
    subject_id = models.CharField(max_length=64, blank=True)
    details = models.JSONField(default=dict)
    created_at = models.DateTimeField(db_index=True)
    acknowledged_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = _("alert")
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} · {self.hospital}"
