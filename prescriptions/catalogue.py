"""Importing the drug catalogue from CSV, with an error report per row."""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from django.db import transaction

from prescriptions.models import CodeSystem, ControlClass, Drug, RxClass

COLUMNS = (
    "code",
    "code_system",
    "generic_name",
    "trade_name",
    "specification",
    "dosage_form",
    "unit",
    "route",
    "rx_class",
    "control_class",
    "unit_price_fen",
)
#: Optional columns: what one dispensing unit holds (``Drug.pack_size`` smallest units of
#: ``unit_strength`` ``strength_unit`` each), for the supply check of a line's quantity.
OPTIONAL_COLUMNS = ("pack_size", "unit_strength", "strength_unit")
_NHSA = re.compile(r"[A-Z0-9]{23}")
_HOSPITAL = re.compile(r"[A-Za-z0-9._-]{1,32}")


@dataclass
class ImportReport:
    created: int = 0
    updated: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def _row_values(row: dict[str, str], line: int, errors: list[str]) -> dict[str, Any] | None:
    def get(name: str) -> str:
        return (row.get(name) or "").strip()

    problems = []
    code, system = get("code"), get("code_system") or CodeSystem.HOSPITAL
    if system not in CodeSystem.values:
        problems.append(f"code_system {system!r} is not one of {', '.join(CodeSystem.values)}")
    elif system == CodeSystem.NHSA and not _NHSA.fullmatch(code):
        problems.append("an NHSA code is 23 capital letters and digits")
    elif system == CodeSystem.HOSPITAL and not _HOSPITAL.fullmatch(code):
        problems.append("code must be 1-32 letters, digits, '.', '_' or '-'")
    for required in ("generic_name", "specification", "dosage_form", "unit", "route"):
        if not get(required):
            problems.append(f"{required} is required")
    rx, control = get("rx_class") or RxClass.RX, get("control_class") or ControlClass.NONE
    if rx not in RxClass.values:
        problems.append(f"rx_class {rx!r} is not one of {', '.join(RxClass.values)}")
    if control not in ControlClass.values:
        problems.append(f"control_class {control!r} is not one of {', '.join(ControlClass.values)}")
    if control != ControlClass.NONE and rx != RxClass.RX:
        problems.append("a controlled drug cannot be OTC")
    price_raw = get("unit_price_fen")
    price = int(price_raw) if price_raw.isdigit() else None
    if price is None:
        problems.append("unit_price_fen must be a whole number of fen (0 or more)")
    pack_raw, strength_raw, strength_unit = (
        get("pack_size"),
        get("unit_strength"),
        get("strength_unit"),
    )
    pack_size = int(pack_raw) if pack_raw.isdigit() and 0 < int(pack_raw) <= 100_000 else None
    if pack_raw and pack_size is None:
        problems.append("pack_size must be a whole number from 1 to 100000")
    strength: Decimal | None = None
    if strength_raw:
        try:
            strength = Decimal(strength_raw)
        except InvalidOperation:
            strength = None
        # What ``Drug.unit_strength`` holds: above 0, below 10^8, at most 4 decimals.
        if (
            strength is None
            or not strength.is_finite()
            or not 0 < strength < 100_000_000
            or strength != strength.quantize(Decimal("0.0001"))
        ):
            problems.append(
                "unit_strength must be above 0 and below 100000000, with at most 4 decimals"
            )
            strength = None
    if bool(strength_raw) != bool(strength_unit):
        problems.append("unit_strength and strength_unit go together")
    if problems:
        errors.extend(f"line {line}: {p}" for p in problems)
        return None
    return {
        "pack_size": pack_size,
        "unit_strength": strength,
        "strength_unit": strength_unit,
        "code": code,
        "code_system": system,
        "generic_name": get("generic_name"),
        "trade_name": get("trade_name"),
        "specification": get("specification"),
        "dosage_form": get("dosage_form"),
        "unit": get("unit"),
        "route": get("route"),
        "rx_class": rx,
        "control_class": control,
        "unit_price": price,
    }


def drug_catalogue_import(*, text: str, partial: bool = False) -> ImportReport:
    """Create or update drugs by code. Any row error rejects the whole file, unless
    ``partial``: then the valid rows are imported and the others reported."""
    report = ImportReport()
    reader = csv.DictReader(io.StringIO(text))
    header = reader.fieldnames or []
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        report.errors.append(f"line 1: missing columns: {', '.join(missing)}")
        return report
    pack_columns = [c for c in OPTIONAL_COLUMNS if c in header]
    if pack_columns and len(pack_columns) != len(OPTIONAL_COLUMNS):
        report.errors.append(f"line 1: the columns {', '.join(OPTIONAL_COLUMNS)} go together")
        return report
    rows: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for line, row in enumerate(reader, start=2):
        values = _row_values(row, line, report.errors)
        if values is None:
            continue
        if not pack_columns:  # a file without them leaves what the catalogue holds
            for name in OPTIONAL_COLUMNS:
                values.pop(name)
        if values["code"] in seen:
            report.errors.append(
                f"line {line}: code {values['code']} repeats line {seen[values['code']]}"
            )
            continue
        seen[values["code"]] = line
        rows.append(values)
    if report.errors and not partial:
        return report
    with transaction.atomic():
        for values in rows:
            _, created = Drug.objects.update_or_create(code=values["code"], defaults=values)
            report.created += created
            report.updated += not created
    return report


def drug_catalogue_import_file(*, path: Path, partial: bool = False) -> ImportReport:
    return drug_catalogue_import(text=path.read_text(encoding="utf-8-sig"), partial=partial)
