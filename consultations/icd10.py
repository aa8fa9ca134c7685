"""Loading the ICD-10 table from its CSV file (see consultations/data/README.md)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from django.db import transaction

DEFAULT_PATH = Path(__file__).resolve().parent / "data" / "icd10.csv"


class Icd10FileError(ValueError):
    pass


def icd10_rows(path: Path) -> list[dict[str, str]]:
    rows = []
    with path.open(newline="", encoding="utf-8") as handle:
        for line, row in enumerate(csv.DictReader(handle), start=2):
            code = (row.get("code") or "").strip()
            if not code:
                raise Icd10FileError(f"{path}:{line}: empty code")
            rows.append(
                {
                    "code": code,
                    "name_zh": (row.get("name_zh") or "").strip(),
                    "name_en": (row.get("name_en") or "").strip(),
                    "kind": (row.get("kind") or "").strip(),
                }
            )
    return rows


def icd10_load(*, model: Any, path: Path = DEFAULT_PATH) -> int:
    """Replace the table with the file's rows. ``model`` is ``Icd10Code`` (or its
    historical version inside a migration)."""
    rows = icd10_rows(path)
    with transaction.atomic():
        model.objects.all().delete()
        model.objects.bulk_create([model(**row) for row in rows], batch_size=2000)
    return len(rows)
