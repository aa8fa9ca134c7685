"""Real-name patient profiles (DOMAIN rules 2 and 14).

An account holds one ``self`` profile and any number of dependants (a child, an
elderly parent) for whom the account holder is the guardian or agent. ID numbers and
phone numbers are encrypted at rest and found through blind indexes.
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils.translation import gettext_lazy as _

from backend.crypto.fields import (
    BlindIndexField,
    EncryptedTextField,
    normalize_identity,
    normalize_phone,
)


class IdDocumentType(models.TextChoices):
    RESIDENT_ID = "resident_id", _("Resident identity card")
    PASSPORT = "passport", _("Passport")
    HK_MACAO_PERMIT = "hk_macao_permit", _("Mainland travel permit for HK and Macao residents")
    TAIWAN_PERMIT = "taiwan_permit", _("Mainland travel permit for Taiwan residents")
    FOREIGNER_RESIDENCE = "foreigner_residence", _("Foreign permanent resident ID card")
    BIRTH_CERTIFICATE = "birth_certificate", _("Birth certificate (infants)")


class Sex(models.TextChoices):
    MALE = "male", _("Male")
    FEMALE = "female", _("Female")
    UNKNOWN = "unknown", _("Unknown")


class Relation(models.TextChoices):
    SELF = "self", _("Self")
    CHILD = "child", _("Child")
    PARENT = "parent", _("Parent")
    SPOUSE = "spouse", _("Spouse")
    OTHER_GUARDIANSHIP = "other", _("Other (legal guardianship)")


class PatientProfile(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    account = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.PROTECT,
        related_name="patient_profiles",
        help_text=_("The account holder; for a dependant, the guardian's account"),
    )
    relation = models.CharField(
        _("relation to the account holder"),
        max_length=20,
        choices=Relation.choices,
        default=Relation.SELF,
    )
    real_name = models.CharField(_("real name"), max_length=100)
    id_type = models.CharField(_("ID document type"), max_length=30, choices=IdDocumentType.choices)
    id_number = EncryptedTextField(_("ID document number"))
    id_number_index = BlindIndexField(source="id_number", normalizer=normalize_identity)
    birth_date = models.DateField(_("birth date"))
    sex = models.CharField(_("sex"), max_length=10, choices=Sex.choices)
    phone = EncryptedTextField(_("phone"), null=True, blank=True)
    phone_index = BlindIndexField(source="phone", normalizer=normalize_phone)
    allergies = models.JSONField(
        _("allergies"),
        default=list,
        blank=True,
        help_text=_("Known allergens (drug names or classes), one per entry"),
    )
    sensitive_data_consent_at = models.DateTimeField(
        _("consent to process sensitive data"), null=True, blank=True
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = _("patient profile")
        ordering = ["account", "created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["account"], condition=Q(relation="self"), name="one_self_profile"
            ),
            models.UniqueConstraint(
                fields=["id_type", "id_number_index"], name="patient_id_document_unique"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.real_name} ({self.get_relation_display()})"

    @property
    def is_dependant(self) -> bool:
        return self.relation != Relation.SELF
