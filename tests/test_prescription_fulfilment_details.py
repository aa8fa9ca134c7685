"""Three details of getting the medicine, as the people involved live them: the QR code the
patient shows carries the prescription id and the access code and nothing personal; the
patient chooses pick-up at an open pharmacy or home delivery until a pharmacy claims it;
and the pharmacist who hands the medicine over is named in the ledger and in the record
the provincial regulator receives.

Every step is a real HTTP call (mobile app, console, pharmacy API). Factories only lay
out the starting rows (pharmacies, the patient's phone); otherwise the database is read
only to check what the calls left behind, or did not.
"""

from __future__ import annotations

import io
import re
from typing import Any

import pytest
import segno
from django.conf import settings
from django.utils import translation
from rest_framework import serializers

from backend.organisations.models import Pharmacy
from payments.models import OrderKind
from payments.selectors import order_of_subject
from prescriptions.models import (
    DispenseEntry,
    Drug,
    Prescription,
    PrescriptionEvent,
    PrescriptionLine,
)
from regulators.models import OutboxRecord
from tests.consult_http_helpers import MOBILE, assert_problem, audit_count
from tests.factories import PharmacyFactory
from tests.rx_helpers import PHARMACY, RxScene, line, pharmacy_staff, status_of

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("icd10")]

HOST = "http://testserver"
PHARMACIST = {"name": "李药师", "licence_number": "YS330100777"}
HOME = {"recipient": "张三", "phone": "13900000000", "address": "杭州市西湖区文三路 90 号"}


def _ok(response: Any, status: int = 200) -> dict[str, Any]:
    assert response.status_code == status, response.content
    body: dict[str, Any] = response.json()
    return body


# --- 1. The QR code ----------------------------------------------------------------------------


def render_qr(payload: str, kind: str) -> bytes:
    """The image the server should send for ``payload``, made the way the view makes it
    (``mobile_api.prescriptions._QrApi``: error level M, scale 8, quiet zone 4, SVG
    without an XML declaration). Equal bytes mean an equal payload, no decoder needed."""
    out = io.BytesIO()
    qr = segno.make(payload, error="m")
    if kind == "png":
        qr.save(out, kind="png", scale=8, border=4)
    else:
        qr.save(out, kind="svg", scale=8, border=4, xmldecl=False)
    return out.getvalue()


def _other_code(code: str) -> str:
    """The same access code with its last character changed."""
    return code[:-1] + ("A" if code[-1] != "A" else "B")


def test_the_qr_code_carries_only_the_prescription_id_and_its_access_code(department) -> None:
    scene = RxScene(department)
    scene.profile.phone = "13712345678"
    scene.profile.save()
    prescription_id = scene.active(lines=[line(), line("DEMO-0002", dose="80")])

    detail = _ok(scene.patient_api.get(f"{MOBILE}/prescriptions/{prescription_id}"))
    code = detail["access_code"]
    assert code == Prescription.objects.get(pk=prescription_id).access_code
    assert detail["qr"] == {
        "png": f"{HOST}{MOBILE}/prescriptions/{prescription_id}/qr.png",
        "svg": f"{HOST}{MOBILE}/prescriptions/{prescription_id}/qr.svg",
    }

    png = scene.patient_api.get(detail["qr"]["png"])
    svg = scene.patient_api.get(detail["qr"]["svg"])
    assert png.status_code == 200, png.content
    assert svg.status_code == 200, svg.content
    assert png["Content-Type"] == "image/png"
    assert svg["Content-Type"] == "image/svg+xml"
    assert png["Cache-Control"] == svg["Cache-Control"] == "private, no-store"

    payload = f"IHRX1:{prescription_id}:{code}"
    assert png.content == render_qr(payload, "png")
    assert svg.content == render_qr(payload, "svg")
    # The comparison can fail: another code, another prescription, other bytes.
    other_id = scene.active()
    for kind, served in (("png", png.content), ("svg", svg.content)):
        assert render_qr(f"IHRX1:{prescription_id}:{_other_code(code)}", kind) != served
        assert render_qr(f"IHRX1:{other_id}:{code}", kind) != served
        assert render_qr(payload.replace("IHRX1", "IHRX2"), kind) != served

    # Nothing in it names the patient or the medicine.
    assert re.fullmatch(r"IHRX1:[0-9a-f-]{36}:[A-Za-z0-9_-]+", payload), payload
    profile, account = scene.profile, scene.account
    assert profile.phone == "13712345678"
    assert account.phone
    assert profile.id_number
    personal = [
        profile.real_name,
        profile.id_number,
        profile.birth_date.isoformat(),
        profile.birth_date.strftime("%Y%m%d"),
        profile.phone,
        account.phone,
    ]
    lines = PrescriptionLine.objects.filter(prescription_id=prescription_id).order_by("position")
    named = list(lines.values_list("drug_name", "drug_code"))
    assert named == [("苯磺酸氨氯地平片", "DEMO-0001"), ("缬沙坦胶囊", "DEMO-0002")]
    trade = Drug.objects.filter(code__in=["DEMO-0001", "DEMO-0002"]).order_by("code")
    assert list(trade.values_list("trade_name", flat=True)) == ["络活喜", "代文"]
    drug_names = [n for pair in named for n in pair] + list(
        trade.values_list("trade_name", flat=True)
    )
    for value in personal + drug_names:
        assert value
        assert value not in payload, value

    # Each time the patient showed the code is on record.
    assert audit_count("prescription.qr_viewed", prescription_id) == 2


def test_once_a_pharmacy_has_it_the_qr_code_is_not_shown_and_says_why(department) -> None:
    scene = RxScene(department)
    prescription_id, _ = scene.claimed()
    detail = _ok(scene.patient_api.get(f"{MOBILE}/prescriptions/{prescription_id}"))
    assert (detail["status"], detail["qr"]) == ("claimed", None)
    for kind in ("png", "svg"):
        response = scene.patient_api.get(f"{MOBILE}/prescriptions/{prescription_id}/qr.{kind}")
        body = assert_problem(response, 409, "prescription_state_conflict")
        assert body["prescription_status"] == "claimed"
    assert audit_count("prescription.qr_viewed", prescription_id) == 0


def test_before_approval_there_is_no_qr_code_to_show(department) -> None:
    scene = RxScene(department)
    prescription_id = scene.signed()

    detail = _ok(scene.patient_api.get(f"{MOBILE}/prescriptions/{prescription_id}"))
    assert detail["status"] == "under_review"
    assert detail["access_code"] is None
    assert detail["qr"] is None
    for kind in ("png", "svg"):
        refused = scene.patient_api.get(f"{MOBILE}/prescriptions/{prescription_id}/qr.{kind}")
        body = assert_problem(refused, 409, "not_reviewed")
        assert body["detail"] == (
            "The code is shown while the prescription is approved, not yet claimed and valid."
        )
    assert audit_count("prescription.qr_viewed", prescription_id) == 0

    # Once the pharmacist approved it, the same addresses give the image.
    _ok(scene.approve(prescription_id))
    code = scene.access_code(prescription_id)
    png = scene.patient_api.get(f"{MOBILE}/prescriptions/{prescription_id}/qr.png")
    assert png.status_code == 200, png.content
    assert png.content == render_qr(f"IHRX1:{prescription_id}:{code}", "png")


# --- 2. Pick-up or delivery -------------------------------------------------------------------


def _choose(scene: RxScene, prescription_id: str, body: dict[str, Any]) -> Any:
    return scene.patient_api.post(
        f"{MOBILE}/prescriptions/{prescription_id}/fulfilment", body, format="json"
    )


def _stored_choice(prescription_id: str) -> tuple[str, Any, str]:
    p = Prescription.objects.get(pk=prescription_id)
    return p.fulfilment, p.pickup_pharmacy_id, p.delivery_address


def _order_codes(prescription_id: str) -> list[str]:
    order = order_of_subject(kind=OrderKind.PRESCRIPTION, subject_id=prescription_id)
    assert order is not None
    return [str(item["code"]) for item in order.items]


def _open_and_closed(scene: RxScene) -> tuple[Pharmacy, Pharmacy]:
    province = scene.hospital.province
    open_ = PharmacyFactory(province=province, name="西湖大药房", address="杭州市西湖区")
    closed = PharmacyFactory(province=province, name="已歇业药房", is_active=False)
    return open_, closed


def test_pick_up_at_an_open_pharmacy_then_home_delivery_replaces_it(department) -> None:
    scene = RxScene(department)
    open_pharmacy, closed = _open_and_closed(scene)
    prescription_id = scene.active()
    assert _order_codes(prescription_id) == ["DEMO-0001"]

    listed = _ok(scene.patient_api.get(f"{MOBILE}/pharmacies?hospital={scene.hospital.pk}"))
    assert [p["code"] for p in listed["results"]] == sorted(
        [scene.pharmacy.code, open_pharmacy.code]
    )
    chosen = next(p for p in listed["results"] if p["name"] == "西湖大药房")
    assert closed.code not in [p["code"] for p in listed["results"]]

    pickup = _ok(_choose(scene, prescription_id, {"method": "pickup", "pharmacy": chosen["id"]}))
    assert pickup["fulfilment"] == {"method": "pickup", "pharmacy": str(open_pharmacy.pk)}
    assert pickup["delivery_address"] is None
    assert pickup["status"] == "active"
    again = _ok(scene.patient_api.get(f"{MOBILE}/prescriptions/{prescription_id}"))
    assert again["fulfilment"] == {"method": "pickup", "pharmacy": str(open_pharmacy.pk)}
    assert again["delivery_address"] is None
    assert _stored_choice(prescription_id) == ("pickup", open_pharmacy.pk, "")
    assert _order_codes(prescription_id) == ["DEMO-0001"]  # no delivery fee for pick-up

    delivery = _ok(_choose(scene, prescription_id, {"method": "delivery", "address": HOME}))
    assert delivery["fulfilment"] == {"method": "delivery", "pharmacy": None}
    assert delivery["delivery_address"] == HOME
    again = _ok(scene.patient_api.get(f"{MOBILE}/prescriptions/{prescription_id}"))
    assert again["fulfilment"] == {"method": "delivery", "pharmacy": None}
    assert again["delivery_address"] == HOME
    method, pharmacy_id, _address = _stored_choice(prescription_id)
    assert (method, pharmacy_id) == ("delivery", None)
    fee = ["DELIVERY"] if settings.PRESCRIPTION_DELIVERY_FEE > 0 else []
    assert _order_codes(prescription_id) == ["DEMO-0001", *fee]
    assert audit_count("prescription.fulfilment", prescription_id) == 2


def test_a_closed_pharmacy_cannot_be_chosen_and_nothing_changes(department) -> None:
    scene = RxScene(department)
    open_pharmacy, closed = _open_and_closed(scene)
    prescription_id = scene.active()
    _ok(_choose(scene, prescription_id, {"method": "pickup", "pharmacy": str(open_pharmacy.pk)}))

    refused = _choose(scene, prescription_id, {"method": "pickup", "pharmacy": str(closed.pk)})
    body = assert_problem(refused, 400, "validation_error")
    assert body["detail"] == "Choose an open pharmacy."
    assert body["errors"] == {"pharmacy": ["This pharmacy is closed."]}
    unknown = "00000000-0000-4000-8000-000000000000"
    refused = _choose(scene, prescription_id, {"method": "pickup", "pharmacy": unknown})
    body = assert_problem(refused, 400, "validation_error")
    assert body["detail"] == "Unknown pharmacy."
    assert body["errors"] == {"pharmacy": ["Not found."]}
    # Pick-up without a pharmacy is refused by the service.
    body = assert_problem(
        _choose(scene, prescription_id, {"method": "pickup"}), 400, "validation_error"
    )
    assert body["errors"] == {"pharmacy": ["Required for pick-up."]}

    assert _stored_choice(prescription_id) == ("pickup", open_pharmacy.pk, "")
    detail = _ok(scene.patient_api.get(f"{MOBILE}/prescriptions/{prescription_id}"))
    assert detail["fulfilment"] == {"method": "pickup", "pharmacy": str(open_pharmacy.pk)}
    assert audit_count("prescription.fulfilment", prescription_id) == 1


def test_once_a_pharmacy_claimed_it_the_choice_is_final(department) -> None:
    scene = RxScene(department)
    open_pharmacy, _closed = _open_and_closed(scene)
    prescription_id = scene.active()
    _ok(_choose(scene, prescription_id, {"method": "delivery", "address": HOME}))
    claimed = _ok(scene.claim(prescription_id))
    assert claimed["prescription"]["delivery_address"] == HOME
    stored = _stored_choice(prescription_id)
    fee_items = _order_codes(prescription_id)

    for body in (
        {"method": "pickup", "pharmacy": str(open_pharmacy.pk)},
        {"method": "delivery", "address": {**HOME, "address": "杭州市滨江区"}},
    ):
        problem = assert_problem(
            _choose(scene, prescription_id, body), 409, "prescription_state_conflict"
        )
        assert problem["detail"] == "Cannot choose fulfilment for a prescription that is claimed."
        assert problem["prescription_status"] == "claimed"

    assert status_of(prescription_id) == "claimed"
    assert _stored_choice(prescription_id) == stored
    assert _order_codes(prescription_id) == fee_items
    detail = _ok(scene.patient_api.get(f"{MOBILE}/prescriptions/{prescription_id}"))
    assert detail["fulfilment"] == {"method": "delivery", "pharmacy": None}
    assert detail["delivery_address"] == HOME
    assert audit_count("prescription.fulfilment", prescription_id) == 1


def _delivery_update(
    scene: RxScene, prescription_id: str, step: str, secret: str, api: Any = None
) -> Any:
    body: dict[str, Any] = {"claim_secret": secret}
    if step == "ship":
        body.update(courier="SF", tracking_number="SF1234567890")
    return (api or scene.pharmacy_api).post(
        f"{PHARMACY}/prescriptions/{prescription_id}/{step}", body, format="json"
    )


def test_delivery_updates_come_after_the_dispense_from_the_claimant_in_order(department) -> None:
    scene = RxScene(department)
    # Picked up at the counter: there is nothing to ship.
    pickup_id = scene.active()
    _ok(_choose(scene, pickup_id, {"method": "pickup", "pharmacy": str(scene.pharmacy.pk)}))
    _, pickup_secret = scene.claimed(pickup_id)
    _ok(scene.dispense(pickup_id, pickup_secret))
    refused = _delivery_update(scene, pickup_id, "ship", pickup_secret)
    assert assert_problem(refused, 409, "prescription_state_conflict")["detail"] == (
        "The patient chose pick-up, not delivery."
    )
    assert status_of(pickup_id) == "dispensed"

    prescription_id = scene.active()
    _ok(_choose(scene, prescription_id, {"method": "delivery", "address": HOME}))
    _, secret = scene.claimed(prescription_id)
    # Not shipped before it is dispensed, not delivered before it is shipped.
    for step in ("ship", "deliver"):
        early = assert_problem(
            _delivery_update(scene, prescription_id, step, secret),
            409,
            "prescription_state_conflict",
        )
        assert early["prescription_status"] == "claimed"
    _ok(scene.dispense(prescription_id, secret))
    early = _delivery_update(scene, prescription_id, "deliver", secret)
    assert assert_problem(early, 409, "prescription_state_conflict")["prescription_status"] == (
        "dispensed"
    )

    # Only the claimant, with the claim's secret.
    _, rival = pharmacy_staff()
    for step in ("ship", "deliver"):
        wrong = _delivery_update(scene, prescription_id, step, "not-the-secret")
        assert_problem(wrong, 403, "bad_claim_secret")
        assert_problem(
            _delivery_update(scene, prescription_id, step, pickup_secret), 403, "bad_claim_secret"
        )
        assert_problem(
            _delivery_update(scene, prescription_id, step, secret, rival), 403, "bad_claim_secret"
        )
    assert status_of(prescription_id) == "dispensed"

    assert _ok(_delivery_update(scene, prescription_id, "ship", secret))["status"] == "shipped"
    again = _delivery_update(scene, prescription_id, "ship", secret)
    assert assert_problem(again, 409, "prescription_state_conflict")["prescription_status"] == (
        "shipped"
    )
    assert _ok(_delivery_update(scene, prescription_id, "deliver", secret))["status"] == (
        "delivered"
    )
    actions = list(
        PrescriptionEvent.objects.filter(prescription_id=prescription_id)
        .order_by("created_at", "id")
        .values_list("action", flat=True)
    )
    assert actions[-3:] == ["dispense", "ship", "deliver"]
    assert actions.count("ship") == actions.count("deliver") == 1


# --- 3. The dispensing pharmacist -------------------------------------------------------------


def _dispense_records(prescription_id: str) -> list[dict[str, Any]]:
    return [
        r.payload
        for r in OutboxRecord.objects.filter(
            aggregate_type="prescription",
            aggregate_id=prescription_id,
            record_type="dispense.dispense",
        )
    ]


def test_the_dispensing_pharmacist_is_in_the_ledger_and_the_regulator_record(department) -> None:
    scene = RxScene(department)
    prescription_id = scene.active(lines=[line(), line("DEMO-0002", dose="80")])
    _ok(_choose(scene, prescription_id, {"method": "pickup", "pharmacy": str(scene.pharmacy.pk)}))
    prescription_id, secret = scene.claimed(prescription_id)

    dispensed = _ok(
        scene.dispense(
            prescription_id,
            secret,
            items=[
                {"line": 1, "quantity": 1, "batch_number": "B2026-1102"},
                {"line": 2, "quantity": 1, "batch_number": "V2026-0307"},
            ],
            pharmacist=PHARMACIST,
        )
    )
    assert dispensed["status"] == "dispensed"

    ledger = DispenseEntry.objects.filter(line__prescription_id=prescription_id).order_by(
        "line__position", "id"
    )
    assert list(
        ledger.values_list(
            "line__position", "batch_number", "pharmacist_name", "pharmacist_licence", "staff"
        )
    ) == [
        (1, "B2026-1102", "李药师", "YS330100777", scene.staff.pk),
        (2, "V2026-0307", "李药师", "YS330100777", scene.staff.pk),
    ]
    event = PrescriptionEvent.objects.get(prescription_id=prescription_id, action="dispense")
    assert event.data["pharmacist"] == "李药师"

    [record] = _dispense_records(prescription_id)
    assert record["dispensing_pharmacist"] == "李药师"
    assert record["dispensing_pharmacist_licence"] == "YS330100777"
    assert record["event"] == "dispensed"
    assert record["delivery_type"] == "retail_pharmacy"
    assert record["pharmacy"] == {"code": scene.pharmacy.code, "name": scene.pharmacy.name}
    assert record["lines"] == [
        {"drug_code": "DEMO-0001", "quantity": 1, "batch_number": "B2026-1102"},
        {"drug_code": "DEMO-0002", "quantity": 1, "batch_number": "V2026-0307"},
    ]


def drf_message(reason: str) -> str:
    """DRF's own message for a required, null or blank field, in the site's language."""
    with translation.override(settings.LANGUAGE_CODE):
        return str(serializers.CharField().error_messages[reason])


@pytest.mark.parametrize(
    ("pharmacist", "field", "reason"),
    [
        pytest.param(..., "pharmacist", "required", id="missing"),
        pytest.param(None, "pharmacist", "null", id="null"),
        pytest.param({**PHARMACIST, "name": ""}, "pharmacist.name", "blank", id="blank-name"),
        pytest.param({**PHARMACIST, "name": "   "}, "pharmacist.name", "blank", id="spaces-name"),
        pytest.param(
            {**PHARMACIST, "licence_number": ""},
            "pharmacist.licence_number",
            "blank",
            id="blank-licence",
        ),
        pytest.param({"name": "李药师"}, "pharmacist.licence_number", "required", id="no-licence"),
    ],
)
def test_a_dispense_that_names_no_pharmacist_is_refused(
    department: Any, pharmacist: Any, field: str, reason: str
) -> None:
    scene = RxScene(department)
    prescription_id, secret = scene.claimed()
    body: dict[str, Any] = {
        "claim_secret": secret,
        "items": [{"line": 1, "quantity": 1, "batch_number": "B2026-1102"}],
    }
    if pharmacist is not ...:
        body["pharmacist"] = pharmacist
    refused = scene.pharmacy_api.post(
        f"/api/pharmacy/v1/prescriptions/{prescription_id}/dispense", body, format="json"
    )

    problem = assert_problem(refused, 400, "validation_error")
    assert problem["errors"] == {field: [drf_message(reason)]}
    # Nothing was handed over on the record: the claim stands, no ledger, no report.
    assert status_of(prescription_id) == "claimed"
    assert not DispenseEntry.objects.filter(line__prescription_id=prescription_id).exists()
    assert list(
        PrescriptionLine.objects.filter(prescription_id=prescription_id).values_list(
            "dispensed_quantity", flat=True
        )
    ) == [0]
    assert not PrescriptionEvent.objects.filter(
        prescription_id=prescription_id, action="dispense"
    ).exists()
    assert _dispense_records(prescription_id) == []
    assert Prescription.objects.get(pk=prescription_id).receipt is None

    # Naming the pharmacist, the same claim dispenses.
    done = _ok(scene.dispense(prescription_id, secret, pharmacist=PHARMACIST))
    assert done["status"] == "dispensed"
    assert [r["dispensing_pharmacist"] for r in _dispense_records(prescription_id)] == ["李药师"]
