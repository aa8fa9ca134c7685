"""The FHIR R4 export of a prescription, as each of its readers fetches it: the doctor
and the pharmacist in the console, the claiming pharmacy, and the patient. Every export
is validated against the FHIR R4 (4.0.1) models of ``fhirclient`` (the Bundle, and each
resource on its own), then read for what it must say at each step of the lifecycle."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import re
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from django.utils import timezone
from fhirclient.models.bundle import Bundle  # type: ignore[import-untyped]
from fhirclient.models.fhirelementfactory import (  # type: ignore[import-untyped]
    FHIRElementFactory,
)

from prescriptions import fhir
from prescriptions.models import Drug, Prescription, PrescriptionStatus, PrescriptionVersion
from prescriptions.signing import _masked
from tests.consult_http_helpers import CONSOLE, MOBILE, another_patient, assert_problem
from tests.rx_helpers import AMLODIPINE, PHARMACY, RxScene, line, pharmacy_staff

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("icd10")]

NHSA_CODE = "XA10BAE054A001010100000"  # 23 characters, the national code's shape
FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")


def nhsa_drug() -> Drug:
    drug, _ = Drug.objects.get_or_create(
        code=NHSA_CODE,
        defaults={
            "code_system": "nhsa",
            "generic_name": "盐酸二甲双胍片",
            "specification": "0.5g*20片",
            "dosage_form": "片剂",
            "unit": "盒",
            "route": "口服",
            "unit_price": 1890,
        },
    )
    return drug


# --- Validation -----------------------------------------------------------------------------


def _no_empty_values(value: Any, path: str = "") -> None:
    """FHIR JSON has no null, "", [] or {} anywhere (the models do not check this)."""
    assert value not in (None, "", [], {}), f"empty value at {path or '/'}"
    if isinstance(value, dict):
        for key, item in value.items():
            _no_empty_values(item, f"{path}/{key}")
    elif isinstance(value, list):
        for n, item in enumerate(value):
            _no_empty_values(item, f"{path}/{n}")


def _references(value: Any) -> list[str]:
    if isinstance(value, dict):
        found = [value["reference"]] if isinstance(value.get("reference"), str) else []
        return found + [r for item in value.values() for r in _references(item)]
    if isinstance(value, list):
        return [r for item in value for r in _references(item)]
    return []


def r4(response: Any) -> dict[str, Any]:
    """The exported Bundle, after checking it is valid FHIR R4 on the wire."""
    assert response.status_code == 200, response.content
    assert response["Content-Type"] == "application/fhir+json"
    body: dict[str, Any] = json.loads(response.content)
    Bundle(body, strict=True)  # raises FHIRValidationError on anything R4 does not allow
    for entry in body["entry"]:
        resource = entry["resource"]
        model = FHIRElementFactory.instantiate(resource["resourceType"], resource)
        assert model.resource_type == resource["resourceType"]  # not a generic fallback
        assert model.as_json() == resource  # nothing dropped or reshaped by the model
        assert FHIR_ID.match(resource["id"])
        assert entry["fullUrl"] == f"urn:uuid:{resource['id']}"
    _no_empty_values(body)
    assert body["type"] == "collection"
    full_urls = [e["fullUrl"] for e in body["entry"]]
    assert len(full_urls) == len(set(full_urls))
    assert set(_references(body)) <= set(full_urls), "a reference points outside the Bundle"
    return body


def resources(body: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in body["entry"] if e["resource"]["resourceType"] == kind]


def by_ref(body: dict[str, Any], reference: dict[str, str]) -> dict[str, Any]:
    (found,) = [e["resource"] for e in body["entry"] if e["fullUrl"] == reference["reference"]]
    return found


def ext(element: dict[str, Any], url: str) -> dict[str, Any]:
    (found,) = [e for e in element.get("extension", []) if e["url"] == url]
    return found


def der(pem: str) -> bytes:
    return x509.load_pem_x509_certificate(pem.encode()).public_bytes(Encoding.DER)


def signature_of(body: dict[str, Any], type_code: str) -> dict[str, Any]:
    (found,) = [
        s
        for p in resources(body, "Provenance")
        for s in p["signature"]
        if s["type"][0]["code"] == type_code
    ]
    return found


def signature_codes(body: dict[str, Any]) -> list[str]:
    return [s["type"][0]["code"] for p in resources(body, "Provenance") for s in p["signature"]]


def shanghai_iso(value: dt.datetime) -> str:
    return timezone.localtime(value).isoformat()


def fhir_url(prefix: str, prescription_id: str) -> str:
    return f"{prefix}/prescriptions/{prescription_id}/fhir"


# --- The story ------------------------------------------------------------------------------


def test_the_export_follows_the_prescription_from_review_to_dispense(department) -> None:
    scene = RxScene(department)
    nhsa_drug()
    prescription_id = scene.signed(
        lines=[
            line(quantity=2, days=14),
            line(NHSA_CODE, dose="0.5", dose_unit="g", frequency="bid"),
        ],
        chronic_reason="高血压稳定期",
    )
    prescription = Prescription.objects.get(pk=prescription_id)
    version = PrescriptionVersion.objects.get(prescription=prescription, version=1)

    # Under review: two draft orders, signed by the doctor, not yet countersigned.
    body = r4(scene.doctor_session.get(fhir_url(CONSOLE, prescription_id)))
    patient_view = r4(scene.patient_api.get(fhir_url(MOBILE, prescription_id)))
    assert resources(patient_view, "MedicationRequest") == resources(body, "MedicationRequest")
    first, second = resources(body, "MedicationRequest")
    assert [first["status"], second["status"]] == ["draft", "draft"]
    assert first["intent"] == "order"
    assert first["medicationCodeableConcept"]["coding"] == [
        {
            "system": fhir.DRUG_SYSTEMS["hospital"],
            "code": AMLODIPINE,
            "display": "苯磺酸氨氯地平片",
        }
    ]
    assert second["medicationCodeableConcept"]["coding"][0]["system"] == fhir.DRUG_SYSTEMS["nhsa"]
    assert second["medicationCodeableConcept"]["coding"][0]["code"] == NHSA_CODE
    assert fhir.DRUG_SYSTEMS["nhsa"] != fhir.DRUG_SYSTEMS["hospital"]
    assert prescription.issued_at is not None
    assert prescription.valid_until is not None
    assert first["authoredOn"] == shanghai_iso(prescription.issued_at)
    assert first["dispenseRequest"]["validityPeriod"] == {
        "start": shanghai_iso(prescription.issued_at),
        "end": shanghai_iso(prescription.valid_until),
    }
    assert first["dispenseRequest"]["quantity"] == {"value": 2, "unit": "盒"}
    assert first["dispenseRequest"]["expectedSupplyDuration"] == {
        "value": 14,
        "unit": "days",
        "system": "http://unitsofmeasure.org",
        "code": "d",
    }
    assert first["dispenseRequest"]["numberOfRepeatsAllowed"] == 0
    dosage = first["dosageInstruction"][0]
    assert dosage["text"] == "5 mg, qd, 口服, 14 d"
    assert dosage["doseAndRate"][0]["doseQuantity"] == {
        "value": 5,
        "unit": "mg",
        "system": "http://unitsofmeasure.org",
        "code": "mg",
    }
    assert dosage["timing"]["code"]["coding"][0]["code"] == "QD"
    assert dosage["timing"]["repeat"] == {"frequency": 1, "period": 1, "periodUnit": "d"}
    assert dosage["route"] == {"text": "口服"}
    assert second["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"]["value"] == 0.5
    assert second["dosageInstruction"][0]["timing"]["code"]["coding"][0]["code"] == "BID"
    assert first["groupIdentifier"] == {
        "system": fhir.SYSTEM_PRESCRIPTION,
        "value": f"{prescription_id}/v1",
    }
    assert first["note"] == [{"text": "高血压稳定期"}]
    assert first["reasonCode"] == [
        {
            "coding": [
                {
                    "system": "http://hl7.org/fhir/sid/icd-10",
                    "code": d["icd10"],
                    "display": d["name"],
                }
            ],
            "text": d["name"],
        }
        for d in prescription.diagnoses
    ]
    assert prescription.diagnoses
    doctor = by_ref(body, first["requester"])
    assert doctor["identifier"][0]["value"] == scene.doctor.practice_certificate_number
    assert doctor["identifier"][0]["system"] == fhir.SYSTEM_PHYSICIAN_CERTIFICATE
    hospital = resources(body, "Organization")[0]
    assert hospital["identifier"][0]["value"] == department.hospital.unified_social_credit_code
    assert hospital["identifier"][0]["system"] == fhir.SYSTEM_USCC
    assert signature_codes(body) == ["1.2.840.10065.1.12.1.1"]
    signed = signature_of(body, "1.2.840.10065.1.12.1.1")
    assert base64.b64decode(signed["data"]) == bytes(version.doctor_signature)
    assert by_ref(body, signed["who"]) == doctor
    assert signed["sigFormat"] == "application/octet-stream"
    assert signed["targetFormat"] == "application/json"
    assert ext(signed, fhir.EXT_SIGNED_CONTENT_SHA256)["valueString"] == (
        hashlib.sha256(bytes(version.signed_bytes)).hexdigest()
    )
    assert ext(signed, fhir.EXT_SIGNATURE_ALGORITHM)["valueCode"] == (
        version.doctor_certificate.algorithm
    )
    assert base64.b64decode(
        ext(signed, fhir.EXT_SIGNATURE_CERTIFICATE)["valueAttachment"]["data"]
    ) == der(version.doctor_certificate.certificate_pem)
    (doctor_provenance,) = resources(body, "Provenance")
    assert [by_ref(body, t) for t in doctor_provenance["target"]] == [first, second]
    assert resources(body, "MedicationDispense") == []
    assert len(resources(body, "Practitioner")) == 1

    # Approved: active orders and the pharmacist's countersignature over the doctor's.
    assert scene.approve(prescription_id).status_code == 200
    version.refresh_from_db()
    assert version.pharmacist_signature is not None
    assert version.review_bytes is not None
    body = r4(scene.pharmacist_session.get(fhir_url(CONSOLE, prescription_id)))
    assert [r["status"] for r in resources(body, "MedicationRequest")] == ["active", "active"]
    assert signature_codes(body) == ["1.2.840.10065.1.12.1.1", "1.2.840.10065.1.12.1.5"]
    countersigned = signature_of(body, "1.2.840.10065.1.12.1.5")
    assert base64.b64decode(countersigned["data"]) == bytes(version.pharmacist_signature)
    assert ext(countersigned, fhir.EXT_SIGNED_CONTENT_SHA256)["valueString"] == (
        hashlib.sha256(bytes(version.review_bytes)).hexdigest()
    )
    pharmacist = by_ref(body, countersigned["who"])
    assert pharmacist["identifier"][0] == {
        "type": pharmacist["identifier"][0]["type"],
        "system": fhir.SYSTEM_PHARMACIST_CERTIFICATE,
        "value": scene.pharmacist.practice_certificate_number,
    }
    doctor_provenance, review_provenance = resources(body, "Provenance")
    assert review_provenance["entity"] == [
        {"role": "source", "what": {"reference": f"urn:uuid:{doctor_provenance['id']}"}}
    ]
    assert review_provenance["agent"][0]["type"]["coding"][0]["code"] == "verifier"

    # Claimed and dispensed short on the first line: a sealed receipt, two dispenses.
    prescription_id, secret = scene.claimed(prescription_id)
    body = r4(scene.pharmacy_api.get(fhir_url(PHARMACY, prescription_id)))
    assert [r["status"] for r in resources(body, "MedicationRequest")] == ["active", "active"]
    dispensed = scene.dispense(
        prescription_id,
        secret,
        items=[
            {"line": 1, "quantity": 1, "batch_number": "B2026-1102"},
            {"line": 2, "quantity": 1, "batch_number": "M-7"},
        ],
    )
    assert dispensed.status_code == 200, dispensed.content
    prescription.refresh_from_db()
    body = r4(scene.pharmacy_api.get(fhir_url(PHARMACY, prescription_id)))
    assert r4(scene.patient_api.get(fhir_url(MOBILE, prescription_id)))["entry"] == body["entry"]
    first, second = resources(body, "MedicationRequest")
    assert first["status"] == "stopped"  # one of two boxes: the dispense closed it
    assert first["statusReason"] == {"text": "dispensed 1 of 2 盒"}
    assert second["status"] == "completed"
    one, two = resources(body, "MedicationDispense")
    assert one["status"] == two["status"] == "completed"  # no delivery: handed over
    assert one["quantity"] == {"value": 1, "unit": "盒"}
    assert one["authorizingPrescription"] == [{"reference": f"urn:uuid:{first['id']}"}]
    assert ext(one, fhir.EXT_DISPENSE_BATCH)["extension"] == [
        {"url": "lotNumber", "valueString": "B2026-1102"},
        {"url": "quantity", "valueQuantity": {"value": 1, "unit": "盒"}},
    ]
    assert ext(two, fhir.EXT_DISPENSE_BATCH)["extension"][0]["valueString"] == "M-7"
    assert one["whenHandedOver"] == one["whenPrepared"]
    pharmacy, checker = (by_ref(body, p["actor"]) for p in one["performer"])
    assert pharmacy["identifier"] == [
        {"system": fhir.SYSTEM_PHARMACY, "value": scene.pharmacy.code}
    ]
    assert checker["identifier"] == [
        {"system": fhir.SYSTEM_LICENSED_PHARMACIST, "value": "YS330100123"}
    ]
    assert signature_codes(body) == [
        "1.2.840.10065.1.12.1.1",
        "1.2.840.10065.1.12.1.5",
        "1.2.840.10065.1.12.1.14",
    ]
    seal = signature_of(body, "1.2.840.10065.1.12.1.14")
    receipt = prescription.receipt
    assert receipt is not None
    assert seal["data"] == receipt["signature"]["value"]
    assert by_ref(body, seal["who"]) == hospital
    assert ext(seal, fhir.EXT_SIGNED_CONTENT_SHA256)["valueString"] == (
        hashlib.sha256(base64.b64decode(receipt["content"])).hexdigest()
    )
    *_, seal_provenance = resources(body, "Provenance")
    assert [t["reference"] for t in seal_provenance["target"]] == [
        f"urn:uuid:{one['id']}",
        f"urn:uuid:{two['id']}",
    ]
    # The ids are stable: a second export names the same resources.
    again = r4(scene.pharmacy_api.get(fhir_url(PHARMACY, prescription_id)))
    assert [e["fullUrl"] for e in again["entry"]] == [e["fullUrl"] for e in body["entry"]]


def test_the_patient_resource_is_minimal_and_carries_no_id_number(department) -> None:
    scene = RxScene(department)
    prescription_id = scene.active()
    response = scene.patient_api.get(fhir_url(MOBILE, prescription_id))
    body = r4(response)
    (patient,) = resources(body, "Patient")
    profile = scene.profile
    assert patient == {
        "resourceType": "Patient",
        "id": str(profile.pk),
        "name": [{"use": "official", "text": profile.real_name}],
        "gender": profile.sex,
        "birthDate": profile.birth_date.isoformat(),
    }
    text = response.content.decode()
    assert profile.id_number not in text
    assert _masked(profile.id_number) not in text
    assert profile.phone is None or profile.phone not in text


def test_a_delivery_is_in_progress_until_it_is_delivered(department) -> None:
    scene = RxScene(department)
    prescription_id = scene.active()
    chosen = scene.patient_api.post(
        f"{MOBILE}/prescriptions/{prescription_id}/fulfilment",
        {
            "method": "delivery",
            "address": {"recipient": "张三", "phone": "13900000000", "address": "杭州市西湖区"},
        },
        format="json",
    )
    assert chosen.status_code == 200, chosen.content
    prescription_id, secret = scene.claimed(prescription_id)
    assert scene.dispense(prescription_id, secret).status_code == 200
    body = r4(scene.pharmacy_api.get(fhir_url(PHARMACY, prescription_id)))
    (dispense,) = resources(body, "MedicationDispense")
    assert dispense["status"] == "in-progress"
    assert "whenHandedOver" not in dispense
    assert "杭州市西湖区" not in json.dumps(body, ensure_ascii=False)  # no address exported
    shipped = scene.pharmacy_api.post(
        f"{PHARMACY}/prescriptions/{prescription_id}/ship",
        {"claim_secret": secret, "courier": "SF", "tracking_number": "SF1234567890"},
        format="json",
    )
    assert shipped.status_code == 200, shipped.content
    (dispense,) = resources(
        r4(scene.pharmacy_api.get(fhir_url(PHARMACY, prescription_id))), "MedicationDispense"
    )
    assert dispense["status"] == "in-progress"
    delivered = scene.pharmacy_api.post(
        f"{PHARMACY}/prescriptions/{prescription_id}/deliver",
        {"claim_secret": secret},
        format="json",
    )
    assert delivered.status_code == 200, delivered.content
    body = r4(scene.patient_api.get(fhir_url(MOBILE, prescription_id)))
    (dispense,) = resources(body, "MedicationDispense")
    (request,) = resources(body, "MedicationRequest")
    delivered_at = Prescription.objects.get(pk=prescription_id).delivered_at
    assert dispense["status"] == "completed"
    assert request["status"] == "completed"
    assert delivered_at is not None
    assert dispense["whenHandedOver"] == shanghai_iso(delivered_at)


def test_a_rejected_review_is_a_draft_that_asks_for_clarification(department) -> None:
    scene = RxScene(department)
    prescription_id = scene.signed()
    rejected = scene.pharmacist_session.post(
        f"{CONSOLE}/prescriptions/{prescription_id}/reject",
        {"reason": "剂量需确认"},
        format="json",
    )
    assert rejected.status_code == 200, rejected.content
    body = r4(scene.doctor_session.get(fhir_url(CONSOLE, prescription_id)))
    (request,) = resources(body, "MedicationRequest")
    assert request["status"] == "draft"
    assert request["statusReason"]["coding"][0]["code"] == "clarif"
    assert request["statusReason"]["text"] == "剂量需确认"
    assert signature_codes(body) == ["1.2.840.10065.1.12.1.1"]  # a rejection is not signed


def test_a_cancelled_prescription_is_a_cancelled_order(department) -> None:
    scene = RxScene(department)
    prescription_id = scene.active()
    cancelled = scene.doctor_session.post(
        f"{CONSOLE}/prescriptions/{prescription_id}/cancel",
        {"reason": "患者改用其他方案"},
        format="json",
    )
    assert cancelled.status_code == 200, cancelled.content
    body = r4(scene.patient_api.get(fhir_url(MOBILE, prescription_id)))
    (request,) = resources(body, "MedicationRequest")
    assert request["status"] == "cancelled"
    assert request["statusReason"] == {"text": "患者改用其他方案"}


def test_every_lifecycle_status_has_a_medication_request_status() -> None:
    r4_codes = {"active", "on-hold", "cancelled", "completed", "entered-in-error", "stopped"}
    r4_codes |= {"draft", "unknown"}
    assert set(fhir.REQUEST_STATUS) == set(PrescriptionStatus.values)
    assert set(fhir.REQUEST_STATUS.values()) <= r4_codes


def test_who_may_read_the_export(department) -> None:
    scene = RxScene(department)
    prescription_id = scene.active()

    # Pharmacies: only the claimant.
    _, other_pharmacy = pharmacy_staff()
    assert_problem(other_pharmacy.get(fhir_url(PHARMACY, prescription_id)), 403, "not_claimant")
    assert_problem(scene.pharmacy_api.get(fhir_url(PHARMACY, prescription_id)), 403, "not_claimant")
    prescription_id, _ = scene.claimed(prescription_id)
    r4(scene.pharmacy_api.get(fhir_url(PHARMACY, prescription_id)))
    assert_problem(other_pharmacy.get(fhir_url(PHARMACY, prescription_id)), 403, "not_claimant")

    # Patients: only the account it was written for.
    _, _, stranger = another_patient()
    assert_problem(stranger.get(fhir_url(MOBILE, prescription_id)), 404, "not_found")
    r4(scene.patient_api.get(fhir_url(MOBILE, prescription_id)))

    # Each edge for its own audience.
    assert_problem(
        scene.patient_api.get(fhir_url(CONSOLE, prescription_id)), 403, "permission_denied"
    )
    assert_problem(
        scene.pharmacy_api.get(fhir_url(MOBILE, prescription_id)), 403, "permission_denied"
    )
    # The pharmacy API takes an API token and nothing else: a console session is no
    # credential there, and a token of any account but a pharmacy's is refused.
    refused = scene.doctor_session.get(fhir_url(PHARMACY, prescription_id))
    assert_problem(refused, 401, "not_authenticated")
    assert refused["WWW-Authenticate"] == 'Token realm="api"'
    assert_problem(
        scene.patient_api.get(fhir_url(PHARMACY, prescription_id)), 403, "permission_denied"
    )


def test_plain_json_is_served_when_asked_for(department) -> None:
    scene = RxScene(department)
    prescription_id = scene.signed()
    response = scene.doctor_session.get(
        fhir_url(CONSOLE, prescription_id), HTTP_ACCEPT="application/json"
    )
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert json.loads(response.content)["resourceType"] == "Bundle"
