"""Demo data of the prescriptions context: a catalogue of common chronic-disease drugs
and one drug of every specially controlled class (to show the refusal). The codes are
the demo hospital's own (``DEMO-…``); real NHSA codes come from the hospital's import."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from backend.demo.seeding import DemoContext
from prescriptions.catalogue import drug_catalogue_import_file

CATALOGUE = Path(__file__).resolve().parent / "data" / "demo_drugs.csv"


def seed(context: DemoContext) -> dict[str, Any]:
    report = drug_catalogue_import_file(path=CATALOGUE)
    if not report.ok:
        raise RuntimeError("the demo catalogue is invalid: " + "; ".join(report.errors))
    return {"drugs": {"count": report.created + report.updated, "file": str(CATALOGUE.name)}}
