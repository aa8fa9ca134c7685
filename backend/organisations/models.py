"""Provinces and their regulators, hospitals, departments, pharmacies and the people who
work for them. Each person-to-organisation link is its own profile row, so a role's
scope (a doctor's hospital, a regulator's province) is answered by one join."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.utils.translation import gettext_lazy as _

from backend.crypto.fields import EncryptedTextField
from backend.organisations.validators import validate_uscc


class Province(models.Model):
    code = models.CharField(_("code"), max_length=6, unique=True, help_text=_("GB/T 2260 code"))
    name = models.CharField(_("name"), max_length=50)
    regulator_name = models.CharField(
        _("regulator"), max_length=200, help_text=_("The provincial health commission")
    )

    class Meta:
        verbose_name = _("province")
        ordering = ["code"]

    def __str__(self) -> str:
        return self.name


class Hospital(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(_("name"), max_length=200)
    province = models.ForeignKey(Province, on_delete=models.PROTECT, related_name="hospitals")
    unified_social_credit_code = models.CharField(
        _("unified social credit code"), max_length=18, unique=True, validators=[validate_uscc]
    )
    practice_licence_number = models.CharField(_("practice licence number"), max_length=64)
    practice_licence_valid_until = models.DateField(_("practice licence valid until"))
    internet_hospital_licence_number = models.CharField(
        _("internet hospital licence number"), max_length=64, blank=True
    )
    internet_hospital_licence_valid_until = models.DateField(
        _("internet hospital licence valid until"), null=True, blank=True
    )
    platform_id = models.CharField(
        _("regulator platform id"),
        max_length=64,
        blank=True,
        help_text=_("Issued by the provincial platform at onboarding"),
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name = _("hospital")
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Department(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    hospital = models.ForeignKey(Hospital, on_delete=models.CASCADE, related_name="departments")
    code = models.CharField(_("code"), max_length=20)
    name = models.CharField(_("name"), max_length=100)
    is_active = models.BooleanField(_("active"), default=True)
    consultation_fee = models.PositiveIntegerField(
        _("consultation fee (fen)"),
        default=0,
        help_text=_("Paid when a consultation is requested; 0: nothing is charged up front"),
    )

    class Meta:
        verbose_name = _("department")
        ordering = ["hospital", "code"]
        constraints = [
            models.UniqueConstraint(fields=["hospital", "code"], name="department_code_unique")
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.code})"


class PractitionerKind(models.TextChoices):
    DOCTOR = "doctor", _("Doctor")
    PHARMACIST = "pharmacist", _("Pharmacist")


class FilingStatus(models.TextChoices):
    PENDING = "pending", _("Pending")
    FILED = "filed", _("Filed")
    SUSPENDED = "suspended", _("Suspended")
    REVOKED = "revoked", _("Revoked")


class Practitioner(models.Model):
    """A doctor or a hospital pharmacist, filed (备案) at one hospital."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="practitioner"
    )
    kind = models.CharField(_("kind"), max_length=20, choices=PractitionerKind.choices)
    #: For the regulator's staff filing (DOMAIN.md, "Filings"); encrypted at rest.
    id_type = models.CharField(_("ID document type"), max_length=30, default="resident_id")
    id_number = EncryptedTextField(_("ID document number"), blank=True)
    hospital = models.ForeignKey(Hospital, on_delete=models.PROTECT, related_name="practitioners")
    department = models.ForeignKey(
        Department, on_delete=models.PROTECT, null=True, blank=True, related_name="practitioners"
    )
    practice_certificate_number = models.CharField(
        _("practice certificate number"), max_length=64, unique=True
    )
    qualification_certificate_number = models.CharField(
        _("qualification certificate number"), max_length=64
    )
    title = models.CharField(_("title"), max_length=50)
    practice_start_date = models.DateField(_("independent practice since"))
    filing_status = models.CharField(
        _("filing status"),
        max_length=20,
        choices=FilingStatus.choices,
        default=FilingStatus.PENDING,
    )
    filed_at = models.DateTimeField(_("filed at"), null=True, blank=True)
    licence_valid_until = models.DateField(_("licence valid until"))
    last_identity_check_at = models.DateTimeField(_("last identity check"), null=True, blank=True)
    on_duty = models.BooleanField(_("on duty"), default=False)
    consultation_fee = models.PositiveIntegerField(
        _("consultation fee (fen)"),
        null=True,
        blank=True,
        help_text=_("A doctor's own fee; empty: the department's"),
    )

    class Meta:
        verbose_name = _("practitioner")
        ordering = ["hospital", "kind", "practice_certificate_number"]

    def __str__(self) -> str:
        return f"{self.user.display_name or self.user.username} · {self.get_kind_display()}"


class Pharmacy(models.Model):
    """A retail pharmacy that claims and dispenses circulated prescriptions."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    code = models.CharField(_("code"), max_length=32, unique=True)
    name = models.CharField(_("name"), max_length=200)
    province = models.ForeignKey(Province, on_delete=models.PROTECT, related_name="pharmacies")
    address = models.CharField(_("address"), max_length=300, blank=True)
    is_active = models.BooleanField(_("active"), default=True)

    class Meta:
        verbose_name = _("pharmacy")
        verbose_name_plural = _("pharmacies")
        ordering = ["code"]

    def __str__(self) -> str:
        return f"{self.name} ({self.code})"


class PharmacyStaff(models.Model):
    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="pharmacy_staff"
    )
    pharmacy = models.ForeignKey(Pharmacy, on_delete=models.PROTECT, related_name="staff")
    is_licensed_pharmacist = models.BooleanField(_("licensed pharmacist"), default=False)

    class Meta:
        verbose_name = _("pharmacy staff member")

    def __str__(self) -> str:
        return f"{self.user} @ {self.pharmacy.code}"


class RegulatorOfficial(models.Model):
    """An official of a provincial regulator: sees that province only."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="regulator_official"
    )
    province = models.ForeignKey(Province, on_delete=models.PROTECT, related_name="officials")

    class Meta:
        verbose_name = _("regulator official")

    def __str__(self) -> str:
        return f"{self.user} · {self.province}"


class HospitalAdministrator(models.Model):
    """A hospital IT or medical-affairs administrator: manages that hospital only."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="hospital_administrator"
    )
    hospital = models.ForeignKey(Hospital, on_delete=models.PROTECT, related_name="administrators")

    class Meta:
        verbose_name = _("hospital administrator")

    def __str__(self) -> str:
        return f"{self.user} · {self.hospital}"
