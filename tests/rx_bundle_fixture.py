"""A pytest plugin with one fixture: a prescription bundle produced by the server, the way
a pharmacy receives it, written to files for a verifier that knows nothing of the project.

``tests/test_offline_verifier.py`` loads it with ``pytest_plugins`` (a string, not an
import), so that the test module itself imports nothing from the project. Every step
here goes through HTTP: the doctor signs, the pharmacist approves, the pharmacy claims
with the patient's access code and downloads the bundle, and the hospital roots come
from the public ``root.pem`` endpoint.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from rest_framework.test import APIClient

from backend.pki.services import authority_create
from tests.factories import HospitalFactory
from tests.rx_helpers import PHARMACY, RxScene

PKI = "/api/pki/v1"


def _root_pem(hospital_id: Any) -> tuple[bytes, str]:
    """The hospital's root certificate and the fingerprint it publishes with it."""
    response = APIClient().get(f"{PKI}/hospitals/{hospital_id}/root.pem")
    assert response.status_code == 200, response.content
    content: bytes = response.content
    return content, str(response["X-Certificate-SHA256"])


@pytest.fixture
def server_bundle(db: None, icd10: None, department: Any, tmp_path: Path) -> dict[str, Any]:
    """Files and expected values, all plain strings:

    ``bundle`` (the bundle JSON as the pharmacy API served it), ``root`` (this hospital's
    root PEM), ``other_root`` (another hospital's root PEM), ``prescription_id``,
    ``doctor_practice_certificate_number``, ``pharmacist_practice_certificate_number``,
    ``root_sha256`` (the fingerprint the hospital publishes in ``X-Certificate-SHA256``).
    """
    scene = RxScene(department)
    prescription_id = scene.active()
    claim = scene.claim(prescription_id)
    assert claim.status_code == 200, claim.content
    response = scene.pharmacy_api.get(f"{PHARMACY}/prescriptions/{prescription_id}/bundle")
    assert response.status_code == 200, response.content

    other = HospitalFactory()
    authority_create(hospital=other)
    folder = tmp_path / "from-server"
    folder.mkdir()
    json.loads(response.content)  # JSON, written as served
    (folder / "bundle.json").write_bytes(response.content)
    root_pem, root_sha256 = _root_pem(scene.hospital.pk)
    (folder / "root.pem").write_bytes(root_pem)
    (folder / "other-root.pem").write_bytes(_root_pem(other.pk)[0])
    return {
        "bundle": str(folder / "bundle.json"),
        "root": str(folder / "root.pem"),
        "other_root": str(folder / "other-root.pem"),
        "prescription_id": prescription_id,
        "doctor_practice_certificate_number": scene.doctor.practice_certificate_number,
        "pharmacist_practice_certificate_number": scene.pharmacist.practice_certificate_number,
        "root_sha256": root_sha256,
    }
