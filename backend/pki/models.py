"""Each hospital's certificate authority and the signing certificates it issues.

A hospital's root CA is created at onboarding; it issues X.509 signing certificates to
its doctors and pharmacists (and one seal certificate for the institution itself). The
private keys are encrypted at rest with the field keys (``EncryptedTextField``).
Revocation is a timestamp on the certificate row; the published CRL is built from it.
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.utils.translation import gettext_lazy as _

from backend.crypto.fields import EncryptedTextField
from backend.organisations.models import Hospital, Practitioner


class Algorithm(models.TextChoices):
    ECDSA_P256 = "ecdsa-p256-sha256", _("ECDSA P-256 with SHA-256 (DER signature)")
    ED25519 = "ed25519", _("Ed25519")


class CertificateRole(models.TextChoices):
    DOCTOR = "doctor", _("Doctor")
    PHARMACIST = "pharmacist", _("Pharmacist")
    INSTITUTION = "institution", _("Institution seal")


class CertificateAuthority(models.Model):
    hospital = models.OneToOneField(
        Hospital, on_delete=models.PROTECT, related_name="certificate_authority"
    )
    algorithm = models.CharField(max_length=20, choices=Algorithm.choices)
    certificate_pem = models.TextField()
    fingerprint_sha256 = models.CharField(max_length=64, unique=True)
    private_key_pem = EncryptedTextField()
    #: Incremented each time a CRL is published (RFC 5280 cRLNumber).
    crl_number = models.PositiveBigIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name = _("certificate authority")
        verbose_name_plural = _("certificate authorities")

    def __str__(self) -> str:
        return f"CA of {self.hospital}"


class SigningCertificate(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    authority = models.ForeignKey(
        CertificateAuthority, on_delete=models.PROTECT, related_name="certificates"
    )
    role = models.CharField(max_length=20, choices=CertificateRole.choices)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="signing_certificates",
    )
    practitioner = models.ForeignKey(
        Practitioner,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="signing_certificates",
    )
    algorithm = models.CharField(max_length=20, choices=Algorithm.choices)
    serial_number = models.CharField(max_length=40, unique=True, help_text=_("hexadecimal"))
    fingerprint_sha256 = models.CharField(max_length=64, unique=True)
    certificate_pem = models.TextField()
    #: Empty when the key lives in an external signing service.
    private_key_pem = EncryptedTextField(blank=True)
    not_before = models.DateTimeField()
    not_after = models.DateTimeField()
    revoked_at = models.DateTimeField(null=True, blank=True)
    revocation_reason = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name = _("signing certificate")
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["user", "role", "revoked_at"])]

    def __str__(self) -> str:
        return f"{self.get_role_display()} certificate {self.serial_number}"
