"""Follow-up consultations (复诊): prior diagnoses, the consultation and its lifecycle
events, chat messages with a gap-free sequence, attachments and read markers.

The lifecycle (DOMAIN.md) is enforced in ``consultations.services`` through the
``TRANSITIONS`` table in ``consultations.lifecycle``; nothing else writes ``status``.
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils.translation import gettext_lazy as _

from backend.organisations.models import Department, Hospital, Practitioner
from backend.patients.models import PatientProfile


class Icd10Code(models.Model):
    """The ICD-10 table used to validate codes and show names (``manage.py load_icd10``)."""

    code = models.CharField(max_length=16, primary_key=True)
    name_zh = models.CharField(max_length=200, blank=True)
    name_en = models.CharField(max_length=300, blank=True)
    kind = models.CharField(max_length=20)

    class Meta:
        verbose_name = _("ICD-10 code")
        ordering = ["code"]

    def __str__(self) -> str:
        return f"{self.code} {self.display_name}"

    @property
    def display_name(self) -> str:
        return self.name_zh or self.name_en


class PriorDiagnosis(models.Model):
    """A diagnosis made at a physical institution: what makes a follow-up possible."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    profile = models.ForeignKey(
        PatientProfile, on_delete=models.PROTECT, related_name="prior_diagnoses"
    )
    institution = models.CharField(_("institution"), max_length=200)
    diagnosed_on = models.DateField(_("diagnosed on"))
    icd10_code = models.CharField(_("ICD-10 code"), max_length=16)
    icd10_name = models.CharField(_("ICD-10 name"), max_length=300)
    diagnosis_text = models.TextField(_("diagnosis as written"), blank=True)
    document = models.FileField(upload_to="records/%Y/%m/", null=True, blank=True)
    document_content_type = models.CharField(max_length=50, blank=True)
    document_size = models.PositiveIntegerField(null=True, blank=True)
    document_sha256 = models.CharField(max_length=64, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        verbose_name = _("prior diagnosis")
        verbose_name_plural = _("prior diagnoses")
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.icd10_code} {self.icd10_name} @ {self.institution}"


class ConsultationStatus(models.TextChoices):
    REQUESTED = "requested", _("Requested")
    WAITING = "waiting", _("Waiting for a doctor")
    IN_PROGRESS = "in_progress", _("In progress")
    ENDED = "ended", _("Ended")
    REFERRED_OFFLINE = "referred_offline", _("Referred offline")
    FIRST_VISIT_REFUSED = "first_visit_refused", _("Refused as a first visit")
    CANCELLED = "cancelled", _("Cancelled")
    EXPIRED = "expired", _("Expired unanswered")


class ConsultationMode(models.TextChoices):
    TEXT = "text", _("Text")
    AUDIO = "audio", _("Audio")
    VIDEO = "video", _("Video")


class Consultation(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    profile = models.ForeignKey(
        PatientProfile, on_delete=models.PROTECT, related_name="consultations"
    )
    account = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.PROTECT,
        related_name="consultations",
        help_text=_("The account that requested it (the patient or their guardian)"),
    )
    hospital = models.ForeignKey(Hospital, on_delete=models.PROTECT, related_name="consultations")
    department = models.ForeignKey(
        Department, on_delete=models.PROTECT, related_name="consultations"
    )
    requested_doctor = models.ForeignKey(
        Practitioner,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="+",
        help_text=_("Set when the patient chose a doctor; otherwise the department's queue"),
    )
    doctor = models.ForeignKey(
        Practitioner,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="consultations",
        help_text=_("The doctor who accepted it"),
    )
    prior_diagnosis = models.ForeignKey(
        PriorDiagnosis, on_delete=models.PROTECT, related_name="consultations"
    )
    mode = models.CharField(
        max_length=10, choices=ConsultationMode.choices, default=ConsultationMode.TEXT
    )
    status = models.CharField(max_length=30, choices=ConsultationStatus.choices, db_index=True)
    complaint = models.TextField(_("what the patient describes"), blank=True)
    status_reason = models.TextField(blank=True)
    diagnoses = models.JSONField(default=list, blank=True)
    note = models.JSONField(default=dict, blank=True, help_text=_("Medical-record note"))
    fee = models.PositiveIntegerField(_("fee (fen)"), default=0)
    requested_at = models.DateTimeField(db_index=True)
    expires_at = models.DateTimeField(db_index=True)
    accepted_at = models.DateTimeField(null=True, blank=True)
    closed_at = models.DateTimeField(null=True, blank=True)
    last_seq = models.PositiveIntegerField(default=0, help_text=_("Highest message seq"))
    call_started_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name = _("consultation")
        ordering = ["-requested_at"]
        indexes = [
            models.Index(fields=["department", "status", "requested_at"]),
            models.Index(fields=["doctor", "status"]),
            models.Index(fields=["account", "-requested_at"]),
        ]

    def __str__(self) -> str:
        return f"{self.profile.real_name} · {self.get_status_display()}"


class ConsultationEvent(models.Model):
    """One row per lifecycle transition: who, when, from, to, why."""

    id = models.BigAutoField(primary_key=True)
    consultation = models.ForeignKey(Consultation, on_delete=models.PROTECT, related_name="events")
    action = models.CharField(max_length=30)
    from_status = models.CharField(max_length=30, blank=True)
    to_status = models.CharField(max_length=30)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    reason = models.TextField(blank=True)
    data = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(db_index=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.action}: {self.from_status or '-'} → {self.to_status}"


class Attachment(models.Model):
    """An image or document uploaded over HTTP and referenced from a chat message."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    consultation = models.ForeignKey(
        Consultation, on_delete=models.PROTECT, related_name="attachments"
    )
    uploaded_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )
    file = models.FileField(upload_to="chat/%Y/%m/")
    filename = models.CharField(max_length=200)
    content_type = models.CharField(max_length=50)
    size = models.PositiveIntegerField()
    sha256 = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.filename


class MessageKind(models.TextChoices):
    TEXT = "text", _("Text")
    IMAGE = "image", _("Image")
    FILE = "file", _("File")
    SYSTEM = "system", _("System")


class Message(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    consultation = models.ForeignKey(
        Consultation, on_delete=models.PROTECT, related_name="messages"
    )
    seq = models.PositiveIntegerField()
    sender = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    kind = models.CharField(max_length=10, choices=MessageKind.choices)
    text = models.TextField(blank=True)
    attachment = models.ForeignKey(
        Attachment, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    client_msg_id = models.UUIDField(null=True, blank=True)
    created_at = models.DateTimeField()

    class Meta:
        ordering = ["consultation", "seq"]
        constraints = [
            models.UniqueConstraint(fields=["consultation", "seq"], name="message_seq_unique"),
            models.UniqueConstraint(
                fields=["consultation", "sender", "client_msg_id"],
                condition=Q(client_msg_id__isnull=False),
                name="message_client_id_unique",
            ),
        ]

    def __str__(self) -> str:
        return f"#{self.seq} {self.kind}"


class ReadMarker(models.Model):
    consultation = models.ForeignKey(
        Consultation, on_delete=models.CASCADE, related_name="read_markers"
    )
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    up_to_seq = models.PositiveIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["consultation", "user"], name="read_marker_unique")
        ]

    def __str__(self) -> str:
        return f"{self.user_id} read ≤ {self.up_to_seq}"
