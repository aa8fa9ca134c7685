from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from prescriptions.catalogue import COLUMNS, OPTIONAL_COLUMNS, drug_catalogue_import_file


class Command(BaseCommand):
    help = (
        "Import the drug catalogue from a CSV file with the columns "
        + ", ".join(COLUMNS)
        + ", and optionally "
        + ", ".join(OPTIONAL_COLUMNS)
        + " (what a pack holds, for the supply a quantity gives; all three or none)"
        + ". Rows are matched by code (created or updated). Any "
        "invalid row rejects the file unless --partial."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("path")
        parser.add_argument(
            "--partial", action="store_true", help="import the valid rows and report the others"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        path = Path(options["path"])
        if not path.exists():
            raise CommandError(f"{path} does not exist")
        report = drug_catalogue_import_file(path=path, partial=options["partial"])
        for error in report.errors:
            self.stderr.write(error)
        if report.errors and not options["partial"]:
            raise CommandError(f"{len(report.errors)} error(s); nothing was imported")
        self.stdout.write(
            self.style.SUCCESS(
                f"{report.created} created, {report.updated} updated, "
                f"{len(report.errors)} row error(s)"
            )
        )
        if report.errors:
            raise CommandError("some rows were not imported")
