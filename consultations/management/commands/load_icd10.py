from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from consultations.icd10 import DEFAULT_PATH, Icd10FileError, icd10_load
from consultations.models import Icd10Code


class Command(BaseCommand):
    help = (
        "Replace the ICD-10 table (CSV: code,name_zh,name_en,kind) used to validate "
        "diagnoses. Default: the file shipped in consultations/data/ (loaded by the "
        "migrations too); give a path to load the edition your hospital licenses."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("path", nargs="?", default=str(DEFAULT_PATH))

    def handle(self, *args: Any, **options: Any) -> None:
        path = Path(options["path"])
        if not path.exists():
            raise CommandError(f"{path} does not exist")
        try:
            count = icd10_load(model=Icd10Code, path=path)
        except Icd10FileError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(self.style.SUCCESS(f"loaded {count} ICD-10 codes from {path}"))
