"""The whole path of one prescription, as its people live it: the treating doctor drafts
and signs, the pharmacist verifies and approves, the patient sees the access code, a
pharmacy claims, verifies the bundle offline, dispenses, ships, and it is delivered."""

from __future__ import annotations

import base64
import json

import pytest

from prescriptions.models import DispenseEntry, PrescriptionEvent
from prescriptions.verify import verify_bundle
from tests.consult_http_helpers import CONSOLE, MOBILE
from tests.rx_helpers import PHARMACY, RxScene, status_of

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("icd10")]


def test_a_prescription_goes_from_draft_to_delivered(department) -> None:
    scene = RxScene(department)
    draft = scene.draft()
    assert draft.status_code == 201, draft.content
    body = draft.json()
    assert body["status"] == "draft"
    assert {c["rule"]: c["outcome"] for c in body["checks"]}["controlled_drug_forbidden"] == "pass"
    assert body["total"] == body["lines"][0]["unit_price"]
    prescription_id = body["id"]

    signed = scene.sign(prescription_id)
    assert signed.status_code == 200, signed.content
    assert signed.json()["status"] == "under_review"
    assert signed.json()["verification"]["valid"] is True

    queue = scene.pharmacist_session.get(f"{CONSOLE}/reviews").json()["results"]
    assert [p["id"] for p in queue] == [prescription_id]

    # Before approval the patient sees it but no code.
    early = scene.patient_api.get(f"{MOBILE}/prescriptions/{prescription_id}").json()
    assert early["status"] == "under_review"
    assert early["access_code"] is None
    assert early["qr"] is None

    approved = scene.approve(prescription_id)
    assert approved.status_code == 200, approved.content
    assert approved.json()["status"] == "active"
    assert approved.json()["verification"]["pharmacist"]["role"] == "pharmacist"

    detail = scene.patient_api.get(f"{MOBILE}/prescriptions/{prescription_id}").json()
    code = detail["access_code"]
    assert len(base64.urlsafe_b64decode(code + "==")) >= 16  # at least 128 bits
    png = scene.patient_api.get(f"{MOBILE}/prescriptions/{prescription_id}/qr.png")
    assert png.status_code == 200
    assert png.content.startswith(b"\x89PNG")
    svg = scene.patient_api.get(f"{MOBILE}/prescriptions/{prescription_id}/qr.svg")
    assert b"<svg" in svg.content
    fulfil = scene.patient_api.post(
        f"{MOBILE}/prescriptions/{prescription_id}/fulfilment",
        {
            "method": "delivery",
            "address": {"recipient": "张三", "phone": "13900000000", "address": "杭州市西湖区"},
        },
        format="json",
    )
    assert fulfil.status_code == 200, fulfil.content

    claim = scene.claim(prescription_id, code)
    assert claim.status_code == 200, claim.content
    secret = claim.json()["claim_secret"]
    assert claim.json()["prescription"]["delivery_address"]["recipient"] == "张三"

    bundle = scene.pharmacy_api.get(f"{PHARMACY}/prescriptions/{prescription_id}/bundle").json()
    verified = verify_bundle(json.loads(json.dumps(bundle)))
    assert verified.prescription_id == prescription_id
    assert verified.doctor.practice_certificate_number == scene.doctor.practice_certificate_number

    dispensed = scene.dispense(prescription_id, secret)
    assert dispensed.status_code == 200, dispensed.content
    assert dispensed.json()["status"] == "dispensed"
    assert dispensed.json()["lines"][0]["dispensed_quantity"] == 1
    assert dispensed.json()["receipt"]["signature"]["certificate_chain"]
    assert DispenseEntry.objects.get().batch_number == "B2026-1102"

    shipped = scene.pharmacy_api.post(
        f"{PHARMACY}/prescriptions/{prescription_id}/ship",
        {"claim_secret": secret, "courier": "SF", "tracking_number": "SF1234567890"},
        format="json",
    )
    assert shipped.status_code == 200, shipped.content
    delivered = scene.pharmacy_api.post(
        f"{PHARMACY}/prescriptions/{prescription_id}/deliver",
        {"claim_secret": secret},
        format="json",
    )
    assert delivered.status_code == 200, delivered.content
    assert status_of(prescription_id) == "delivered"

    history = scene.patient_api.get(f"{MOBILE}/prescriptions/{prescription_id}").json()
    assert [h["action"] for h in history["history"]] == [
        "create",
        "sign",
        "submit",
        "approve",
        "claim",
        "dispense",
        "ship",
        "deliver",
    ]
    assert history["delivery"]["tracking_number"] == "SF1234567890"
    assert PrescriptionEvent.objects.filter(prescription_id=prescription_id).count() == 8
