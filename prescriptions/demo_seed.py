"""Demo data of the prescriptions context: a catalogue of common chronic-disease drugs
and one drug of every specially controlled class (to show the refusal), the hospital's
certificate authority, and a signing certificate for each demo doctor and pharmacist.
The drug codes are the demo hospital's own (``DEMO-…``); real NHSA codes come from the
hospital's import."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from backend.demo.seeding import DemoContext
from backend.organisations.models import Practitioner
from backend.pki.models import CertificateRole
from backend.pki.services import authority_create, certificate_current, certificate_issue
from prescriptions.catalogue import drug_catalogue_import_file

CATALOGUE = Path(__file__).resolve().parent / "data" / "demo_drugs.csv"


def seed(context: DemoContext) -> dict[str, Any]:
    report = drug_catalogue_import_file(path=CATALOGUE)
    if not report.ok:
        raise RuntimeError("the demo catalogue is invalid: " + "; ".join(report.errors))
    authority = authority_create(hospital=context.hospital)
    certificates = {}
    for practitioner in Practitioner.objects.filter(hospital=context.hospital).select_related(
        "user", "hospital"
    ):
        role = CertificateRole(practitioner.kind)
        current = certificate_current(user=practitioner.user, role=role)
        if current is None:
            current = certificate_issue(practitioner=practitioner)
        certificates[practitioner.user.username] = current.serial_number
    return {
        "drugs": {"count": report.created + report.updated, "file": str(CATALOGUE.name)},
        "pki": {
            "root_sha256": authority.fingerprint_sha256,
            "certificates": certificates,
        },
    }
