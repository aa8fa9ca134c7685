"""The drug catalogue (issue 6, item 1). Prescriptions and their lifecycle follow."""

from __future__ import annotations

import uuid

from django.db import models
from django.utils.translation import gettext_lazy as _


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
