"""Filings (备案) the platform receives at onboarding and on every change: the
institution (with its seal certificate, against which the platform verifies every later
record's signature) and each doctor and pharmacist."""

from __future__ import annotations

from django.db import transaction
from django.utils import timezone

from backend.organisations.models import Hospital, Practitioner
from backend.pki.models import CertificateRole
from backend.pki.services import certificate_current, seal_certificate
from regulators.models import OutboxRecord
from regulators.services import hospital_code, outbox_append


def filing_institution(*, hospital: Hospital) -> OutboxRecord:
    seal = seal_certificate(hospital=hospital)
    with transaction.atomic():
        return outbox_append(
            hospital=hospital,
            record_type="filing.institution",
            aggregate_type="filing",
            aggregate_id=f"hospital:{hospital.pk}",
            occurred_at=timezone.now(),
            payload={
                "platform_id": hospital_code(hospital),
                "uscc": hospital.unified_social_credit_code,
                "name": hospital.name,
                "practice_licence_number": hospital.practice_licence_number,
                "practice_licence_valid_until": hospital.practice_licence_valid_until.isoformat(),
                "seal_certificate_pem": seal.certificate_pem,
                # The hospital's root: the chain of every doctor's and pharmacist's
                # signature in a prescription or review record ends here.
                "root_certificate_pem": seal.authority.certificate_pem,
            },
        )


def _years(practitioner: Practitioner) -> int:
    today = timezone.localdate()
    start = practitioner.practice_start_date
    return max(0, today.year - start.year - ((today.month, today.day) < (start.month, start.day)))


def filing_practitioner(*, practitioner: Practitioner) -> OutboxRecord:
    certificate = certificate_current(
        user=practitioner.user, role=CertificateRole(practitioner.kind)
    )
    with transaction.atomic():
        return outbox_append(
            hospital=practitioner.hospital,
            record_type="filing.practitioner",
            aggregate_type="filing",
            aggregate_id=f"practitioner:{practitioner.pk}",
            occurred_at=timezone.now(),
            payload={
                "role": practitioner.kind,
                "name": practitioner.user.display_name,
                "id_type": practitioner.id_type,
                "id_number": practitioner.id_number,
                "practice_certificate_number": practitioner.practice_certificate_number,
                "qualification_certificate_number": practitioner.qualification_certificate_number,
                "title": practitioner.title,
                "department": practitioner.department.code if practitioner.department else None,
                "filing_status": practitioner.filing_status,
                "years_of_practice": _years(practitioner),
                "certificate_serial": certificate.serial_number if certificate else None,
            },
        )


def filings_report(*, hospital: Hospital) -> list[OutboxRecord]:
    """The institution first (the platform learns the seal certificate from it), then
    every practitioner."""
    records = [filing_institution(hospital=hospital)]
    for practitioner in Practitioner.objects.filter(hospital=hospital).select_related(
        "user", "department", "hospital"
    ):
        records.append(filing_practitioner(practitioner=practitioner))
    return records
