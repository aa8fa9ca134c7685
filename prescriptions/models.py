"""The drug catalogue, prescriptions with their lines, versions (each signed), lifecycle
events and the dispense ledger.

The lifecycle (DOMAIN.md, "Prescription lifecycle") is enforced in
``prescriptions.services`` through the ``TRANSITIONS`` table of
``prescriptions.lifecycle``; nothing else writes ``status``.
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils.translation import gettext_lazy as _

from backend.crypto.fields import EncryptedTextField
from backend.organisations.models import Hospital, Pharmacy, PharmacyStaff, Practitioner
from backend.patients.models import PatientProfile
from backend.pki.models import SigningCertificate
from consultations.models import Consultation


class CodeSystem(models.TextChoices):
    NHSA = "nhsa", _("National medical-insurance drug code (23 characters)")
    HOSPITAL = "hospital", _("The hospital's own code")


class RxClass(models.TextChoices):
    RX = "rx", _("Prescription only")
    OTC_A = "otc_a", _("OTC class A")
    OTC_B = "otc_b", _("OTC class B")


class ControlClass(models.TextChoices):
    """Specially controlled drugs (特殊管理药品) may not be prescribed online (DOMAIN rule 7)."""

    NONE = "none", _("Not specially controlled")
    NARCOTIC = "narcotic", _("Narcotic")
    PSYCHOTROPIC_1 = "psychotropic_1", _("Psychotropic, class I")
    PSYCHOTROPIC_2 = "psychotropic_2", _("Psychotropic, class II")
    TOXIC = "toxic", _("Toxic (medical use)")
    RADIOACTIVE = "radioactive", _("Radioactive")
    PRECURSOR = "precursor", _("Precursor chemical")


class Drug(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    code = models.CharField(_("code"), max_length=32, unique=True)
    code_system = models.CharField(max_length=10, choices=CodeSystem.choices)
    generic_name = models.CharField(_("generic name"), max_length=200, db_index=True)
    trade_name = models.CharField(_("trade name"), max_length=200, blank=True)
    specification = models.CharField(_("specification"), max_length=100)
    dosage_form = models.CharField(_("dosage form"), max_length=50)
    unit = models.CharField(_("dispensing unit"), max_length=20)
    route = models.CharField(_("route"), max_length=30)
    rx_class = models.CharField(max_length=10, choices=RxClass.choices, default=RxClass.RX)
    control_class = models.CharField(
        max_length=20, choices=ControlClass.choices, default=ControlClass.NONE, db_index=True
    )
    unit_price = models.PositiveIntegerField(_("unit price (fen)"))
    #: How much one dispensing unit holds, for the supply a quantity gives (DOMAIN rule 9):
    #: ``pack_size`` smallest units (tablets, capsules, puffs) of ``unit_strength``
    #: ``strength_unit`` each. Unknown for some drugs; then only the line's days count.
    pack_size = models.PositiveIntegerField(_("units per pack"), null=True, blank=True)
    unit_strength = models.DecimalField(
        _("strength per unit"), max_digits=12, decimal_places=4, null=True, blank=True
    )
    strength_unit = models.CharField(_("strength unit"), max_length=10, blank=True)
    is_active = models.BooleanField(default=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = _("drug")
        ordering = ["generic_name", "specification"]

    def __str__(self) -> str:
        return f"{self.generic_name} {self.specification}"

    @property
    def is_controlled(self) -> bool:
        return self.control_class != ControlClass.NONE


class PrescriptionStatus(models.TextChoices):
    DRAFT = "draft", _("Draft")
    SIGNED = "signed", _("Signed")
    UNDER_REVIEW = "under_review", _("Under pharmacist review")
    REVIEW_REJECTED = "review_rejected", _("Rejected by review")
    ACTIVE = "active", _("Active")
    CLAIMED = "claimed", _("Claimed by a pharmacy")
    DISPENSED = "dispensed", _("Dispensed")
    SHIPPED = "shipped", _("Shipped")
    DELIVERED = "delivered", _("Delivered")
    CANCELLED = "cancelled", _("Cancelled")
    EXPIRED = "expired", _("Expired")


class Fulfilment(models.TextChoices):
    PICKUP = "pickup", _("Pick-up at a pharmacy")
    DELIVERY = "delivery", _("Home delivery")


class Prescription(models.Model):
    """One prescription; each signed version is a ``PrescriptionVersion`` row."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    consultation = models.ForeignKey(
        Consultation, on_delete=models.PROTECT, related_name="prescriptions"
    )
    hospital = models.ForeignKey(Hospital, on_delete=models.PROTECT, related_name="+")
    profile = models.ForeignKey(
        PatientProfile, on_delete=models.PROTECT, related_name="prescriptions"
    )
    doctor = models.ForeignKey(Practitioner, on_delete=models.PROTECT, related_name="+")
    status = models.CharField(
        max_length=20,
        choices=PrescriptionStatus.choices,
        default=PrescriptionStatus.DRAFT,
        db_index=True,
    )
    status_reason = models.CharField(max_length=500, blank=True)
    version = models.PositiveIntegerField(default=1)
    kind = models.CharField(max_length=20, default="western")
    diagnoses = models.JSONField(default=list)
    validity_days = models.PositiveSmallIntegerField(default=1)
    chronic_reason = models.CharField(max_length=500, blank=True)
    guardian = models.JSONField(null=True, blank=True)
    specialist = models.JSONField(null=True, blank=True)
    total = models.PositiveIntegerField(_("total (fen)"), default=0)
    issued_at = models.DateTimeField(null=True, blank=True)
    valid_until = models.DateTimeField(null=True, blank=True, db_index=True)
    #: 128-bit code the patient gives a pharmacy; shown to the patient once active.
    access_code = EncryptedTextField(blank=True)
    fulfilment = models.CharField(max_length=10, choices=Fulfilment.choices, blank=True)
    pickup_pharmacy = models.ForeignKey(
        Pharmacy, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    delivery_address = EncryptedTextField(blank=True)
    claimed_by = models.ForeignKey(
        Pharmacy, on_delete=models.PROTECT, null=True, blank=True, related_name="claims"
    )
    claim_secret = EncryptedTextField(blank=True)
    claimed_at = models.DateTimeField(null=True, blank=True)
    claim_touched_at = models.DateTimeField(null=True, blank=True, db_index=True)
    cancel_requested_at = models.DateTimeField(null=True, blank=True)
    cancel_requested_reason = models.CharField(max_length=500, blank=True)
    dispensed_at = models.DateTimeField(null=True, blank=True)
    dispensed_by = models.ForeignKey(
        Pharmacy, on_delete=models.PROTECT, null=True, blank=True, related_name="dispensed"
    )
    courier = models.CharField(max_length=50, blank=True)
    tracking_number = models.CharField(max_length=64, blank=True)
    shipped_at = models.DateTimeField(null=True, blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    receipt = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)

    #: Not a column: the current version with its certificates, when the service that
    #: holds the row lock has just read or written it (``signing`` reads it from here
    #: rather than again: the regulator payload and the response come right after).
    version_in_hand: PrescriptionVersion | None = None

    class Meta:
        verbose_name = _("prescription")
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"Prescription {self.pk} v{self.version} ({self.status})"

    def current_version_in_hand(self) -> PrescriptionVersion | None:
        """``version_in_hand`` if it is still the current version."""
        held = self.version_in_hand
        return held if held is not None and held.version == self.version else None


class PrescriptionLine(models.Model):
    prescription = models.ForeignKey(Prescription, on_delete=models.CASCADE, related_name="lines")
    position = models.PositiveSmallIntegerField()
    drug = models.ForeignKey(Drug, on_delete=models.PROTECT, related_name="+")
    #: What the catalogue said when the line was written (the signed content uses it).
    drug_code = models.CharField(max_length=32)
    drug_name = models.CharField(max_length=200)
    specification = models.CharField(max_length=100)
    unit = models.CharField(max_length=20)
    unit_price = models.PositiveIntegerField()
    dose = models.DecimalField(max_digits=10, decimal_places=3)
    dose_unit = models.CharField(max_length=20)
    frequency = models.CharField(max_length=30)
    route = models.CharField(max_length=30)
    days = models.PositiveSmallIntegerField()
    quantity = models.PositiveIntegerField()
    dispensed_quantity = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["prescription", "position"]
        constraints = [
            models.UniqueConstraint(
                fields=["prescription", "position"], name="prescription_line_position"
            ),
            models.CheckConstraint(
                condition=Q(dispensed_quantity__lte=models.F("quantity")),
                name="dispensed_within_prescribed",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.drug_name} × {self.quantity}"


class PrescriptionVersion(models.Model):
    """One signed version: the exact signed bytes, the doctor's signature, and the
    pharmacist's review with its countersignature."""

    prescription = models.ForeignKey(
        Prescription, on_delete=models.PROTECT, related_name="versions"
    )
    version = models.PositiveIntegerField()
    signed_bytes = models.BinaryField()
    doctor_signature = models.BinaryField()
    doctor_certificate = models.ForeignKey(
        SigningCertificate, on_delete=models.PROTECT, related_name="+"
    )
    signed_at = models.DateTimeField()
    review_result = models.CharField(max_length=10, blank=True)  # approved | rejected
    review_reason = models.CharField(max_length=500, blank=True)
    reviewed_by = models.ForeignKey(
        Practitioner, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    reviewed_at = models.DateTimeField(null=True, blank=True)
    review_bytes = models.BinaryField(null=True, blank=True)
    pharmacist_signature = models.BinaryField(null=True, blank=True)
    pharmacist_certificate = models.ForeignKey(
        SigningCertificate, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    superseded_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["prescription", "version"]
        constraints = [
            models.UniqueConstraint(
                fields=["prescription", "version"], name="prescription_version_unique"
            )
        ]

    def __str__(self) -> str:
        return f"{self.prescription_id} v{self.version}"


class PrescriptionEvent(models.Model):
    """One row per lifecycle change: who, when, from, to, why (the audit trail's source
    and the regulator records')."""

    prescription = models.ForeignKey(Prescription, on_delete=models.PROTECT, related_name="events")
    action = models.CharField(max_length=30)
    from_status = models.CharField(max_length=20, blank=True)
    to_status = models.CharField(max_length=20)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    pharmacy = models.ForeignKey(
        Pharmacy, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    reason = models.CharField(max_length=500, blank=True)
    data = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(db_index=True)

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return f"{self.prescription_id}: {self.action}"


class DispenseEntry(models.Model):
    """The per-line dispense ledger: what left which pharmacy, from which batch, by whom."""

    line = models.ForeignKey(PrescriptionLine, on_delete=models.PROTECT, related_name="dispenses")
    pharmacy = models.ForeignKey(Pharmacy, on_delete=models.PROTECT, related_name="+")
    staff = models.ForeignKey(
        PharmacyStaff, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    quantity = models.PositiveIntegerField()
    batch_number = models.CharField(max_length=64)
    pharmacist_name = models.CharField(max_length=100)
    pharmacist_licence = models.CharField(max_length=64)
    created_at = models.DateTimeField()

    class Meta:
        ordering = ["line", "id"]

    def __str__(self) -> str:
        return f"{self.line_id}: {self.quantity} from {self.batch_number}"


class AccessCodeFailure(models.Model):
    """A wrong access code: counted for the rate limit per pharmacy and per prescription."""

    pharmacy = models.ForeignKey(Pharmacy, on_delete=models.CASCADE, related_name="+")
    prescription_id = models.UUIDField(db_index=True)
    created_at = models.DateTimeField(db_index=True)

    class Meta:
        indexes = [models.Index(fields=["pharmacy", "created_at"])]

    def __str__(self) -> str:
        return f"{self.pharmacy_id} → {self.prescription_id}"


class ControlledDrugAttempt(models.Model):
    """A refused attempt to prescribe a specially controlled drug (DOMAIN rule 7): kept
    even though the draft was refused, for the hospital and the regulator alert."""

    consultation = models.ForeignKey(Consultation, on_delete=models.PROTECT, related_name="+")
    doctor = models.ForeignKey(Practitioner, on_delete=models.PROTECT, related_name="+")
    drugs = models.JSONField()
    created_at = models.DateTimeField(db_index=True)

    def __str__(self) -> str:
        return f"controlled drug attempt by {self.doctor_id}"
