"""``python manage.py reconcile_payments --date YYYY-MM-DD``: compare each gateway's bill
for the day with the ledger and list every difference (also stored, for the admin)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from payments.channels import ChannelError
from payments.services import reconcile


class Command(BaseCommand):
    help = "Reconcile the payment ledger with each gateway's daily bill."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--date", help="YYYY-MM-DD (Asia/Shanghai); default: yesterday")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            day = (
                dt.date.fromisoformat(options["date"])
                if options["date"]
                else timezone.localdate() - dt.timedelta(days=1)
            )
        except ValueError as exc:
            raise CommandError(f"--date: {exc}") from exc
        try:
            runs = reconcile(day=day)
        except ChannelError as exc:
            raise CommandError(f"a bill could not be fetched: {exc}") from exc
        total = 0
        for run in runs:
            self.stdout.write(
                f"{run.hospital.name} {run.channel} {day}: {run.bill_rows} bill row(s), "
                f"{run.ledger_rows} ledger row(s), {len(run.differences)} difference(s)"
            )
            for d in run.differences:
                order = d["order"] or "-"
                self.stdout.write(
                    f"  {d['kind']:<15} {d['type']:<6} {d['our_reference']} order {order}"
                    f" bill {d['bill_amount']} ledger {d['ledger_amount']}"
                )
            total += len(run.differences)
        if not runs:
            self.stdout.write("No enabled gateway connection: nothing to reconcile.")
        self.stdout.write(f"{total} difference(s) in all.")
