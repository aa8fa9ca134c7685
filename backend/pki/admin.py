"""Administration of certificate authorities and signing certificates: read-only rows
(keys are never shown), with actions that go through the services."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from backend.audit.services import RequestMeta
from backend.pki.models import CertificateAuthority, SigningCertificate
from backend.pki.services import certificate_issue, certificate_revoke


class _ReadOnly:
    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(CertificateAuthority)
class CertificateAuthorityAdmin(_ReadOnly, admin.ModelAdmin[CertificateAuthority]):
    list_display = ("hospital", "algorithm", "fingerprint_sha256", "crl_number", "created_at")
    fields = ("hospital", "algorithm", "fingerprint_sha256", "certificate_pem", "crl_number")


@admin.register(SigningCertificate)
class SigningCertificateAdmin(_ReadOnly, admin.ModelAdmin[SigningCertificate]):
    list_display = (
        "serial_number",
        "role",
        "user",
        "authority",
        "not_before",
        "not_after",
        "revoked_at",
        "revocation_reason",
    )
    list_filter = ("role", "authority", "revoked_at")
    search_fields = ("serial_number", "user__username", "practitioner__practice_certificate_number")
    fields = (
        "serial_number",
        "role",
        "user",
        "practitioner",
        "authority",
        "algorithm",
        "fingerprint_sha256",
        "certificate_pem",
        "not_before",
        "not_after",
        "revoked_at",
        "revocation_reason",
    )
    actions = ["revoke", "reissue"]

    @admin.action(description="Revoke the selected certificates (key compromise or leaving)")
    def revoke(self, request: HttpRequest, queryset: QuerySet[SigningCertificate]) -> None:
        count = 0
        for certificate in queryset.filter(revoked_at=None):
            certificate_revoke(
                certificate=certificate,
                reason="revoked by the administrator",
                actor=request.user,  # type: ignore[arg-type]
                meta=RequestMeta.from_request(request),
            )
            count += 1
        messages.success(request, f"Revoked {count} certificate(s); the CRL is updated.")

    @admin.action(description="Issue a new certificate to the holders (replaces the old one)")
    def reissue(self, request: HttpRequest, queryset: QuerySet[SigningCertificate]) -> None:
        holders = {c.practitioner for c in queryset.select_related("practitioner__hospital")}
        for practitioner in holders:
            if practitioner is not None:
                certificate_issue(
                    practitioner=practitioner,
                    actor=request.user,  # type: ignore[arg-type]
                    meta=RequestMeta.from_request(request),
                )
        messages.success(request, f"Issued {len(holders)} certificate(s).")
