"""Each prescribing rule of DOMAIN.md (rules 5-9, the doctor's warnings, and the review
steps of rule 6) with its stable error code, through the console HTTP API: the refusal
has its exact status and problem code, and nothing that should not exist does."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from typing import Any

import pytest
import time_machine
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from backend.api.problems import DomainError
from backend.patients.models import PatientProfile
from backend.pki.services import certificate_issue
from consultations.models import Consultation
from prescriptions.catalogue import drug_catalogue_import
from prescriptions.models import (
    ControlledDrugAttempt,
    Drug,
    Prescription,
    PrescriptionLine,
    PrescriptionVersion,
)
from prescriptions.services import _transition
from prescriptions.verify import verify_bundle
from tests.consult_helpers import client_for
from tests.consult_http_helpers import CONSOLE, assert_problem, audit_count
from tests.factories import DepartmentFactory
from tests.rx_helpers import RxScene, console_session, fresh_otp, line, shanghai, status_of
from tests.rx_more_helpers import (
    access_failures,
    actions_of,
    claim,
    code_of,
    colleague,
    colleague_session,
    count_events,
    end_consultation,
    outcomes,
    patch,
    prescriptions_of,
    reject,
    revise,
    years_before,
)

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("icd10")]

CONTROLLED = {
    "DEMO-C001": "narcotic",
    "DEMO-C002": "psychotropic_1",
    "DEMO-C003": "psychotropic_2",
    "DEMO-C004": "toxic",
    "DEMO-C005": "radioactive",
    "DEMO-C006": "precursor",
}
GUARDIAN = {"name": "张父", "relation": "父亲"}
SPECIALIST = {"name": "李儿科", "title": "主任医师", "department": "儿科"}


@pytest.fixture
def morning() -> Iterator[None]:
    """A fixed morning (Asia/Shanghai), so that "today" cannot change during the test."""
    with time_machine.travel(shanghai(2026, 11, 23, 9, 0), tick=False):
        yield


def _draft_id(response: Any) -> str:
    assert response.status_code == 201, response.content
    return str(response.json()["id"])


def _profile(scene: RxScene, **fields: Any) -> None:
    PatientProfile.objects.filter(pk=scene.profile.pk).update(**fields)


# --- Rule 5: only the treating doctor, while the consultation is open or just after ----------


def test_another_doctor_of_the_same_hospital_cannot_prescribe(department) -> None:
    scene = RxScene(department)
    other, session = colleague_session(department)
    body = {"consultation": scene.consultation_id, "lines": [line()]}

    refused = session.post(f"{CONSOLE}/prescriptions", body, format="json")

    assert_problem(refused, 403, "not_treating_doctor")
    assert prescriptions_of(scene.consultation_id) == 0
    assert audit_count("prescription.create") == 0

    # Nor edit or sign the treating doctor's draft.
    prescription_id = _draft_id(scene.draft())
    edit = session.patch(
        f"{CONSOLE}/prescriptions/{prescription_id}", {"validity_days": 2}, format="json"
    )
    assert_problem(edit, 403, "not_treating_doctor")
    sign = session.post(
        f"{CONSOLE}/prescriptions/{prescription_id}/sign",
        {"otp": fresh_otp(other.user)},
        format="json",
    )
    assert_problem(sign, 403, "not_treating_doctor")
    prescription = Prescription.objects.get(pk=prescription_id)
    assert (prescription.status, prescription.validity_days) == ("draft", 1)
    assert not PrescriptionVersion.objects.filter(prescription_id=prescription_id).exists()
    assert actions_of(prescription_id) == ["create"]


def test_a_doctor_of_another_hospital_does_not_even_see_the_consultation(department) -> None:
    scene = RxScene(department)
    stranger = colleague(DepartmentFactory())
    session = console_session(stranger.user)
    body = {"consultation": scene.consultation_id, "lines": [line()]}
    assert_problem(session.post(f"{CONSOLE}/prescriptions", body, format="json"), 404, "not_found")
    assert prescriptions_of(scene.consultation_id) == 0

    # Nor the treating doctor's draft, which is not there for them either.
    certificate_issue(practitioner=stranger)  # a signer in their own hospital
    prescription_id = _draft_id(scene.draft())
    sign = session.post(
        f"{CONSOLE}/prescriptions/{prescription_id}/sign",
        {"otp": fresh_otp(stranger.user)},
        format="json",
    )
    assert_problem(sign, 404, "not_found")
    assert Prescription.objects.get(pk=prescription_id).status == "draft"
    assert not PrescriptionVersion.objects.filter(prescription_id=prescription_id).exists()


def test_prescribing_stays_open_for_the_grace_period_after_the_consultation_ended(
    department,
) -> None:
    scene = RxScene(department)
    early = _draft_id(scene.draft())  # drafted while the consultation was in progress
    end_consultation(scene)
    ended_at = Consultation.objects.get(pk=scene.consultation_id).closed_at
    assert ended_at is not None
    grace = dt.timedelta(minutes=settings.PRESCRIPTION_GRACE_MINUTES)

    with time_machine.travel(ended_at + grace - dt.timedelta(seconds=1), tick=False):
        session = console_session(scene.doctor.user)  # the console session timed out
        within = session.post(
            f"{CONSOLE}/prescriptions",
            {"consultation": scene.consultation_id, "lines": [line()]},
            format="json",
        )
        assert within.status_code == 201, within.content
        # The ended consultation's diagnoses are the prescription's.
        assert [d["icd10"] for d in within.json()["diagnoses"]] == ["I10"]

    with time_machine.travel(ended_at + grace + dt.timedelta(seconds=1), tick=False):
        session = console_session(scene.doctor.user)
        late = session.post(
            f"{CONSOLE}/prescriptions",
            {"consultation": scene.consultation_id, "lines": [line()]},
            format="json",
        )
        assert_problem(late, 409, "prescribing_closed")
        # A draft made in time cannot be signed after the grace period either.
        sign = session.post(
            f"{CONSOLE}/prescriptions/{early}/sign",
            {"otp": fresh_otp(scene.doctor.user)},
            format="json",
        )
        assert_problem(sign, 409, "prescribing_closed")
    assert prescriptions_of(scene.consultation_id) == 2
    assert status_of(early) == "draft"
    assert not PrescriptionVersion.objects.filter(prescription_id=early).exists()


def test_a_consultation_referred_offline_allows_no_prescription(department) -> None:
    scene = RxScene(department)
    refer = scene.doctor_api.post(
        f"{CONSOLE}/consultations/{scene.consultation_id}/refer-offline",
        {"reason": "病情变化，需线下就诊"},
        format="json",
    )
    assert refer.status_code == 200, refer.content
    assert_problem(scene.draft(), 409, "prescribing_closed")
    assert prescriptions_of(scene.consultation_id) == 0


# --- Rule 6: the doctor's own signing act, then the pharmacist's -----------------------------


def test_signing_needs_the_doctors_code(department) -> None:
    scene = RxScene(department)
    prescription_id = _draft_id(scene.draft())

    assert_problem(scene.sign(prescription_id, otp=""), 403, "signature_required")
    no_body = scene.doctor_session.post(
        f"{CONSOLE}/prescriptions/{prescription_id}/sign", {}, format="json"
    )
    assert_problem(no_body, 403, "signature_required")

    assert status_of(prescription_id) == "draft"
    assert not PrescriptionVersion.objects.filter(prescription_id=prescription_id).exists()
    assert actions_of(prescription_id) == ["create"]


def test_software_cannot_sign_for_the_doctor_even_with_a_valid_code(department) -> None:
    scene = RxScene(department)
    prescription_id = _draft_id(scene.draft())
    code = fresh_otp(scene.doctor.user)

    by_token = scene.doctor_api.post(
        f"{CONSOLE}/prescriptions/{prescription_id}/sign", {"otp": code}, format="json"
    )

    assert_problem(by_token, 403, "signature_required")
    assert status_of(prescription_id) == "draft"
    assert not PrescriptionVersion.objects.filter(prescription_id=prescription_id).exists()
    # The code was good (and not spent): the doctor in person signs with it.
    signed = scene.sign(prescription_id, otp=code)
    assert signed.status_code == 200, signed.content
    assert signed.json()["status"] == "under_review"

    # Nor can software approve for the pharmacist.
    by_token = client_for(scene.pharmacist.user).post(
        f"{CONSOLE}/prescriptions/{prescription_id}/approve",
        {"otp": fresh_otp(scene.pharmacist.user)},
        format="json",
    )
    assert_problem(by_token, 403, "signature_required")
    assert status_of(prescription_id) == "under_review"
    assert count_events(prescription_id, "approve") == 0


def test_a_pharmacist_cannot_sign_a_doctors_prescription(department) -> None:
    scene = RxScene(department)
    prescription_id = _draft_id(scene.draft())
    response = scene.pharmacist_session.post(
        f"{CONSOLE}/prescriptions/{prescription_id}/sign",
        {"otp": fresh_otp(scene.pharmacist.user)},
        format="json",
    )
    assert_problem(response, 403, "permission_denied")
    assert status_of(prescription_id) == "draft"


def test_a_pharmacist_cannot_approve_an_unsigned_draft(department) -> None:
    scene = RxScene(department)
    prescription_id = _draft_id(scene.draft())

    assert_problem(scene.approve(prescription_id), 403, "signature_required")

    assert status_of(prescription_id) == "draft"
    assert count_events(prescription_id, "approve") == 0
    assert audit_count("prescription.approve", prescription_id) == 0


def test_the_doctor_cannot_approve_their_own_prescription(department) -> None:
    scene = RxScene(department)
    prescription_id = scene.signed()
    response = scene.doctor_session.post(
        f"{CONSOLE}/prescriptions/{prescription_id}/approve",
        {"otp": fresh_otp(scene.doctor.user)},
        format="json",
    )
    assert_problem(response, 403, "permission_denied")
    assert status_of(prescription_id) == "under_review"
    assert count_events(prescription_id, "approve") == 0


def test_a_pharmacist_not_filed_or_not_licensed_cannot_review(department) -> None:
    """Rule 6: the reviewer is a licensed pharmacist, filed here, at each review."""
    scene = RxScene(department)
    prescription_id = scene.signed()
    pharmacist = scene.pharmacist
    yesterday = timezone.localdate() - dt.timedelta(days=1)
    for fields, reason in (
        ({"filing_status": "pending"}, "filing status is pending, not filed"),
        ({"licence_valid_until": yesterday}, f"practice licence expired on {yesterday}"),
    ):
        type(pharmacist).objects.filter(pk=pharmacist.pk).update(**fields)
        for response in (scene.approve(prescription_id), reject(scene, prescription_id)):
            body = assert_problem(response, 403, "pharmacist_not_qualified")
            assert body["reasons"] == [reason]
        type(pharmacist).objects.filter(pk=pharmacist.pk).update(
            filing_status="filed", licence_valid_until=pharmacist.licence_valid_until
        )
        assert status_of(prescription_id) == "under_review"
        assert count_events(prescription_id, "approve") == 0
        assert count_events(prescription_id, "reject") == 0
        version = PrescriptionVersion.objects.get(prescription_id=prescription_id)
        assert (version.review_result, version.reviewed_by_id) == ("", None)

    # The hospital's own licence lapsed: neither the doctor signs nor the pharmacist reviews.
    hospital = department.hospital
    type(hospital).objects.filter(pk=hospital.pk).update(practice_licence_valid_until=yesterday)
    body = assert_problem(scene.approve(prescription_id), 403, "pharmacist_not_qualified")
    assert body["reasons"] == ["the hospital's practice licence has expired"]
    draft = _draft_id(scene.draft())
    body = assert_problem(scene.sign(draft), 403, "doctor_not_qualified")
    assert body["reasons"] == ["the hospital's practice licence has expired"]
    type(hospital).objects.filter(pk=hospital.pk).update(
        practice_licence_valid_until=hospital.practice_licence_valid_until
    )

    # Filed and licensed again, the same pharmacist approves.
    assert scene.approve(prescription_id).status_code == 200
    assert status_of(prescription_id) == "active"


def test_a_doctor_whose_filing_was_withdrawn_cannot_sign(department) -> None:
    """Rules 1 and 6: qualified when the consultation was accepted is not enough; the
    doctor is filed and licensed when signing too."""
    scene = RxScene(department)
    prescription_id = _draft_id(scene.draft())
    doctor = scene.doctor
    type(doctor).objects.filter(pk=doctor.pk).update(filing_status="revoked")
    body = assert_problem(scene.sign(prescription_id), 403, "doctor_not_qualified")
    assert body["reasons"] == ["filing status is revoked, not filed"]
    assert status_of(prescription_id) == "draft"
    assert not PrescriptionVersion.objects.filter(prescription_id=prescription_id).exists()
    type(doctor).objects.filter(pk=doctor.pk).update(filing_status="filed")
    assert scene.sign(prescription_id).status_code == 200


# --- Rule 7: no specially controlled drug online ----------------------------------------------


def test_every_controlled_class_of_the_catalogue_is_refused_and_recorded(department) -> None:
    scene = RxScene(department)
    in_catalogue = Drug.objects.exclude(control_class="none").values_list("code", "control_class")
    assert dict(in_catalogue) == CONTROLLED
    for n, (code, control_class) in enumerate(CONTROLLED.items(), 1):
        refused = scene.draft(lines=[line(code, dose="1", dose_unit="片", days=3)])

        body = assert_problem(refused, 422, "controlled_drug_forbidden")
        assert outcomes(body["checks"])[("controlled_drug_forbidden", 1)] == "error", code
        assert prescriptions_of(scene.consultation_id) == 0, code
        assert not PrescriptionLine.objects.filter(drug_code=code).exists(), code
        attempts = ControlledDrugAttempt.objects.filter(consultation_id=scene.consultation_id)
        assert attempts.count() == n, code
        attempt = attempts.latest("created_at", "id")
        assert attempt.doctor_id == scene.doctor.pk
        assert [(d["code"], d["class"]) for d in attempt.drugs] == [(code, control_class)]
        assert audit_count("prescription.controlled_drug_refused", scene.consultation_id) == n
    assert audit_count("prescription.create") == 0


def test_a_controlled_drug_among_ordinary_ones_refuses_the_whole_draft(department) -> None:
    scene = RxScene(department)
    refused = scene.draft(lines=[line(), line("DEMO-C003", dose="1", dose_unit="片")])
    body = assert_problem(refused, 422, "controlled_drug_forbidden")
    assert outcomes(body["checks"])[("controlled_drug_forbidden", 2)] == "error"
    assert prescriptions_of(scene.consultation_id) == 0
    attempt = ControlledDrugAttempt.objects.get(consultation_id=scene.consultation_id)
    assert [d["code"] for d in attempt.drugs] == ["DEMO-C003"]


def test_adding_a_controlled_drug_to_a_draft_is_refused_and_recorded(department) -> None:
    scene = RxScene(department)
    prescription_id = _draft_id(scene.draft())
    refused = patch(scene, prescription_id, {"lines": [line(), line("DEMO-C001", dose="1")]})
    assert_problem(refused, 422, "controlled_drug_forbidden")
    assert list(
        PrescriptionLine.objects.filter(prescription_id=prescription_id).values_list(
            "drug_code", flat=True
        )
    ) == ["DEMO-0001"]
    assert ControlledDrugAttempt.objects.filter(consultation_id=scene.consultation_id).count() == 1
    assert audit_count("prescription.controlled_drug_refused", scene.consultation_id) == 1


CATALOGUE_HEADER = (
    "code,code_system,generic_name,trade_name,specification,dosage_form,unit,route,"
    "rx_class,control_class,unit_price_fen\n"
)


def _tramadol(control_class: str) -> None:
    """盐酸曲马多片 in the hospital's catalogue, with this control class (a catalogue
    update reclassifies it, as China did with tramadol in 2008)."""
    row = f"DEMO-T001,hospital,盐酸曲马多片,,50mg*10片,片剂,盒,口服,rx,{control_class},1500\n"
    report = drug_catalogue_import(text=CATALOGUE_HEADER + row)
    assert report.ok, report.errors


def _reclassified_draft(scene: RxScene) -> str:
    _tramadol("none")
    prescription_id = _draft_id(scene.draft(lines=[line("DEMO-T001", dose="50", days=3)]))
    _tramadol("psychotropic_2")
    return prescription_id


def test_a_drug_reclassified_as_controlled_after_drafting_cannot_be_signed(department) -> None:
    scene = RxScene(department)
    prescription_id = _reclassified_draft(scene)

    body = assert_problem(scene.sign(prescription_id), 422, "controlled_drug_forbidden")

    assert outcomes(body["checks"])[("controlled_drug_forbidden", 1)] == "error"
    assert status_of(prescription_id) == "draft"
    assert not PrescriptionVersion.objects.filter(prescription_id=prescription_id).exists()
    assert actions_of(prescription_id) == ["create"]


def test_a_controlled_drug_refused_at_signing_is_recorded_like_at_drafting(department) -> None:
    scene = RxScene(department)
    prescription_id = _reclassified_draft(scene)
    assert_problem(scene.sign(prescription_id), 422, "controlled_drug_forbidden")

    attempt = ControlledDrugAttempt.objects.get(consultation_id=scene.consultation_id)
    assert [(d["code"], d["class"]) for d in attempt.drugs] == [("DEMO-T001", "psychotropic_2")]
    assert audit_count("prescription.controlled_drug_refused", scene.consultation_id) == 1


# --- Rule 8: children under 6 ---------------------------------------------------------------------


@pytest.mark.usefixtures("morning")
def test_a_child_under_six_needs_a_guardian_and_a_specialist(department) -> None:
    scene = RxScene(department)
    today = timezone.localdate()
    # Six tomorrow: still five today.
    _profile(scene, birth_date=years_before(today, 6) + dt.timedelta(days=1))

    body = assert_problem(scene.draft(), 422, "guardian_required")
    assert outcomes(body["checks"])[("guardian_required", None)] == "error"
    assert "guardian" in body["detail"]
    assert "specialist" in body["detail"]
    only_guardian = assert_problem(scene.draft(guardian=GUARDIAN), 422, "guardian_required")
    assert "specialist" in only_guardian["detail"]
    assert "guardian" not in only_guardian["detail"].replace("guardian_required", "")
    assert_problem(scene.draft(specialist=SPECIALIST), 422, "guardian_required")
    assert prescriptions_of(scene.consultation_id) == 0

    accepted = scene.draft(guardian=GUARDIAN, specialist=SPECIALIST)
    prescription_id = _draft_id(accepted)
    assert outcomes(accepted.json()["checks"])[("guardian_required", None)] == "pass"
    assert accepted.json()["guardian"]["name"] == GUARDIAN["name"]
    assert accepted.json()["specialist"]["name"] == SPECIALIST["name"]

    # Both are part of what the doctor signs.
    signed = scene.sign(prescription_id)
    assert signed.status_code == 200, signed.content
    bundle = scene.doctor_session.get(f"{CONSOLE}/prescriptions/{prescription_id}/bundle").json()
    content = verify_bundle(bundle, require_review=False).content
    assert content["guardian"]["name"] == GUARDIAN["name"]
    assert content["specialist"]["name"] == SPECIALIST["name"]


@pytest.mark.usefixtures("morning")
def test_on_the_sixth_birthday_no_guardian_is_needed(department) -> None:
    scene = RxScene(department)
    _profile(scene, birth_date=years_before(timezone.localdate(), 6))
    response = scene.draft()
    assert response.status_code == 201, response.content
    assert outcomes(response.json()["checks"])[("guardian_required", None)] == "pass"
    assert response.json()["guardian"] is None


# --- Rule 9: validity and supply ------------------------------------------------------------------


def test_validity_is_at_most_three_days(department) -> None:
    scene = RxScene(department)
    body = assert_problem(scene.draft(validity_days=4), 422, "validity_too_long")
    assert outcomes(body["checks"])[("validity_too_long", None)] == "error"
    assert prescriptions_of(scene.consultation_id) == 0

    prescription_id = _draft_id(scene.draft(validity_days=3))
    signed = scene.sign(prescription_id)
    assert signed.status_code == 200, signed.content
    issued = timezone.localtime(dt.datetime.fromisoformat(signed.json()["issued_at"]))
    valid_until = dt.datetime.fromisoformat(signed.json()["valid_until"])
    # Valid on the day of issue and two more: until midnight (Asia/Shanghai) after the third.
    assert valid_until == dt.datetime.combine(
        issued.date() + dt.timedelta(days=3), dt.time.min, tzinfo=issued.tzinfo
    )


def test_supply_over_seven_days_needs_a_chronic_reason_and_stays_under_the_maximum(
    department,
) -> None:
    scene = RxScene(department)
    maximum = settings.PRESCRIPTION_MAX_CHRONIC_DAYS
    reason = "高血压稳定期，长期规律服药"

    body = assert_problem(scene.draft(lines=[line(days=8)]), 422, "supply_too_long")
    assert outcomes(body["checks"])[("supply_too_long", 1)] == "error"
    assert_problem(scene.draft(lines=[line(days=8)], chronic_reason="  "), 422, "supply_too_long")
    over = scene.draft(lines=[line(days=maximum + 1, quantity=13)], chronic_reason=reason)
    assert_problem(over, 422, "supply_too_long")
    assert prescriptions_of(scene.consultation_id) == 0

    seven = scene.draft(lines=[line(days=7)])
    assert seven.status_code == 201, seven.content
    eight = scene.draft(lines=[line(days=8, quantity=2)], chronic_reason=reason)
    assert eight.status_code == 201, eight.content
    assert eight.json()["chronic_reason"] == reason
    assert outcomes(eight.json()["checks"])[("supply_too_long", None)] == "pass"
    longest = scene.draft(lines=[line(days=maximum, quantity=12)], chronic_reason=reason)
    assert longest.status_code == 201, longest.content
    assert prescriptions_of(scene.consultation_id) == 3


def test_a_quantity_that_lasts_longer_than_the_days_of_its_line_is_refused(department) -> None:
    """Rule 9 on what is dispensed: the days a line states are its supply only if its
    quantity does not last longer. Amlodipine 5 mg × 7 tablets a box, 5 mg once a day."""
    scene = RxScene(department)
    reason = "高血压稳定期，长期规律服药"

    # Fifty boxes "for seven days" would be a year's supply without any reason.
    body = assert_problem(scene.draft(lines=[line(days=7, quantity=50)]), 422, "supply_too_long")
    [check] = [c for c in body["checks"] if c["rule"] == "supply_too_long"]
    assert (check["outcome"], check["line"]) == ("error", 1)
    assert check["message"] == (
        "50 盒 last about 350 days, more than the 7 days of the line (1 盒 are enough): "
        "give the days the quantity lasts."
    )
    # Nor with a chronic reason: the line's days must say how long it lasts.
    over = scene.draft(lines=[line(days=28, quantity=5)], chronic_reason=reason)
    assert_problem(over, 422, "supply_too_long")
    assert prescriptions_of(scene.consultation_id) == 0

    accepted = [
        line(days=7, quantity=1),  # 7 tablets for 7 days
        line(days=5, quantity=1),  # a whole box is the least there is
        line(days=7, quantity=2, frequency="bid"),  # twice a day: 14 tablets
        line(days=7, quantity=2, dose="1", dose_unit="片", frequency="bid"),  # counted
        line(days=3, quantity=1, dose="2.5"),  # half a tablet: still one box
        line("DEMO-0005", dose="0.5", dose_unit="g", frequency="tid", days=7, quantity=2),
        line("DEMO-0012", dose="100", dose_unit="μg", days=7, quantity=1),  # μg
        line(days=7, quantity=3, frequency="prn"),  # as needed: no schedule to count
    ]
    for n, one in enumerate(accepted, 1):
        response = scene.draft(lines=[one])
        assert response.status_code == 201, (n, response.content)
        assert outcomes(response.json()["checks"])[("supply_too_long", None)] == "pass"
    refused = [
        line(days=5, quantity=2),
        line(days=7, quantity=3, frequency="bid"),
        line(days=7, quantity=3, dose="1", dose_unit="片", frequency="bid"),
        line("DEMO-0005", dose="0.5", dose_unit="g", frequency="tid", days=7, quantity=3),
    ]
    for one in refused:
        assert_problem(scene.draft(lines=[one]), 422, "supply_too_long")
    # A chronic supply: 28 days need 4 boxes, and may have them.
    chronic = scene.draft(lines=[line(days=28, quantity=4)], chronic_reason=reason)
    assert chronic.status_code == 201, chronic.content
    assert prescriptions_of(scene.consultation_id) == len(accepted) + 1


def test_the_quantity_is_checked_again_when_signing(department) -> None:
    """A draft written before the catalogue said what a box holds is checked on signing."""
    scene = RxScene(department)
    Drug.objects.filter(code="DEMO-0001").update(pack_size=None)
    prescription_id = _draft_id(scene.draft(lines=[line(days=7, quantity=50)]))
    Drug.objects.filter(code="DEMO-0001").update(pack_size=7)
    assert_problem(scene.sign(prescription_id), 422, "supply_too_long")
    assert status_of(prescription_id) == "draft"


# --- Warnings: duplicate drugs and allergies ---------------------------------------------------


def test_a_duplicate_drug_line_is_a_warning(department) -> None:
    scene = RxScene(department)
    response = scene.draft(lines=[line(), line("DEMO-0002"), line(quantity=2, frequency="bid")])
    assert response.status_code == 201, response.content
    checks = outcomes(response.json()["checks"])
    assert checks[("duplicate_drug", 3)] == "warning"
    assert ("duplicate_drug", 2) not in checks
    assert ("duplicate_drug", None) not in checks  # no "pass" beside the warning
    # A warning does not block signing.
    signed = scene.sign(response.json()["id"])
    assert signed.status_code == 200, signed.content


def test_a_known_allergy_is_a_warning(department) -> None:
    scene = RxScene(department)
    _profile(scene, allergies=["氨氯地平", "青霉素"])
    response = scene.draft(lines=[line("DEMO-0002"), line()])
    assert response.status_code == 201, response.content
    checks = outcomes(response.json()["checks"])
    assert checks[("allergy_conflict", 2)] == "warning"
    assert ("allergy_conflict", 1) not in checks
    warning = next(c for c in response.json()["checks"] if c["rule"] == "allergy_conflict")
    assert "氨氯地平" in warning["message"]
    assert audit_count("prescription.create", response.json()["id"]) == 1

    clean = scene.draft(lines=[line("DEMO-0002")])
    assert outcomes(clean.json()["checks"])[("allergy_conflict", None)] == "pass"


# --- Rule 6 / 11: nothing is claimable before review ----------------------------------------------


def test_a_pharmacy_cannot_claim_before_the_pharmacist_approved(department) -> None:
    scene = RxScene(department)
    draft_id = _draft_id(scene.draft())
    under_review = scene.signed()
    rejected = scene.signed()
    assert reject(scene, rejected).status_code == 200

    for prescription_id, status in (
        (draft_id, "draft"),
        (under_review, "under_review"),
        (rejected, "review_rejected"),
    ):
        response = claim(scene.pharmacy_api, prescription_id, code_of(prescription_id))
        assert_problem(response, 409, "not_reviewed")
        assert status_of(prescription_id) == status
        assert count_events(prescription_id, "claim") == 0
        assert access_failures(prescription_id) == 0  # the code was right
        assert Prescription.objects.get(pk=prescription_id).claimed_by_id is None


# --- The catalogue: only an available drug ------------------------------------------------------


def test_a_line_must_name_an_available_drug_of_the_catalogue(department) -> None:
    scene = RxScene(department)
    before = Prescription.objects.count()

    unknown = assert_problem(scene.draft(lines=[line("NO-SUCH-DRUG")]), 422, "unknown_drug")
    assert unknown["errors"] == {
        "lines.0.drug": ["Not an available drug of the catalogue (id or code)."]
    }
    Drug.objects.filter(code="DEMO-0001").update(is_active=False)  # withdrawn
    assert_problem(scene.draft(lines=[line("DEMO-0001")]), 422, "unknown_drug")
    Drug.objects.filter(code="DEMO-0001").update(is_active=True)
    # Beside an available one, the unknown line is named.
    mixed = scene.draft(lines=[line("DEMO-0001"), line("NO-SUCH-DRUG")])
    assert set(assert_problem(mixed, 422, "unknown_drug")["errors"]) == {"lines.1.drug"}
    assert Prescription.objects.count() == before
    assert _draft_id(scene.draft(lines=[line("DEMO-0001")]))


# --- The transition table says who may make each move --------------------------------------------


@pytest.mark.parametrize(
    ("action", "who"),
    [("approve", "doctor"), ("sign", "pharmacist"), ("claim", "patient"), ("expire", "doctor")],
)
def test_the_transition_table_refuses_a_move_by_the_wrong_kind_of_account(
    department: Any, action: str, who: str
) -> None:
    """The services check roles before they get there; the table, where every move is
    checked, holds the same line (a future path that forgets its role check is refused)."""
    scene = RxScene(department)
    prescription_id = scene.signed() if action != "claim" else scene.active()
    if action == "sign":
        prescription_id = _draft_id(scene.draft())
    accounts = {
        "doctor": scene.doctor.user,
        "pharmacist": scene.pharmacist.user,
        "patient": scene.profile.account,
    }
    before = actions_of(prescription_id)
    with transaction.atomic():
        prescription = Prescription.objects.select_for_update().get(pk=prescription_id)
        with pytest.raises(DomainError) as refused:
            _transition(prescription, action, actor=accounts[who])
    assert refused.value.code == "permission_denied"
    assert refused.value.detail == f"A {who} account cannot {action} a prescription."
    assert actions_of(prescription_id) == before


# --- Drafts are edited, signed versions are not ---------------------------------------------------


def test_only_a_draft_can_be_edited(department) -> None:
    scene = RxScene(department)
    prescription_id = _draft_id(scene.draft())

    edited = patch(
        scene, prescription_id, {"validity_days": 2, "lines": [line(quantity=2, frequency="bid")]}
    )
    assert edited.status_code == 200, edited.content
    assert edited.json()["validity_days"] == 2
    assert edited.json()["lines"][0]["quantity"] == 2
    assert edited.json()["total"] == 2 * edited.json()["lines"][0]["unit_price"]
    assert {c["rule"] for c in edited.json()["checks"]} >= {"supply_too_long", "validity_too_long"}

    # A refused edit changes nothing.
    assert_problem(patch(scene, prescription_id, {"validity_days": 4}), 422, "validity_too_long")
    assert_problem(patch(scene, prescription_id, {"lines": [line(days=8)]}), 422, "supply_too_long")
    prescription = Prescription.objects.get(pk=prescription_id)
    assert prescription.validity_days == 2
    assert [(ln.days, ln.quantity) for ln in prescription.lines.all()] == [(7, 2)]

    assert scene.sign(prescription_id).status_code == 200
    signed_bytes = bytes(
        PrescriptionVersion.objects.get(prescription_id=prescription_id).signed_bytes
    )
    body = assert_problem(
        patch(scene, prescription_id, {"validity_days": 1}), 409, "prescription_state_conflict"
    )
    assert body["prescription_status"] == "under_review"
    prescription.refresh_from_db()
    assert (prescription.status, prescription.validity_days) == ("under_review", 2)
    version = PrescriptionVersion.objects.get(prescription_id=prescription_id)
    assert bytes(version.signed_bytes) == signed_bytes
    assert audit_count("prescription.edit", prescription_id) == 1


# --- Review: reject, a new version, signed again --------------------------------------------------


def test_a_revision_after_rejection_is_version_two_and_must_be_signed_again(department) -> None:
    scene = RxScene(department)
    prescription_id = scene.signed()
    v1_signature = bytes(
        PrescriptionVersion.objects.get(prescription_id=prescription_id, version=1).doctor_signature
    )

    assert_problem(reject(scene, prescription_id, reason=""), 400, "validation_error")
    rejected = reject(scene, prescription_id, reason="剂量偏大，请调整")
    assert rejected.status_code == 200, rejected.content
    assert rejected.json()["status"] == "review_rejected"
    assert rejected.json()["status_reason"] == "剂量偏大，请调整"
    assert_problem(scene.approve(prescription_id), 409, "prescription_state_conflict")

    revised = revise(scene, prescription_id)
    assert revised.status_code == 200, revised.content
    assert (revised.json()["status"], revised.json()["version"]) == ("draft", 2)
    assert revised.json()["issued_at"] is None
    v1 = PrescriptionVersion.objects.get(prescription_id=prescription_id, version=1)
    assert v1.superseded_at is not None
    assert v1.review_result == "rejected"

    # Version 2 is a draft: not approvable, not claimable, editable.
    assert_problem(scene.approve(prescription_id), 403, "signature_required")
    assert_problem(
        claim(scene.pharmacy_api, prescription_id, code_of(prescription_id)), 409, "not_reviewed"
    )
    edited = patch(scene, prescription_id, {"lines": [line(dose="2.5")]})
    assert edited.status_code == 200, edited.content
    assert not PrescriptionVersion.objects.filter(
        prescription_id=prescription_id, version=2
    ).exists()

    signed = scene.sign(prescription_id)
    assert signed.status_code == 200, signed.content
    assert (signed.json()["status"], signed.json()["version"]) == ("under_review", 2)
    v2 = PrescriptionVersion.objects.get(prescription_id=prescription_id, version=2)
    assert bytes(v2.doctor_signature) != v1_signature
    assert json.loads(bytes(v2.signed_bytes))["lines"][0]["dose"] == "2.5"

    approved = scene.approve(prescription_id)
    assert approved.status_code == 200, approved.content
    assert approved.json()["verification"]["version"] == 2
    assert actions_of(prescription_id) == [
        "create",
        "sign",
        "submit",
        "reject",
        "revise",
        "sign",
        "submit",
        "approve",
    ]


# --- The review queue is per hospital -------------------------------------------------------------


def test_the_review_queue_shows_only_the_pharmacists_own_hospital(department) -> None:
    ours = RxScene(department)
    theirs = RxScene(DepartmentFactory())
    assert ours.hospital.pk != theirs.hospital.pk
    our_id = ours.signed()
    their_id = theirs.signed()

    def queue(scene: RxScene) -> list[str]:
        response = scene.pharmacist_session.get(f"{CONSOLE}/reviews")
        assert response.status_code == 200, response.content
        return [p["id"] for p in response.json()["results"]]

    assert queue(ours) == [our_id]
    assert queue(theirs) == [their_id]

    assert_problem(ours.approve(their_id), 403, "not_your_review")
    assert_problem(reject(ours, their_id), 403, "not_your_review")
    assert status_of(their_id) == "under_review"
    assert actions_of(their_id) == ["create", "sign", "submit"]
    detail = ours.pharmacist_session.get(f"{CONSOLE}/prescriptions/{their_id}")
    assert_problem(detail, 404, "not_found")

    # The queue is the pharmacists'.
    assert_problem(ours.doctor_session.get(f"{CONSOLE}/reviews"), 403, "permission_denied")
