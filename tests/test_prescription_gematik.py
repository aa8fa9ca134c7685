"""The prescription lifecycle against gematik's E-Rezept scenarios, adapted (DOMAIN.md,
"Prescription lifecycle"), and ours beyond them: the claim race, expiry, the validity
boundary at midnight Asia/Shanghai, and replays with the same Idempotency-Key.

Every step is a real HTTP call (pharmacy API, console, mobile app); the clock is moved
with ``time_machine`` only. Most tests start from a fixed morning so that none of them
depends on the hour the suite runs at.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import time_machine
from cryptography.exceptions import InvalidSignature
from django.conf import settings
from django.db import connection, connections

from backend.api.models import IdempotencyRecord
from backend.audit.models import AuditEvent
from backend.audit.services import audit_chain_verify
from backend.celery import app as celery_app
from prescriptions.models import (
    AccessCodeFailure,
    DispenseEntry,
    Prescription,
    PrescriptionEvent,
    PrescriptionVersion,
)
from prescriptions.services import claims_release_idle, prescriptions_expire_due
from prescriptions.tasks import expire_prescriptions, release_idle_claims
from prescriptions.verify import VerificationError, verify_bundle
from tests.consult_helpers import request_consultation
from tests.consult_http_helpers import (
    CONSOLE,
    MOBILE,
    another_patient,
    assert_problem,
    audit_count,
    require_postgres,
)
from tests.rx_helpers import (
    PHARMACY,
    RxScene,
    console_session,
    line,
    pharmacy_staff,
    shanghai,
    status_of,
)
from tests.rx_more_helpers import (
    access_failures,
    actions_of,
    claim,
    code_of,
    count_events,
    current_certificate,
    dispense_body,
    dispense_entries,
    dispensed_quantities,
    doctor_cancel,
    flip_signed_bytes,
    forge_version,
    patient_cancel,
    pharmacy_bundle,
    pharmacy_view,
    release,
    signature_sha256,
    verify_receipt,
)

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("icd10")]

#: A Monday morning in Asia/Shanghai; validity (1 day) ends at the following midnight.
MORNING = shanghai(2026, 11, 23, 9, 0)
EXPIRE_TASK = "prescriptions.tasks.expire_prescriptions"
RELEASE_TASK = "prescriptions.tasks.release_idle_claims"


@pytest.fixture
def clock() -> Iterator[time_machine.Traveller]:
    """The clock stands still at ``MORNING``; tests move it explicitly."""
    with time_machine.travel(MORNING, tick=False) as traveller:
        yield traveller


@pytest.fixture
def scene(clock: time_machine.Traveller, department: Any) -> RxScene:
    return RxScene(department)


def _ok(response: Any, status: int = 200) -> dict[str, Any]:
    assert response.status_code == status, response.content
    body: dict[str, Any] = response.json()
    return body


def _dispense(api: Any, prescription_id: str, body: dict[str, Any], **headers: Any) -> Any:
    return api.post(
        f"/api/pharmacy/v1/prescriptions/{prescription_id}/dispense",
        body,
        format="json",
        **headers,
    )


def _run_task(name: str) -> int:
    """Run the periodic task by its registered name, in this process (the clock is ours)."""
    assert {expire_prescriptions.name, release_idle_claims.name} == {EXPIRE_TASK, RELEASE_TASK}
    result: int = celery_app.tasks[name].apply().get()
    return result


# --- Accept → close, with a verifiable receipt ---------------------------------------------------


def test_claim_then_dispense_gives_a_receipt_any_library_can_verify(scene: RxScene) -> None:
    prescription_id, secret = scene.claimed()
    bundle = _ok(pharmacy_bundle(scene.pharmacy_api, prescription_id))
    verify_bundle(bundle, trusted_roots={bundle["root_sha256"]})

    closed = _ok(scene.dispense(prescription_id, secret))

    assert closed["status"] == "dispensed"
    content = verify_receipt(closed["receipt"], root_sha256=bundle["root_sha256"])
    assert content["type"] == "dispense_receipt"
    assert content["prescription_id"] == prescription_id
    assert content["version"] == 1
    assert content["pharmacy"] == scene.pharmacy.code
    assert content["doctor_signature_sha256"] == signature_sha256(bundle)
    assert content["lines"] == [
        {"position": 1, "drug_code": "DEMO-0001", "quantity": 1, "batches": ["B2026-1102"]}
    ]
    assert dt.datetime.fromisoformat(content["dispensed_at"]) == MORNING
    # The seal covers the exact bytes: one changed byte and it no longer verifies.
    tampered = dict(closed["receipt"])
    raw = base64.b64decode(tampered["content"]).replace(b'"quantity":1', b'"quantity":9')
    tampered["content"] = base64.b64encode(raw).decode()
    with pytest.raises(InvalidSignature):
        verify_receipt(tampered, root_sha256=bundle["root_sha256"])
    # The receipt is what the patient sees too.
    mine = _ok(scene.patient_api.get(f"{MOBILE}/prescriptions/{prescription_id}"))
    assert mine["receipt"] == closed["receipt"]
    assert actions_of(prescription_id)[-2:] == ["claim", "dispense"]


# --- Accept after delete → 410 --------------------------------------------------------------------


def test_a_cancelled_prescription_cannot_be_claimed(scene: RxScene) -> None:
    prescription_id = scene.active()
    code = code_of(prescription_id)
    cancelled = _ok(doctor_cancel(scene, prescription_id))
    assert cancelled["status"] == "cancelled"

    assert_problem(claim(scene.pharmacy_api, prescription_id, code), 410, "prescription_cancelled")

    assert status_of(prescription_id) == "cancelled"
    assert count_events(prescription_id, "claim") == 0
    assert Prescription.objects.get(pk=prescription_id).claimed_by_id is None
    detail = _ok(scene.patient_api.get(f"{MOBILE}/prescriptions/{prescription_id}"))
    assert detail["access_code"] is None
    assert detail["qr"] is None


def test_the_qr_of_a_cancelled_or_expired_prescription_is_gone_with_its_reason(
    scene: RxScene, clock: time_machine.Traveller
) -> None:
    cancelled = scene.active()
    expired = scene.active()
    _ok(doctor_cancel(scene, cancelled))
    clock.move_to(shanghai(2026, 11, 24, 0, 0, 0))
    assert prescriptions_expire_due() == 1

    for prescription_id, code in (
        (cancelled, "prescription_cancelled"),
        (expired, "prescription_expired"),
    ):
        qr = scene.patient_api.get(f"{MOBILE}/prescriptions/{prescription_id}/qr.png")
        assert_problem(qr, 410, code)


def test_a_patient_cannot_act_on_a_draft_they_cannot_see(scene: RxScene) -> None:
    draft_id = _ok(scene.draft(), 201)["id"]
    assert_problem(scene.patient_api.get(f"{MOBILE}/prescriptions/{draft_id}"), 404, "not_found")

    assert_problem(patient_cancel(scene, draft_id), 404, "not_found")
    pickup = scene.patient_api.post(
        f"{MOBILE}/prescriptions/{draft_id}/fulfilment",
        {"method": "pickup", "pharmacy": str(scene.pharmacy.pk)},
        format="json",
    )
    assert_problem(pickup, 404, "not_found")

    prescription = Prescription.objects.get(pk=draft_id)
    assert (prescription.status, prescription.fulfilment) == ("draft", "")
    assert actions_of(draft_id) == ["create"]


def test_every_prescription_in_the_patients_list_can_be_opened(scene: RxScene) -> None:
    draft_id = _ok(scene.draft(), 201)["id"]
    assert _ok(doctor_cancel(scene, draft_id))["status"] == "cancelled"
    issued = scene.active()

    listed = _ok(scene.patient_api.get(f"{MOBILE}/prescriptions"))["results"]
    assert issued in [p["id"] for p in listed]
    for item in listed:
        detail = _ok(scene.patient_api.get(f"{MOBILE}/prescriptions/{item['id']}"))
        assert detail["status"] == item["status"]
        if item["id"] == draft_id:
            assert detail["bundle"] is None  # never signed


# --- The doctor cannot cancel once a pharmacy claimed ---------------------------------------------


def test_a_cancel_while_claimed_is_pending_until_the_pharmacy_releases(scene: RxScene) -> None:
    prescription_id, secret = scene.claimed()

    pending = doctor_cancel(scene, prescription_id, reason="诊断有误")
    assert pending.status_code == 202, pending.content
    assert pending.json()["status"] == "claimed"
    assert status_of(prescription_id) == "claimed"
    again = doctor_cancel(scene, prescription_id, reason="再次取消")
    assert again.status_code == 202, again.content
    assert count_events(prescription_id, "cancel_requested") == 1

    seen = _ok(pharmacy_view(scene.pharmacy_api, prescription_id))
    assert seen["cancel_requested"] is True
    assert seen["cancel_requested_reason"] == "诊断有误"

    assert_problem(scene.dispense(prescription_id, secret), 409, "cancel_pending")
    assert status_of(prescription_id) == "claimed"
    assert count_events(prescription_id, "dispense") == 0
    assert dispense_entries(prescription_id) == 0
    assert dispensed_quantities(prescription_id) == [0]

    released = _ok(release(scene.pharmacy_api, prescription_id, secret))
    assert released["status"] == "cancelled"
    assert status_of(prescription_id) == "cancelled"
    assert actions_of(prescription_id)[-4:] == ["claim", "cancel_requested", "release", "cancel"]
    assert_problem(
        claim(scene.pharmacy_api, prescription_id, code_of(prescription_id)),
        410,
        "prescription_cancelled",
    )


def test_a_release_needs_a_reason_and_keeps_it(scene: RxScene) -> None:
    prescription_id, secret = scene.claimed()
    url = f"{PHARMACY}/prescriptions/{prescription_id}/release"
    for body in ({"claim_secret": secret}, {"claim_secret": secret, "reason": "  "}):
        refused = assert_problem(
            scene.pharmacy_api.post(url, body, format="json"), 400, "validation_error"
        )
        assert "reason" in refused["errors"]
    # Refused, the claim is untouched: still this pharmacy's, with the same secret.
    assert status_of(prescription_id) == "claimed"
    assert count_events(prescription_id, "release") == 0

    assert _ok(release(scene.pharmacy_api, prescription_id, secret, "缺货"))["status"] == "active"
    event = PrescriptionEvent.objects.get(prescription_id=prescription_id, action="release")
    assert (event.reason, event.pharmacy_id) == ("缺货", scene.pharmacy.pk)


# --- The old secret is useless after a release ----------------------------------------------------


def test_an_old_claim_secret_is_useless_after_release(scene: RxScene) -> None:
    prescription_id, old = scene.claimed()
    _ok(release(scene.pharmacy_api, prescription_id, old))
    assert status_of(prescription_id) == "active"

    # Nothing is claimed now: the old secret names no claim (CONTRACT 5: 403
    # bad_claim_secret, whatever the reason the secret is not the current claim's).
    assert_problem(scene.dispense(prescription_id, old), 403, "bad_claim_secret")

    new = _ok(claim(scene.pharmacy_api, prescription_id, code_of(prescription_id)))["claim_secret"]
    assert new != old
    assert_problem(scene.dispense(prescription_id, old), 403, "bad_claim_secret")
    assert_problem(release(scene.pharmacy_api, prescription_id, old), 403, "bad_claim_secret")
    assert status_of(prescription_id) == "claimed"
    assert count_events(prescription_id, "dispense") == 0

    assert _ok(scene.dispense(prescription_id, new))["status"] == "dispensed"


# --- Claiming again -------------------------------------------------------------------------------


def test_the_same_pharmacy_gets_its_secret_back_and_another_gets_409(scene: RxScene) -> None:
    prescription_id, secret = scene.claimed()
    code = code_of(prescription_id)

    again = _ok(claim(scene.pharmacy_api, prescription_id, code))
    assert again["claim_secret"] == secret

    _, rival = pharmacy_staff()
    assert_problem(claim(rival, prescription_id, code), 409, "already_claimed")

    prescription = Prescription.objects.get(pk=prescription_id)
    assert (prescription.status, prescription.claimed_by_id) == ("claimed", scene.pharmacy.pk)
    assert count_events(prescription_id, "claim") == 1
    assert audit_count("prescription.claim", prescription_id) == 1


# --- Close twice ----------------------------------------------------------------------------------


def test_a_prescription_is_dispensed_once(scene: RxScene) -> None:
    prescription_id, secret = scene.claimed()
    receipt = _ok(scene.dispense(prescription_id, secret))["receipt"]

    body = assert_problem(
        scene.dispense(prescription_id, secret), 409, "prescription_state_conflict"
    )
    assert body["prescription_status"] == "dispensed"
    assert_problem(doctor_cancel(scene, prescription_id), 409, "prescription_state_conflict")
    assert_problem(
        release(scene.pharmacy_api, prescription_id, secret), 409, "prescription_state_conflict"
    )

    assert status_of(prescription_id) == "dispensed"
    assert count_events(prescription_id, "dispense") == 1
    assert dispense_entries(prescription_id) == 1
    assert dispensed_quantities(prescription_id) == [1]
    assert Prescription.objects.get(pk=prescription_id).receipt == receipt


# --- Wrong secret ---------------------------------------------------------------------------------


def test_a_wrong_secret_can_neither_dispense_nor_release(scene: RxScene) -> None:
    prescription_id, secret = scene.claimed()
    wrong = secret[:-2] + ("AA" if not secret.endswith("AA") else "BB")

    assert_problem(scene.dispense(prescription_id, wrong), 403, "bad_claim_secret")
    assert_problem(release(scene.pharmacy_api, prescription_id, wrong), 403, "bad_claim_secret")

    assert status_of(prescription_id) == "claimed"
    assert actions_of(prescription_id)[-1] == "claim"
    assert dispense_entries(prescription_id) == 0


# --- The dispense matches the prescription, the patient and the claiming pharmacy -----------------


def test_the_dispense_must_match_the_prescribed_lines_and_quantities(scene: RxScene) -> None:
    prescription_id, secret = scene.claimed(scene.active(lines=[line(quantity=2, frequency="bid")]))

    def refused(items: list[dict[str, Any]]) -> dict[str, Any]:
        response = _dispense(scene.pharmacy_api, prescription_id, dispense_body(secret, items))
        return assert_problem(response, 422, "dispense_mismatch")

    not_a_line = refused([{"line": 2, "quantity": 1, "batch_number": "B1"}])
    assert "items.0.line" in not_a_line["errors"]
    too_many = refused([{"line": 1, "quantity": 3, "batch_number": "B1"}])
    assert "line.1" in too_many["errors"]
    split_too_many = refused(
        [
            {"line": 1, "quantity": 2, "batch_number": "B1"},
            {"line": 1, "quantity": 1, "batch_number": "B2"},
        ]
    )
    assert "line.1" in split_too_many["errors"]
    assert status_of(prescription_id) == "claimed"
    assert dispense_entries(prescription_id) == 0
    assert dispensed_quantities(prescription_id) == [0]
    assert count_events(prescription_id, "dispense") == 0

    # Less than prescribed, from two batches, is a valid dispense.
    items = [
        {"line": 1, "quantity": 1, "batch_number": "B1"},
        {"line": 1, "quantity": 1, "batch_number": "B2"},
    ]
    closed = _ok(_dispense(scene.pharmacy_api, prescription_id, dispense_body(secret, items)))
    assert closed["lines"][0]["dispensed_quantity"] == 2
    assert dispensed_quantities(prescription_id) == [2]
    content = json.loads(base64.b64decode(closed["receipt"]["content"]))
    assert content["lines"][0]["batches"] == ["B1", "B2"]


def _other_patients_prescription(scene: RxScene) -> str:
    """An active prescription of another patient of the same doctor."""
    _, profile, api = another_patient()
    requested = request_consultation(api, profile, scene.department)
    consultation_id = _ok(requested, 201)["id"]
    _ok(scene.accept(consultation_id))
    return scene.active(consultation=consultation_id)


def test_the_dispense_must_come_from_the_claimant_with_this_prescriptions_secret(
    scene: RxScene,
) -> None:
    prescription_id, secret = scene.claimed()
    other_id = _other_patients_prescription(scene)
    other_secret = _ok(claim(scene.pharmacy_api, other_id, code_of(other_id)))["claim_secret"]
    assert Prescription.objects.get(pk=other_id).profile_id != scene.profile.pk

    # Another patient's claim secret does not open this prescription.
    assert_problem(scene.dispense(prescription_id, other_secret), 403, "bad_claim_secret")
    # Another pharmacy, even with the right secret, is not the claimant.
    _, rival = pharmacy_staff()
    refused = assert_problem(
        scene.dispense(prescription_id, secret, api=rival), 403, "bad_claim_secret"
    )
    assert refused["detail"] == "This pharmacy does not hold a claim on the prescription."
    assert_problem(release(rival, prescription_id, secret), 403, "bad_claim_secret")

    for pid in (prescription_id, other_id):
        assert status_of(pid) == "claimed"
        assert dispense_entries(pid) == 0
    assert _ok(scene.dispense(prescription_id, secret))["status"] == "dispensed"
    assert status_of(other_id) == "claimed"


# --- 20 claim/release cycles, then the patient cancels --------------------------------------------


def test_twenty_claim_release_cycles_then_the_patient_can_still_cancel(scene: RxScene) -> None:
    prescription_id = scene.active()
    code = code_of(prescription_id)
    secrets_seen = set()
    for _ in range(20):
        secret = _ok(claim(scene.pharmacy_api, prescription_id, code))["claim_secret"]
        secrets_seen.add(secret)
        assert _ok(release(scene.pharmacy_api, prescription_id, secret))["status"] == "active"
    assert len(secrets_seen) == 20

    cancelled = patient_cancel(scene, prescription_id)

    assert cancelled.status_code == 200, cancelled.content
    assert cancelled.json()["status"] == "cancelled"
    assert status_of(prescription_id) == "cancelled"
    assert count_events(prescription_id, "claim") == 20
    assert count_events(prescription_id, "release") == 20
    assert actions_of(prescription_id)[-1] == "cancel"


# --- Reading without a claim ----------------------------------------------------------------------


def test_only_the_claiming_pharmacy_reads_the_prescription(scene: RxScene) -> None:
    prescription_id = scene.active()
    _, rival = pharmacy_staff()

    assert_problem(pharmacy_bundle(scene.pharmacy_api, prescription_id), 403, "not_claimant")
    assert_problem(pharmacy_view(scene.pharmacy_api, prescription_id), 403, "not_claimant")

    _, secret = scene.claimed(prescription_id)
    assert_problem(pharmacy_bundle(rival, prescription_id), 403, "not_claimant")
    assert_problem(pharmacy_view(rival, prescription_id), 403, "not_claimant")
    assert _ok(pharmacy_bundle(scene.pharmacy_api, prescription_id))["prescription_id"] == (
        prescription_id
    )

    _ok(release(scene.pharmacy_api, prescription_id, secret))
    assert_problem(pharmacy_bundle(scene.pharmacy_api, prescription_id), 403, "not_claimant")
    # An id that does not exist answers the same, so ids are not probed.
    assert_problem(pharmacy_bundle(scene.pharmacy_api, str(uuid.uuid4())), 403, "not_claimant")


# --- Wrong access codes: rate-limited and audited -------------------------------------------------


def test_wrong_access_codes_are_rate_limited_per_prescription_and_audited(
    scene: RxScene, clock: time_machine.Traveller
) -> None:
    prescription_id = scene.active()
    code = code_of(prescription_id)
    limit = settings.ACCESS_CODE_MAX_FAILURES_PER_PRESCRIPTION

    for n in range(1, limit + 1):
        wrong = claim(scene.pharmacy_api, prescription_id, f"guess-{n}")
        assert "rate_limited" not in assert_problem(wrong, 403, "bad_access_code")
        assert audit_count("prescription.bad_access_code", prescription_id) == n
    assert access_failures(prescription_id) == limit
    trace = AuditEvent.objects.filter(
        action="prescription.bad_access_code", object_id=prescription_id
    ).latest("seq")
    assert trace.actor_id == str(scene.staff.user.pk)
    assert trace.ip == "127.0.0.1"
    assert trace.after == {"pharmacy": scene.pharmacy.code}

    # Locked: the right code is refused as a wrong one is (CONTRACT 5), and says why.
    locked = claim(scene.pharmacy_api, prescription_id, code)
    body = assert_problem(locked, 403, "bad_access_code")
    assert body["rate_limited"] is True
    assert body["retry_after"] == settings.ACCESS_CODE_WINDOW_SECONDS
    assert locked["Retry-After"] == str(settings.ACCESS_CODE_WINDOW_SECONDS)
    _, rival = pharmacy_staff()
    assert assert_problem(claim(rival, prescription_id, code), 403, "bad_access_code")[
        "rate_limited"
    ]
    assert audit_count("prescription.access_code_rate_limited", prescription_id) == 2
    assert audit_count("prescription.bad_access_code", prescription_id) == limit
    assert status_of(prescription_id) == "active"
    assert count_events(prescription_id, "claim") == 0

    # When the window has passed, the right code works.
    clock.shift(dt.timedelta(seconds=settings.ACCESS_CODE_WINDOW_SECONDS + 1))
    assert _ok(claim(scene.pharmacy_api, prescription_id, code))["claim_secret"]


def test_wrong_access_codes_are_rate_limited_per_pharmacy(scene: RxScene) -> None:
    prescription_id = scene.active()
    for _ in range(settings.ACCESS_CODE_MAX_FAILURES_PER_PHARMACY):
        assert_problem(
            claim(scene.pharmacy_api, str(uuid.uuid4()), "guess"), 403, "bad_access_code"
        )

    # The right code of a prescription never guessed at: this pharmacy is locked out...
    locked = assert_problem(
        claim(scene.pharmacy_api, prescription_id, code_of(prescription_id)),
        403,
        "bad_access_code",
    )
    assert locked["rate_limited"] is True
    assert access_failures(prescription_id) == 0
    # ...another pharmacy is not.
    _, other = pharmacy_staff()
    assert _ok(claim(other, prescription_id, code_of(prescription_id)))["claim_secret"]


# --- Expiry: the claim, the midnight boundary, the periodic job -----------------------------------


def test_claiming_an_expired_prescription_is_410(
    scene: RxScene, clock: time_machine.Traveller
) -> None:
    prescription_id = scene.active()
    code = code_of(prescription_id)
    clock.move_to(shanghai(2026, 11, 24, 8, 0))

    # Not yet marked expired by the periodic job, and already unclaimable.
    assert_problem(claim(scene.pharmacy_api, prescription_id, code), 410, "prescription_expired")
    assert status_of(prescription_id) == "active"
    assert count_events(prescription_id, "claim") == 0

    assert prescriptions_expire_due() == 1
    assert status_of(prescription_id) == "expired"
    assert_problem(claim(scene.pharmacy_api, prescription_id, code), 410, "prescription_expired")
    assert access_failures(prescription_id) == 0


def test_validity_ends_at_midnight_asia_shanghai(department: Any) -> None:
    with time_machine.travel(shanghai(2026, 11, 23, 10, 0), tick=False) as clock:
        scene = RxScene(department)
        before = scene.active(validity_days=1)
        after = scene.active(validity_days=1)
        for pid in (before, after):
            valid_until = Prescription.objects.get(pk=pid).valid_until
            assert valid_until == shanghai(2026, 11, 24)

        clock.move_to(shanghai(2026, 11, 23, 23, 59, 59))
        assert _ok(claim(scene.pharmacy_api, before, code_of(before)))["claim_secret"]

        clock.move_to(shanghai(2026, 11, 24, 0, 0, 0))
        assert_problem(
            claim(scene.pharmacy_api, after, code_of(after)), 410, "prescription_expired"
        )
        assert status_of(before) == "claimed"
        assert status_of(after) == "active"
        assert count_events(after, "claim") == 0


def test_the_periodic_job_expires_what_was_not_claimed_in_time(
    scene: RxScene, clock: time_machine.Traveller
) -> None:
    assert settings.CELERY_BEAT_SCHEDULE["expire-prescriptions"]["task"] == EXPIRE_TASK
    active = scene.active()
    under_review = scene.signed()
    claimed, _ = scene.claimed()
    draft = _ok(scene.draft(), 201)["id"]
    three_days = scene.active(validity_days=3)

    clock.move_to(shanghai(2026, 11, 23, 23, 59, 59))
    assert _run_task(EXPIRE_TASK) == 0

    clock.move_to(shanghai(2026, 11, 24, 0, 0, 0))
    assert _run_task(EXPIRE_TASK) == 2
    assert _run_task(EXPIRE_TASK) == 0  # once

    assert status_of(active) == "expired"
    assert status_of(under_review) == "expired"
    assert status_of(claimed) == "claimed"  # a pharmacy holds it: not "unclaimed"
    assert status_of(draft) == "draft"
    assert status_of(three_days) == "active"
    event = PrescriptionEvent.objects.get(prescription_id=active, action="expire")
    assert (event.from_status, event.actor_id) == ("active", None)
    assert audit_count("prescription.expire", under_review) == 1
    # The pharmacist (signed in again: the console session timed out) can no longer
    # approve what expired in the queue.
    scene.pharmacist_session = console_session(scene.pharmacist.user)
    assert_problem(scene.approve(under_review), 410, "prescription_expired")
    assert count_events(under_review, "approve") == 0


def test_an_idle_claim_is_released(scene: RxScene, clock: time_machine.Traveller) -> None:
    assert settings.CELERY_BEAT_SCHEDULE["release-idle-claims"]["task"] == RELEASE_TASK
    idle = dt.timedelta(minutes=settings.PRESCRIPTION_CLAIM_IDLE_MINUTES)
    prescription_id, old = scene.claimed()

    clock.shift(idle - dt.timedelta(minutes=1))
    assert _run_task(RELEASE_TASK) == 0
    _ok(pharmacy_view(scene.pharmacy_api, prescription_id))  # activity keeps the claim

    clock.shift(dt.timedelta(minutes=2))  # idle since the claim, not since the last read
    assert claims_release_idle() == 0
    assert status_of(prescription_id) == "claimed"

    clock.shift(idle)
    assert _run_task(RELEASE_TASK) == 1
    prescription = Prescription.objects.get(pk=prescription_id)
    assert (prescription.status, prescription.claimed_by_id) == ("active", None)
    event = PrescriptionEvent.objects.filter(prescription_id=prescription_id).latest("id")
    assert (event.action, event.actor_id, event.reason) == (
        "release",
        None,
        "claim idle for too long",
    )

    assert_problem(scene.dispense(prescription_id, old), 403, "bad_claim_secret")
    new = _ok(claim(scene.pharmacy_api, prescription_id, code_of(prescription_id)))["claim_secret"]
    assert new != old
    assert_problem(scene.dispense(prescription_id, old), 403, "bad_claim_secret")


def test_an_idle_claim_with_a_pending_cancel_ends_cancelled(
    scene: RxScene, clock: time_machine.Traveller
) -> None:
    prescription_id, _ = scene.claimed()
    assert patient_cancel(scene, prescription_id).status_code == 202
    clock.shift(dt.timedelta(minutes=settings.PRESCRIPTION_CLAIM_IDLE_MINUTES, seconds=1))
    assert claims_release_idle() == 1
    assert status_of(prescription_id) == "cancelled"
    assert actions_of(prescription_id)[-3:] == ["cancel_requested", "release", "cancel"]


# --- A claim past the prescription's validity (DOMAIN rule 9) -------------------------------------


def test_a_claim_made_before_midnight_is_dispensed_just_after(
    scene: RxScene, clock: time_machine.Traveller
) -> None:
    prescription_id = scene.active()
    clock.move_to(shanghai(2026, 11, 23, 23, 59, 0))
    _, secret = scene.claimed(prescription_id)

    clock.move_to(shanghai(2026, 11, 24, 0, 5, 0))
    assert _run_task(EXPIRE_TASK) == 0  # a pharmacy holds it
    assert _run_task(RELEASE_TASK) == 0
    assert _ok(scene.dispense(prescription_id, secret))["status"] == "dispensed"
    assert dispense_entries(prescription_id) == 1


def test_past_its_validity_a_claim_is_not_kept_alive_by_the_pharmacy_reading_it(
    scene: RxScene, clock: time_machine.Traveller
) -> None:
    idle = dt.timedelta(minutes=settings.PRESCRIPTION_CLAIM_IDLE_MINUTES)
    prescription_id = scene.active()
    code = code_of(prescription_id)
    clock.move_to(shanghai(2026, 11, 23, 23, 0))
    _, secret = scene.claimed(prescription_id)
    clock.move_to(shanghai(2026, 11, 23, 23, 30))
    _ok(pharmacy_view(scene.pharmacy_api, prescription_id))  # valid still: activity counts
    last_activity = shanghai(2026, 11, 23, 23, 30)

    # After midnight the reads, and claiming again, are answered but keep nothing alive.
    clock.move_to(shanghai(2026, 11, 24, 0, 30))
    _ok(pharmacy_view(scene.pharmacy_api, prescription_id))
    _ok(pharmacy_bundle(scene.pharmacy_api, prescription_id))
    assert _ok(claim(scene.pharmacy_api, prescription_id, code))["claim_secret"] == secret
    clock.move_to(last_activity + idle - dt.timedelta(seconds=1))
    _ok(pharmacy_view(scene.pharmacy_api, prescription_id))
    assert _run_task(RELEASE_TASK) == 0
    assert status_of(prescription_id) == "claimed"

    # Idle for the configured time since the last activity inside the validity: the claim
    # has lapsed, the dispense is refused, and the prescription expires (not active again).
    clock.move_to(last_activity + idle)
    refused = assert_problem(scene.dispense(prescription_id, secret), 410, "prescription_expired")
    assert "claim lapsed" in refused["detail"]
    assert status_of(prescription_id) == "expired"
    assert dispense_entries(prescription_id) == 0
    assert actions_of(prescription_id)[-3:] == ["claim", "release", "expire"]
    release_event = PrescriptionEvent.objects.get(prescription_id=prescription_id, action="release")
    assert (release_event.actor_id, release_event.reason, release_event.pharmacy_id) == (
        None,
        "claim idle for too long",
        scene.pharmacy.pk,
    )
    assert audit_count("prescription.expire", prescription_id) == 1
    # The patient's app says so; the code is no use to any pharmacy.
    detail = _ok(scene.patient_api.get(f"{MOBILE}/prescriptions/{prescription_id}"))
    assert (detail["status"], detail["access_code"], detail["qr"]) == ("expired", None, None)
    _, rival = pharmacy_staff()
    assert_problem(claim(rival, prescription_id, code), 410, "prescription_expired")


def test_claiming_again_a_lapsed_claim_ends_it_expired(
    scene: RxScene, clock: time_machine.Traveller
) -> None:
    prescription_id, _ = scene.claimed()  # at 09:00; the validity ends at midnight
    clock.move_to(shanghai(2026, 11, 24, 0, 1))
    refused = claim(scene.pharmacy_api, prescription_id, code_of(prescription_id))
    assert_problem(refused, 410, "prescription_expired")
    assert status_of(prescription_id) == "expired"
    assert actions_of(prescription_id)[-2:] == ["release", "expire"]


def test_the_idle_job_ends_a_lapsed_claim_with_the_prescription_expired(
    scene: RxScene, clock: time_machine.Traveller
) -> None:
    lapsed, _ = scene.claimed()
    held = scene.active()
    clock.move_to(shanghai(2026, 11, 23, 23, 0))
    scene.claimed(held)  # touched at 23:00: idle until 01:00

    clock.move_to(shanghai(2026, 11, 24, 0, 30))
    assert _run_task(RELEASE_TASK) == 1
    assert status_of(lapsed) == "expired"
    assert actions_of(lapsed)[-2:] == ["release", "expire"]
    assert status_of(held) == "claimed"

    clock.move_to(shanghai(2026, 11, 24, 1, 0))
    assert _run_task(RELEASE_TASK) == 1
    assert status_of(held) == "expired"


def test_a_claim_given_back_after_midnight_leaves_the_prescription_expired(
    scene: RxScene, clock: time_machine.Traveller
) -> None:
    prescription_id = scene.active()
    clock.move_to(shanghai(2026, 11, 23, 23, 59))
    _, secret = scene.claimed(prescription_id)

    clock.move_to(shanghai(2026, 11, 24, 0, 10))
    assert _ok(release(scene.pharmacy_api, prescription_id, secret, "缺货"))["status"] == "expired"
    assert actions_of(prescription_id)[-2:] == ["release", "expire"]
    _, rival = pharmacy_staff()
    assert_problem(
        claim(rival, prescription_id, code_of(prescription_id)), 410, "prescription_expired"
    )


def test_the_patient_is_not_shown_the_code_once_validity_ended_before_the_job_runs(
    scene: RxScene, clock: time_machine.Traveller
) -> None:
    prescription_id = scene.active()
    url = f"{MOBILE}/prescriptions/{prescription_id}"
    clock.move_to(shanghai(2026, 11, 23, 23, 59, 59))
    assert _ok(scene.patient_api.get(url))["access_code"] == code_of(prescription_id)
    assert scene.patient_api.get(f"{url}/qr.svg").status_code == 200

    clock.move_to(shanghai(2026, 11, 24, 0, 0, 0))
    assert status_of(prescription_id) == "active"  # the periodic job has not run yet
    detail = _ok(scene.patient_api.get(url))
    assert (detail["access_code"], detail["qr"]) == (None, None)
    assert_problem(scene.patient_api.get(f"{url}/qr.png"), 410, "prescription_expired")
    assert_problem(scene.patient_api.get(f"{url}/qr.svg"), 410, "prescription_expired")


# --- Idempotency-Key: a lost response retried -----------------------------------------------------


def test_a_claim_retried_with_the_same_key_replays_the_stored_answer(scene: RxScene) -> None:
    prescription_id = scene.active()
    code = code_of(prescription_id)
    key = {"HTTP_IDEMPOTENCY_KEY": str(uuid.uuid4())}

    first = claim(scene.pharmacy_api, prescription_id, code, **key)
    retry = claim(scene.pharmacy_api, prescription_id, code, **key)

    assert first.status_code == retry.status_code == 200
    assert retry.json() == first.json()
    assert retry["Idempotent-Replayed"] == "true"
    assert not first.has_header("Idempotent-Replayed")
    assert count_events(prescription_id, "claim") == 1
    assert audit_count("prescription.claim", prescription_id) == 1

    other_body = claim(scene.pharmacy_api, prescription_id, "another-code", **key)
    assert_problem(other_body, 422, "idempotency_key_reused")
    assert access_failures(prescription_id) == 0  # refused before any code was tried
    assert count_events(prescription_id, "claim") == 1


def test_a_replayable_claim_does_not_keep_the_claim_secret_in_plain_text(scene: RxScene) -> None:
    prescription_id = scene.active()
    key = str(uuid.uuid4())
    secret = _ok(
        claim(
            scene.pharmacy_api, prescription_id, code_of(prescription_id), HTTP_IDEMPOTENCY_KEY=key
        )
    )["claim_secret"]
    # Prescription.claim_secret is an encrypted field; the secret must not sit readable in
    # another table (docs/idempotency.md: no credential is stored in the idempotency table).
    table = connection.ops.quote_name(IdempotencyRecord._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT response_body FROM {table} WHERE key = %s", [key])  # noqa: S608
        rows = cursor.fetchall()
    assert rows
    assert all(secret not in str(row[0]) for row in rows)


def test_a_dispense_retried_with_the_same_key_happens_once(scene: RxScene) -> None:
    prescription_id, secret = scene.claimed()
    key = {"HTTP_IDEMPOTENCY_KEY": f"dispense-{uuid.uuid4()}"}
    body = dispense_body(secret)

    first = _dispense(scene.pharmacy_api, prescription_id, body, **key)
    retry = _dispense(scene.pharmacy_api, prescription_id, body, **key)

    assert first.status_code == retry.status_code == 200, retry.content
    assert retry.json() == first.json()
    assert retry["Idempotent-Replayed"] == "true"
    assert count_events(prescription_id, "dispense") == 1
    assert dispense_entries(prescription_id) == 1
    assert dispensed_quantities(prescription_id) == [1]
    assert IdempotencyRecord.objects.filter(key=key["HTTP_IDEMPOTENCY_KEY"]).count() == 1

    changed = dispense_body(secret, [{"line": 1, "quantity": 1, "batch_number": "OTHER"}])
    reused = _dispense(scene.pharmacy_api, prescription_id, changed, **key)
    assert_problem(reused, 422, "idempotency_key_reused")
    assert count_events(prescription_id, "dispense") == 1
    assert DispenseEntry.objects.get(line__prescription_id=prescription_id).batch_number == (
        "B2026-1102"
    )


# --- Signatures: non-doctor certificate, signing day, activated twice, flipped bytes --------------


def test_a_prescription_signed_with_a_non_doctor_certificate_is_refused(scene: RxScene) -> None:
    prescription_id = scene.signed()
    forge_version(prescription_id, signer=current_certificate(scene.pharmacist))

    body = assert_problem(scene.approve(prescription_id), 422, "bundle_invalid")

    assert body["verification_code"] == "wrong_role"
    assert status_of(prescription_id) == "under_review"
    assert count_events(prescription_id, "approve") == 0
    version = PrescriptionVersion.objects.get(prescription_id=prescription_id)
    assert version.pharmacist_signature is None
    detail = _ok(scene.doctor_session.get(f"{CONSOLE}/prescriptions/{prescription_id}"))
    assert (detail["verification"]["valid"], detail["verification"]["code"]) == (
        False,
        "wrong_role",
    )
    bundle = _ok(scene.doctor_session.get(f"{CONSOLE}/prescriptions/{prescription_id}/bundle"))
    with pytest.raises(VerificationError) as refused:
        verify_bundle(bundle, require_review=False)
    assert refused.value.code == "wrong_role"


def test_a_signature_made_on_another_day_than_the_issue_day_is_refused(scene: RxScene) -> None:
    prescription_id = scene.signed()
    content = json.loads(
        bytes(PrescriptionVersion.objects.get(prescription_id=prescription_id).signed_bytes)
    )
    issued = dt.datetime.fromisoformat(content["issued_at"])
    # Signed today with the doctor's own key, but dated tomorrow.
    forge_version(
        prescription_id,
        signer=current_certificate(scene.doctor),
        content_change={"issued_at": (issued + dt.timedelta(days=1)).isoformat()},
    )

    body = assert_problem(scene.approve(prescription_id), 422, "bundle_invalid")

    assert body["verification_code"] == "signing_day_mismatch"
    assert status_of(prescription_id) == "under_review"
    assert count_events(prescription_id, "approve") == 0


def test_the_same_prescription_cannot_be_activated_twice(scene: RxScene) -> None:
    prescription_id = scene.active()
    version = PrescriptionVersion.objects.get(prescription_id=prescription_id)
    assert_problem(scene.sign(prescription_id), 409, "prescription_state_conflict")
    assert PrescriptionVersion.objects.filter(prescription_id=prescription_id).count() == 1

    body = assert_problem(scene.approve(prescription_id), 409, "prescription_state_conflict")

    assert body["prescription_status"] == "active"
    assert count_events(prescription_id, "approve") == 1
    again = PrescriptionVersion.objects.get(prescription_id=prescription_id)
    assert bytes(again.pharmacist_signature or b"") == bytes(version.pharmacist_signature or b"")
    assert again.reviewed_at == version.reviewed_at


def test_a_signed_bundle_cannot_activate_another_prescription(scene: RxScene) -> None:
    genuine = scene.signed()
    other = scene.signed()
    source = PrescriptionVersion.objects.get(prescription_id=genuine)
    PrescriptionVersion.objects.filter(prescription_id=other).update(
        signed_bytes=bytes(source.signed_bytes),
        doctor_signature=bytes(source.doctor_signature),
        signed_at=source.signed_at,
    )

    body = assert_problem(scene.approve(other), 422, "bundle_invalid")

    assert body["verification_code"] == "content_mismatch"
    assert status_of(other) == "under_review"
    assert count_events(other, "approve") == 0
    assert _ok(scene.approve(genuine))["status"] == "active"


def test_flipped_bytes_of_the_signed_content_are_refused(scene: RxScene) -> None:
    # Before the review: the pharmacist's approval verifies first.
    under_review = scene.signed()
    flip_signed_bytes(under_review, b'"quantity":1', b'"quantity":9')
    body = assert_problem(scene.approve(under_review), 422, "bundle_invalid")
    assert body["verification_code"] == "signature_invalid"
    assert status_of(under_review) == "under_review"

    # After the review: the pharmacy's claim verifies again.
    active = scene.active()
    flip_signed_bytes(active, b'"quantity":1', b'"quantity":9')
    body = assert_problem(claim(scene.pharmacy_api, active, code_of(active)), 422, "bundle_invalid")
    assert body["verification_code"] == "signature_invalid"
    assert status_of(active) == "active"
    assert count_events(active, "claim") == 0

    # And offline, one flipped bit of a genuine bundle is enough.
    genuine = scene.active()
    _, _secret = scene.claimed(genuine)
    bundle = _ok(pharmacy_bundle(scene.pharmacy_api, genuine))
    verify_bundle(bundle)
    raw = bytearray(base64.b64decode(bundle["signed_content"]))
    raw[len(raw) // 2] ^= 0x01
    with pytest.raises(VerificationError):
        verify_bundle({**bundle, "signed_content": base64.b64encode(bytes(raw)).decode()})


# --- The claim race -------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_fifty_pharmacies_claiming_at_once_exactly_one_wins(department: Any) -> None:
    require_postgres("the claim race (50 threads, each with its own connection)")
    scene = RxScene(department)
    prescription_id = scene.active()
    code = code_of(prescription_id)
    clients = [scene.pharmacy_api] + [pharmacy_staff()[1] for _ in range(49)]
    barrier = threading.Barrier(len(clients))
    answers: list[tuple[int, dict[str, Any]] | None] = [None] * len(clients)

    def run(index: int) -> None:
        try:
            barrier.wait(timeout=30)
            response = claim(clients[index], prescription_id, code)
            answers[index] = (response.status_code, response.json())
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(clients))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert all(a is not None for a in answers), answers
    statuses = sorted(a[0] for a in answers if a is not None)
    assert statuses == [200] + [409] * 49, statuses
    losers = [a[1] for a in answers if a is not None and a[0] == 409]
    assert {body["code"] for body in losers} == {"already_claimed"}
    winner = next(i for i, a in enumerate(answers) if a is not None and a[0] == 200)
    winner_body = answers[winner]
    assert winner_body is not None
    prescription = Prescription.objects.get(pk=prescription_id)
    assert prescription.status == "claimed"
    assert prescription.claim_secret == winner_body[1]["claim_secret"]
    assert prescription.claimed_by is not None
    assert prescription.claimed_by.code == winner_body[1]["prescription"]["claimed_by"]
    assert count_events(prescription_id, "claim") == 1
    assert audit_count("prescription.claim", prescription_id) == 1
    assert AccessCodeFailure.objects.count() == 0
    assert audit_chain_verify().ok
