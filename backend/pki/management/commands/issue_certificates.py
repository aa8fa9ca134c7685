"""Onboarding: create a hospital's CA and issue its practitioners' signing certificates.

    python manage.py issue_certificates --hospital <USCC> [--practitioner <certificate no.>]
                                        [--reissue]

Practitioners who already hold a valid certificate keep it unless ``--reissue``.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from backend.organisations.models import FilingStatus, Hospital, Practitioner
from backend.pki.models import CertificateRole
from backend.pki.services import authority_create, certificate_current, certificate_issue


class Command(BaseCommand):
    help = "Create the hospital's CA and issue signing certificates to its practitioners."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--hospital", required=True, help="unified social credit code")
        parser.add_argument("--practitioner", help="practice certificate number (default: all)")
        parser.add_argument("--reissue", action="store_true", help="replace valid certificates")

    def handle(self, *args: Any, **options: Any) -> None:
        hospital = Hospital.objects.filter(unified_social_credit_code=options["hospital"]).first()
        if hospital is None:
            raise CommandError(f"no hospital with USCC {options['hospital']}")
        authority = authority_create(hospital=hospital)
        self.stdout.write(f"CA {authority.fingerprint_sha256} ({authority.algorithm})")
        practitioners = Practitioner.objects.filter(
            hospital=hospital, filing_status=FilingStatus.FILED
        ).select_related("user", "hospital")
        if options["practitioner"]:
            practitioners = practitioners.filter(
                practice_certificate_number=options["practitioner"]
            )
            if not practitioners.exists():
                raise CommandError("no filed practitioner with that certificate number here")
        for practitioner in practitioners:
            current = certificate_current(
                user=practitioner.user, role=CertificateRole(practitioner.kind)
            )
            if current is not None and not options["reissue"]:
                self.stdout.write(f"kept   {practitioner.user.username} {current.serial_number}")
                continue
            issued = certificate_issue(practitioner=practitioner)
            self.stdout.write(f"issued {practitioner.user.username} {issued.serial_number}")
