"""Send the institution's and its practitioners' filings to the provincial platform.

python manage.py report_filings --hospital <USCC>
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from backend.organisations.models import Hospital
from regulators.filings import filings_report


class Command(BaseCommand):
    help = "Queue the filings of a hospital and its practitioners for the platform."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--hospital", required=True, help="unified social credit code")

    def handle(self, *args: Any, **options: Any) -> None:
        hospital = Hospital.objects.filter(unified_social_credit_code=options["hospital"]).first()
        if hospital is None:
            raise CommandError(f"no hospital with USCC {options['hospital']}")
        records = filings_report(hospital=hospital)
        self.stdout.write(f"queued {len(records)} filing record(s)")
