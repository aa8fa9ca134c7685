"""The prescription editor and the pharmacist's review in a real browser (issue 3):
Debian's Chromium, driven by Playwright, against a real Daphne process on the test
database.

A doctor with a consultation in progress opens the prescription editor from the room,
finds a drug in the catalogue, writes a line and sees the rule checks follow what they
type (a supply over 7 days blocks until a chronic-disease reason is given); a specially
controlled drug is refused with the rule's name; what was typed survives a reload; a
wrong authenticator code is refused next to the sign button and the right one signs.
A pharmacist, on another browser, sees the prescription arrive in the review queue
without a reload, opens it, sees the doctor's signature verified and the rule checks,
and approves it with their own authenticator code: the prescription is active.

Screenshots go to ``$CONSOLE_SCREENSHOTS`` (CI: artifacts/screenshots), else to
``screenshots/`` under pytest's temporary folder, listed in ``INDEX.md``.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import pytest
from django.db import connections
from playwright.sync_api import Browser, Page, ViewportSize, expect

from backend.organisations.models import Practitioner
from prescriptions.models import ControlledDrugAttempt, Prescription, PrescriptionStatus
from prescriptions.rules import RULE_NAMES
from tests.console_browser_fixtures import accessible, watch
from tests.console_browser_helpers import (
    Screenshots,
    otp,
    signed_in_context,
    tab_to,
    with_server_password,
)
from tests.factories import DepartmentFactory
from tests.rx_helpers import RxScene, line

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("orm_beside_playwright"),
]

T = TypeVar("T")

expect.set_options(timeout=15_000)
VIEWPORT: ViewportSize = {"width": 1440, "height": 1100}


def _off_loop(work: Callable[[], T]) -> T:
    """Run set-up that pushes to the channel layer (``async_to_sync``) in a thread of its
    own: this one runs Playwright's event loop. Its database connection is closed after."""

    def run() -> T:
        try:
            return work()
        finally:
            connections.close_all()

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(run).result()


def _check(page: Page, rule: str) -> Any:
    return page.locator(f'#rx-checks li[data-rule="{rule}"]')


def test_a_doctor_writes_and_signs_a_prescription_and_a_pharmacist_approves_it_live(
    server: str, browser: Browser, shots: Screenshots
) -> None:
    scene = _off_loop(lambda: RxScene(DepartmentFactory()))
    doctor = with_server_password(scene.doctor.user)
    pharmacist = with_server_password(scene.pharmacist.user)
    Practitioner.objects.filter(pk=scene.pharmacist.pk).update(on_duty=True)
    consultation = scene.consultation_id

    # The pharmacist's queue is open (and empty) before anything is signed.
    review_context = signed_in_context(browser, server, pharmacist, viewport=VIEWPORT)
    queue = review_context.new_page()
    queue_errors = watch(queue)
    queue.goto(f"{server}/console/pharmacist/")
    expect(queue.locator("#duty-switch")).to_have_attribute("aria-checked", "true")
    expect(queue.locator("#connection")).to_have_attribute("data-state", "open")
    expect(queue.locator("#reviews-empty")).to_be_visible()
    accessible(queue)

    context = signed_in_context(browser, server, doctor, viewport=VIEWPORT)
    page = context.new_page()
    errors = watch(page)

    # From the room to the editor, with the keyboard.
    page.goto(f"{server}/console/doctor/consultations/{consultation}/")
    expect(page.locator("#rx-link")).to_be_visible()
    tab_to(page, "#rx-link")
    page.keyboard.press("Enter")
    expect(page).to_have_url(f"{server}/console/doctor/consultations/{consultation}/prescription/")
    expect(page.locator("#rx-patient")).to_contain_text(scene.profile.real_name)
    expect(page.locator("#drug-search")).to_be_focused()
    accessible(page)

    # Find a drug by name and add it with the keyboard; the focus goes to its dose.
    page.keyboard.type("氨氯地平")
    expect(page.locator('#drug-results button[data-code="DEMO-0001"]')).to_be_visible()
    page.keyboard.press("Enter")  # to the first result
    page.keyboard.press("Enter")  # add it
    expect(page.locator("#line-0-dose")).to_be_focused()
    page.keyboard.type("5")
    page.keyboard.press("Tab")
    page.keyboard.type("mg")
    page.keyboard.press("Tab")
    page.keyboard.type("qd")
    expect(page.locator("#line-0-route")).to_have_value("口服")  # from the catalogue

    # The draft is saved as the doctor types, and its rule checks are shown by name.
    expect(page.locator("#rx-status")).to_have_attribute("data-status", "draft")
    for rule, name in RULE_NAMES.items():
        expect(_check(page, rule)).to_contain_text(name)
    expect(_check(page, "controlled_drug_forbidden")).to_have_attribute("data-outcome", "pass")

    # 14 days' supply needs a chronic-disease reason: blocked, then passed.
    page.locator("#line-0-days").fill("14")
    expect(_check(page, "supply_too_long")).to_have_attribute("data-outcome", "error")
    expect(page.locator("#rx-save-error")).to_have_attribute("data-code", "supply_too_long")
    expect(page.locator("#rx-save-error")).to_contain_text(RULE_NAMES["supply_too_long"])
    page.locator("#rx-chronic").fill("原发性高血压，长期规律服药")
    expect(_check(page, "supply_too_long")).to_have_attribute("data-outcome", "pass")
    expect(page.locator("#rx-save-error")).to_be_hidden()
    expect(page.locator("#rx-saved")).to_contain_text("草稿已保存")
    accessible(page)
    shots.take(
        page,
        "20-rx-editor-checks",
        "the prescription editor: a line of amlodipine, 14 days with a chronic-disease "
        "reason, every rule check passing by name",
    )

    # What was typed survives a reload (sessionStorage), and so does the draft.
    page.reload()
    expect(page.locator("#line-0-dose")).to_have_value("5")
    expect(page.locator("#line-0-days")).to_have_value("14")
    expect(page.locator("#rx-chronic")).to_have_value("原发性高血压，长期规律服药")
    expect(page.locator("#rx-status")).to_have_attribute("data-status", "draft")

    # A specially controlled drug is refused with the rule's name, and the refusal kept.
    page.locator("#drug-search").fill("吗啡")
    page.locator('#drug-results button[data-code="DEMO-C001"]').click()
    expect(page.locator("#line-1-dose")).to_be_focused()
    page.keyboard.type("10")
    page.keyboard.press("Tab")
    page.keyboard.type("mg")
    page.keyboard.press("Tab")
    page.keyboard.type("qd")
    refusal = page.locator("#rx-save-error")
    expect(refusal).to_have_attribute("data-code", "controlled_drug_forbidden")
    expect(refusal).to_contain_text(RULE_NAMES["controlled_drug_forbidden"])
    expect(refusal).to_contain_text("特殊管理药品不得在线开具")
    controlled = page.locator(
        '#rx-checks li[data-rule="controlled_drug_forbidden"][data-outcome="error"]'
    )
    expect(controlled).to_have_class("rx-check refused")
    expect(controlled).to_contain_text("盐酸吗啡片")
    accessible(page)
    shots.take(
        page,
        "21-rx-editor-controlled-refused",
        "the prescription editor refusing a specially controlled drug (morphine), with "
        "the rule's name next to the action and in the checks",
    )
    assert ControlledDrugAttempt.objects.filter(consultation_id=consultation).count() == 1
    page.get_by_role("button", name="删除第 2 行").click()
    expect(_check(page, "controlled_drug_forbidden")).to_have_attribute("data-outcome", "pass")
    expect(refusal).to_be_hidden()

    # Signing needs the doctor's own authenticator code: a wrong one is refused by it.
    sign_error = page.locator("#rx-sign-error")
    page.locator("#rx-otp").fill(otp(doctor, steps_ahead=10))
    page.locator("#rx-otp").press("Enter")
    expect(sign_error).to_have_attribute("data-code", "totp_invalid")
    expect(page.locator("#rx-otp")).to_be_focused()
    page.keyboard.type(otp(doctor))
    page.keyboard.press("Enter")
    expect(page.locator("#rx-status")).to_have_attribute("data-status", "under_review")
    expect(page.locator("#rx-signed")).to_contain_text("待药师审核")
    expect(sign_error).to_be_hidden()
    prescription = Prescription.objects.get(consultation_id=consultation)
    assert prescription.status == PrescriptionStatus.UNDER_REVIEW
    assert [line.drug_code for line in prescription.lines.all()] == ["DEMO-0001"]

    # The pharmacist's queue shows it without a reload.
    item = queue.locator(f'#reviews li[data-prescription="{prescription.pk}"]')
    expect(item).to_be_visible()
    expect(item).to_contain_text(scene.profile.real_name)
    expect(item).to_contain_text("苯磺酸氨氯地平片")
    expect(queue.locator("#reviews-empty")).to_be_hidden()
    accessible(queue)
    shots.take(
        queue,
        "22-pharmacist-queue",
        "the pharmacist's review queue, on duty, with the signed prescription arrived live",
    )

    # The review page: lines, rule checks and the doctor's signature verified.
    tab_to(queue, f'#reviews li[data-prescription="{prescription.pk}"] a')
    queue.keyboard.press("Enter")
    expect(queue).to_have_url(f"{server}/console/pharmacist/prescriptions/{prescription.pk}/")
    verification = queue.locator("#rx-verification")
    expect(verification).to_have_attribute("data-valid", "true")
    expect(verification).to_have_text("签名验证通过")
    expect(queue.locator('#rx-signers li[data-role="doctor"]')).to_contain_text(doctor.display_name)
    expect(queue.locator("#rx-lines tr")).to_have_count(1)
    expect(queue.locator("#rx-lines")).to_contain_text("DEMO-0001")
    expect(queue.locator("#rx-chronic")).to_have_text("原发性高血压，长期规律服药")
    expect(_check(queue, "supply_too_long")).to_contain_text(RULE_NAMES["supply_too_long"])
    accessible(queue)
    shots.take(
        queue,
        "23-pharmacist-review",
        "the pharmacist's review page: lines, rule checks, the doctor's signature verified, "
        "approve with the authenticator code or reject with a reason",
    )

    # Approve: the pharmacist's countersignature with their own authenticator code.
    tab_to(queue, "#rx-otp")
    queue.keyboard.type(otp(pharmacist))
    queue.keyboard.press("Enter")
    expect(queue.locator("#rx-status")).to_have_attribute("data-status", "active")
    expect(queue.locator("#rx-done")).to_contain_text("已生效")
    expect(queue.locator('#rx-signers li[data-role="pharmacist"]')).to_be_visible()
    expect(queue.locator("#rx-approve-form")).to_be_hidden()
    accessible(queue)
    shots.take(
        queue,
        "24-pharmacist-approved",
        "the review page after approval: active, signed by the doctor and the pharmacist",
    )
    prescription.refresh_from_db()
    assert prescription.status == PrescriptionStatus.ACTIVE

    # The doctor's editor shows where the prescription went.
    page.reload()
    expect(page.locator("#rx-status")).to_have_attribute("data-status", "active")
    expect(page.locator("#rx-sign")).to_be_disabled()

    assert errors == []
    assert queue_errors == []
    context.close()
    review_context.close()


def test_a_pharmacist_rejects_with_a_reason_and_the_doctor_revises_it_in_english(
    server: str, browser: Browser, shots: Screenshots
) -> None:
    scene = _off_loop(lambda: RxScene(DepartmentFactory()))
    prescription_id = _off_loop(
        lambda: scene.signed(lines=[line(days=3, quantity=2, dose="10", frequency="bid")])
    )
    doctor = with_server_password(scene.doctor.user)
    pharmacist = with_server_password(scene.pharmacist.user)
    consultation = scene.consultation_id

    # The doctor's editor finds the signed prescription of the consultation.
    context = signed_in_context(browser, server, doctor, viewport=VIEWPORT)
    page = context.new_page()
    errors = watch(page)
    page.goto(f"{server}/console/doctor/consultations/{consultation}/prescription/?lang=en")
    expect(page.locator("#rx-status")).to_have_text("Under pharmacist review")
    expect(page.locator("#line-0-days")).to_have_value("3")
    expect(page.locator("#line-0-days")).to_be_disabled()
    expect(page.locator("#connection")).to_have_attribute("data-state", "open")
    accessible(page)

    review_context = signed_in_context(browser, server, pharmacist, viewport=VIEWPORT)
    review = review_context.new_page()
    review_errors = watch(review)
    review.goto(f"{server}/console/pharmacist/prescriptions/{prescription_id}/?lang=en")
    expect(review.locator("#rx-verification")).to_have_text("Signature verified")
    expect(review.locator("#rx-lines")).to_contain_text("2 盒")
    accessible(review)

    # A reason is required; then the rejection goes back to the doctor.
    tab_to(review, "#rx-reject")
    review.keyboard.press("Enter")
    expect(review.locator("#rx-reject-error")).to_be_visible()
    expect(review.locator("#rx-reject-reason")).to_be_focused()
    review.keyboard.type("Two boxes for three days: please check the quantity.")
    tab_to(review, "#rx-reject")
    review.keyboard.press("Enter")
    expect(review.locator("#rx-status")).to_have_attribute("data-status", "review_rejected")
    expect(review.locator("#rx-done")).to_contain_text("Rejected by review")
    expect(review.locator("#rx-reject-form")).to_be_hidden()
    accessible(review)
    shots.take(
        review,
        "25-pharmacist-rejected-en",
        "the review page in English after a rejection with a reason",
    )

    # The doctor's editor shows the rejection live, with the reason, and revises it.
    expect(page.locator("#rx-status")).to_have_attribute("data-status", "review_rejected")
    expect(page.locator("#rx-signed")).to_contain_text("please check the quantity")
    accessible(page)
    shots.take(
        page,
        "26-rx-editor-rejected-en",
        "the prescription editor in English: rejected by the pharmacist (live), with the "
        "reason and the revise button",
    )
    tab_to(page, "#rx-revise")
    page.keyboard.press("Enter")
    expect(page.locator("#rx-status")).to_have_attribute("data-status", "draft")
    expect(page.locator("#line-0-dose")).to_be_focused()
    expect(page.locator("#line-0-quantity")).to_have_value("2")
    page.locator("#line-0-quantity").fill("1")
    expect(page.locator("#rx-saved")).to_contain_text("Draft saved")
    prescription = Prescription.objects.get(pk=prescription_id)
    assert (prescription.status, prescription.version) == (PrescriptionStatus.DRAFT, 2)
    assert [ln.quantity for ln in prescription.lines.all()] == [1]

    assert errors == []
    assert review_errors == []
    context.close()
    review_context.close()
