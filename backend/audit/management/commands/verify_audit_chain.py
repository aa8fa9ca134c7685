from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from backend.audit.services import audit_chain_verify


class Command(BaseCommand):
    help = "Recompute the audit hash chain and report the first broken link (exit 1 if any)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--json", action="store_true", help="print one JSON object")

    def handle(self, *args: Any, **options: Any) -> None:
        report = audit_chain_verify()
        if options["json"]:
            self.stdout.write(
                json.dumps(
                    {
                        "ok": report.ok,
                        "checked": report.checked,
                        "last_seq": report.last_seq,
                        "first_break": None
                        if report.ok
                        else {
                            "seq": report.first_break.seq,  # type: ignore[union-attr]
                            "reason": report.first_break.reason,  # type: ignore[union-attr]
                        },
                    }
                )
            )
        if report.first_break is not None:
            raise CommandError(
                f"audit chain broken at row {report.first_break.seq}: "
                f"{report.first_break.reason} ({report.checked} rows verified before it)"
            )
        if not options["json"]:
            self.stdout.write(
                self.style.SUCCESS(
                    f"audit chain intact: {report.checked} rows, last seq {report.last_seq}"
                )
            )
