"""Public PKI endpoints: each hospital's root certificate and its current revocation
list, so that pharmacies and the regulator can verify signatures offline."""

from __future__ import annotations

from uuid import UUID

from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework.permissions import AllowAny
from rest_framework.request import Request

from backend.api.problems import DomainError
from backend.api.views import ApiView
from backend.pki.models import CertificateAuthority
from backend.pki.services import crl_der


def _authority(hospital_id: UUID) -> CertificateAuthority:
    found = (
        CertificateAuthority.objects.select_related("hospital")
        .filter(hospital_id=hospital_id)
        .first()
    )
    if found is None:
        raise DomainError("not_found", "This hospital has no certificate authority.")
    return found


class RootCertificateApi(ApiView):
    permission_classes = [AllowAny]
    authentication_classes: list[type] = []

    @extend_schema(
        operation_id="pki_root_certificate",
        responses={(200, "application/x-pem-file"): OpenApiTypes.STR},
    )
    def get(self, request: Request, hospital_id: UUID) -> HttpResponse:
        authority = _authority(hospital_id)
        response = HttpResponse(authority.certificate_pem, content_type="application/x-pem-file")
        response["X-Certificate-SHA256"] = authority.fingerprint_sha256
        return response


class CrlApi(ApiView):
    permission_classes = [AllowAny]
    authentication_classes: list[type] = []

    @extend_schema(
        operation_id="pki_crl", responses={(200, "application/pkix-crl"): OpenApiTypes.BINARY}
    )
    def get(self, request: Request, hospital_id: UUID) -> HttpResponse:
        response = HttpResponse(
            crl_der(authority=_authority(hospital_id)), content_type="application/pkix-crl"
        )
        response["Cache-Control"] = "public, max-age=300"
        return response
