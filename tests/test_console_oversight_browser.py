"""The regulator's and the hospital administrator's console pages in a real browser
(issue 3): Debian's Chromium, driven by Playwright, against a real Daphne process on the
test database, with the outbox delivered for real to the bundled provincial platform.

A regulator official signs in with the keyboard and opens the dashboard: the feed shows
what the platform already received, the indicators show known values; while the page
is open a consultation expires unanswered in a hospital of the province (records and an
alert delivered and acknowledged), and the page shows them live, without a reload. A
hospital administrator sees the practitioners with their filing and certificates,
replays a dead letter the platform refused, and runs the audit chain check.

Screenshots go to ``$CONSOLE_SCREENSHOTS`` (CI: artifacts/screenshots), else to
``screenshots/`` under pytest's temporary folder, listed in ``INDEX.md``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import pytest
from django.db import connections
from django.utils import timezone
from playwright.sync_api import Browser, Page, ViewportSize, expect

from backend.audit.models import AuditEvent
from backend.identity.models import Role, User
from backend.organisations.models import HospitalAdministrator, RegulatorOfficial
from consultations.services import consultations_expire_due
from payments.models import Reconciliation
from regulators.models import Alert, AlertKind, OutboxRecord, RecordStatus
from tests.console_browser_fixtures import accessible, watch
from tests.console_browser_helpers import (
    Screenshots,
    signed_in_context,
    tab_to,
    with_server_password,
)
from tests.consult_http_helpers import CONSOLE, Scene, end_body
from tests.factories import PASSWORD, DepartmentFactory, HospitalFactory, UserFactory
from tests.regulator_helpers import Platform, drain, platform
from tests.rx_helpers import RxScene

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("icd10", "orm_beside_playwright"),
]

T = TypeVar("T")

expect.set_options(timeout=15_000)
VIEWPORT: ViewportSize = {"width": 1440, "height": 1000}


@pytest.fixture(scope="module")
def peer(server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    with platform(tmp_path_factory.mktemp("peer")) as running:
        yield running


@pytest.fixture
def department(peer: Platform, settings: Any) -> Any:
    """A department whose province's platform is the bundled peer (retries due at once)."""
    settings.REGULATOR_RETRY_BASE_SECONDS = 0
    peer.reset()
    department = DepartmentFactory()
    peer.connect(department.hospital.province)
    return department


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


def _story(scene: RxScene) -> None:
    """Request, accept, a prescription signed, approved, claimed and dispensed, end."""
    prescription_id, secret = scene.claimed()
    assert scene.dispense(prescription_id, secret).status_code == 200
    ended = scene.doctor_api.post(
        f"{CONSOLE}/consultations/{scene.consultation_id}/end", end_body(), format="json"
    )
    assert ended.status_code == 200, ended.content


def _cell(page: Page, chart: str, series: str, row: int = 0) -> Any:
    return page.locator(f"#{chart} tbody tr").nth(row).locator(f'td[data-series="{series}"]')


def _received(province: Any) -> int:
    return OutboxRecord.objects.filter(province=province, feed_seq__isnull=False).count()


# --- the regulator -------------------------------------------------------------------------------


def test_a_regulator_sees_the_feed_indicators_and_an_alert_arrive_live(
    server: str, browser: Browser, shots: Screenshots, department: Any
) -> None:
    hospital = department.hospital
    province = hospital.province
    quiet = HospitalFactory(province=province, name="宁波市第二互联网医院")
    _off_loop(lambda: _story(RxScene(department)))
    _off_loop(drain)
    received = _received(province)
    # The institution filing, 3 consultation records, issued, review, claim, dispense.
    assert received == 8

    official: User = with_server_password(UserFactory(role=Role.REGULATOR))
    RegulatorOfficial.objects.create(user=official, province=province)
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    errors = watch(page)

    # Sign in with the keyboard: regulators have no second factor (SECOND_FACTOR_ROLES).
    page.goto(f"{server}/console/regulator/")
    expect(page).to_have_url(f"{server}/console/login/?next=%2Fconsole%2Fregulator%2F")
    tab_to(page, "#username")
    page.keyboard.type(official.username)
    page.keyboard.press("Tab")
    page.keyboard.type(PASSWORD)
    page.keyboard.press("Enter")
    expect(page).to_have_url(f"{server}/console/regulator/")
    expect(page.locator("h1")).to_have_text("监管人员工作台")
    expect(page.locator("#connection")).to_have_attribute("data-state", "open")

    # What the platform already received, newest first, with hospital and upload delay.
    feed = page.locator("#feed > li")
    expect(feed).to_have_count(received)
    expect(feed.first).to_have_attribute("data-seq", str(received))
    expect(feed.last).to_have_attribute("data-type", "filing.institution")
    expect(feed.first.locator(".ov-feed-hospital")).to_have_text(hospital.name)
    expect(feed.first.locator(".ov-feed-delay")).to_contain_text("上报延迟")
    expect(page.locator("#feed-count")).to_have_text(f"共 {received} 条")
    expect(page.locator("#alerts-empty")).to_be_visible()

    # The indicators of the data above: one consultation answered, none expired; one
    # prescription issued, reviewed (passed) and dispensed.
    consultations = "chart-consultations"
    expect(_cell(page, consultations, "requested")).to_have_text("1")
    expect(_cell(page, consultations, "answered")).to_have_text("1")
    expect(_cell(page, consultations, "expired")).to_have_text("0")
    expect(_cell(page, "chart-prescriptions", "issued")).to_have_text("1")
    expect(_cell(page, "chart-prescriptions", "reviewed")).to_have_text("1")
    expect(_cell(page, "chart-prescriptions", "rejected")).to_have_text("0")
    expect(_cell(page, "chart-prescriptions", "dispensed")).to_have_text("1")
    expect(_cell(page, "chart-accept", "median")).not_to_have_text("—")
    expect(_cell(page, "chart-upload", "max")).not_to_have_text("—")
    svg = page.locator("#chart-consultations svg[role=img]")
    expect(svg).to_have_attribute(
        "aria-label", f"问诊：已接诊与超时未接诊. {hospital.name}: 申请 1, 已接诊 1, 超时未接诊 0"
    )
    expect(page.locator("#chart-upload-live tbody tr")).to_have_count(received)
    accessible(page)
    shots.take(page, "12-regulator-dashboard", "regulator: feed, no alert, indicators (zh-hans)")

    # While the page is open: a consultation expires unanswered; its records and the
    # alert are delivered to the platform and acknowledged. No reload.
    page.evaluate("window.__sameDocument = true")
    _off_loop(Scene(department).request)
    later = timezone.now() + dt.timedelta(hours=2)
    assert _off_loop(lambda: consultations_expire_due(now=later)) == 1
    _off_loop(drain)
    alert = Alert.objects.get(kind=AlertKind.CONSULTATION_EXPIRED)
    now_received = _received(province)
    assert now_received == received + 3  # requested, expired, the alert

    expect(feed).to_have_count(now_received)
    expect(feed.first).to_have_attribute("data-seq", str(now_received))
    live_alert = page.locator('#feed > li[data-type="alert"]')
    expect(live_alert).to_have_count(1)
    expect(live_alert).to_contain_text(alert.rule)
    expect(live_alert).to_contain_text("问诊超时未接诊")
    alerts = page.locator("#alerts > li")
    expect(alerts).to_have_count(1)
    expect(alerts.first).to_have_attribute("data-kind", "consultation_expired")
    expect(alerts.first).to_contain_text(f"违反规则：{alert.rule}")
    expect(alerts.first).to_contain_text(hospital.name)
    # The indicators follow: one more requested, one expired unanswered.
    expect(_cell(page, consultations, "requested")).to_have_text("2")
    expect(_cell(page, consultations, "expired")).to_have_text("1")
    assert page.evaluate("window.__sameDocument") is True
    accessible(page)
    shots.take(page, "13-regulator-live", "regulator: records and an alert arrived live")

    # The filter: a hospital of the province with no record has no indicators, no alert.
    page.get_by_label("医院", exact=True).select_option(str(quiet.pk))
    page.get_by_role("button", name="查询").click()
    expect(page.locator("#indicators-empty")).to_be_visible()
    expect(page.locator("#chart-consultations tbody tr")).to_have_count(0)
    expect(alerts).to_have_count(0)
    page.get_by_label("医院", exact=True).select_option(str(hospital.pk))
    page.get_by_label("开始日期").fill(timezone.localdate().isoformat())
    page.get_by_label("结束日期（含当天）").fill(timezone.localdate().isoformat())
    page.keyboard.press("Enter")
    expect(_cell(page, consultations, "answered")).to_have_text("1")
    expect(alerts).to_have_count(1)

    # In English, after a reload: the feed resumes from today's first record.
    page.goto(f"{server}/console/regulator/?lang=en")
    expect(page.locator("h1")).to_have_text("Regulator console")
    expect(feed).to_have_count(now_received)
    expect(feed.first).to_contain_text("Alert")
    expect(alerts.first).to_contain_text(f"Rule broken: {alert.rule}")
    expect(page.locator("#chart-prescriptions figcaption")).to_have_text(
        "Prescriptions: issued, reviewed, rejected, dispensed"
    )
    expect(_cell(page, "chart-prescriptions", "issued")).to_have_text("1")
    accessible(page)
    assert errors == []
    context.close()


# --- the hospital administrator ------------------------------------------------------------------


def test_an_administrator_sees_practitioners_replays_a_dead_letter_and_checks_the_audit_chain(
    server: str, browser: Browser, shots: Screenshots, department: Any, peer: Platform
) -> None:
    hospital = department.hospital
    peer.faults(
        refuse={
            "code": "E4001",
            "message": "药品编码未备案",
            "count": 1,
            "record_types": ["review"],
        }
    )
    scene = _off_loop(lambda: RxScene(department))
    _off_loop(scene.active)
    _off_loop(drain)
    dead = OutboxRecord.objects.get(hospital=hospital, status=RecordStatus.DEAD)
    assert (dead.record_type, dead.dead_code) == ("review", "E4001")
    peer.faults()  # the cause is fixed

    Reconciliation.objects.create(
        hospital=hospital,
        channel="wechat",
        bill_date=dt.date(2026, 11, 30),
        ran_at=timezone.now(),
        bill_rows=3,
        ledger_rows=2,
        differences=[
            {
                "kind": "missing_here",
                "type": "PAY",
                "our_reference": "P202611300001",
                "order": "",
                "bill_amount": 2000,
                "ledger_amount": None,
            }
        ],
    )
    admin: User = with_server_password(UserFactory(role=Role.ADMINISTRATOR))
    HospitalAdministrator.objects.create(user=admin, hospital=hospital)
    context = signed_in_context(browser, server, admin, viewport=VIEWPORT)
    page = context.new_page()
    errors = watch(page)
    page.goto(f"{server}/console/")
    expect(page).to_have_url(f"{server}/console/administrator/")
    expect(page.locator("h1")).to_have_text("医院管理员工作台")

    # Practitioners: the doctor and the pharmacist, filed, each with a valid certificate.
    rows = page.locator("#practitioners tbody tr")
    expect(rows).to_have_count(2)
    for practitioner in (scene.doctor, scene.pharmacist):
        row = page.locator(f'#practitioners tr[data-id="{practitioner.pk}"]')
        expect(row).to_contain_text(practitioner.practice_certificate_number)
        expect(row.locator("td[data-status=filed]")).to_have_text("已备案")
        expect(row.locator("td[data-status=valid]")).to_contain_text("有效")

    # The outbox: the refused review is a dead letter with its reason.
    dead_rows = page.locator("#dead tbody tr")
    expect(dead_rows).to_have_count(1)
    expect(dead_rows.first).to_contain_text("E4001: 药品编码未备案")
    expect(dead_rows.first).to_contain_text("处方审核")
    expect(page.locator("#pending-empty")).to_be_visible()
    accessible(page)
    shots.take(page, "14-administrator", "administrator: practitioners, a dead letter, outbox")

    # Replay it with the keyboard: queued again (and audited), then delivered.
    tab_to(page, "#dead button.ov-replay", presses=40)
    expect(page.locator("#dead button.ov-replay")).to_have_accessible_name(
        f"重新上报：处方审核（{page.locator('#dead tbody td').first.inner_text()}）"
    )
    page.keyboard.press("Enter")
    expect(page.locator("#outbox-status")).to_have_text("已重新排队上报：处方审核")
    expect(page.locator("#dead-empty")).to_be_visible()
    dead.refresh_from_db()
    assert dead.status == RecordStatus.PENDING
    assert dead.attempts == 0
    replayed = AuditEvent.objects.get(action="regulators.record_replayed")
    assert replayed.actor_id == str(admin.pk)
    assert replayed.object_id == str(dead.record_id)
    expect(page.locator("#pending tbody tr")).to_have_count(1)
    _off_loop(drain)
    dead.refresh_from_db()
    assert dead.status == RecordStatus.ACKNOWLEDGED
    page.get_by_role("button", name="刷新").click()
    expect(page.locator("#pending-empty")).to_be_visible()

    # The audit chain check, with the keyboard.
    tab_to(page, "#audit-run", presses=40)
    page.keyboard.press("Enter")
    result = page.locator("#audit-result")
    expect(result).to_have_attribute("data-state", "ok")
    expect(result).to_contain_text("审计链完整")
    assert AuditEvent.objects.filter(action="audit.chain_checked", actor_id=str(admin.pk)).exists()

    # Payment reconciliations: the runs of the hospital; a new run for a day (this
    # hospital has no gateway connection, so it adds none).
    recons = page.locator("#recons tbody tr")
    expect(recons).to_have_count(1)
    expect(recons.first).to_contain_text("微信支付")
    expect(recons.first.locator("td[data-clean=false]")).to_have_text("1 处差异")
    page.get_by_label("对账日期").fill("2026-11-30")
    with page.expect_response(lambda r: r.url.endswith("/payments/reconciliations")) as ran:
        page.get_by_role("button", name="对账", exact=True).click()
    assert ran.value.status == 201
    expect(page.locator("#recon-error")).to_be_hidden()
    accessible(page)
    shots.take(page, "15-administrator-checked", "administrator: replayed, audit chain intact")

    # In English.
    page.goto(f"{server}/console/administrator/?lang=en")
    expect(page.locator("h1")).to_have_text("Hospital administrator console")
    expect(page.locator("#practitioners td[data-status=filed]").first).to_have_text("Filed")
    expect(page.locator("#dead-empty")).to_have_text("No dead letter")
    accessible(page)
    shots.take(page, "16-administrator-en", "administrator's page in English")
    assert errors == []
    context.close()


def test_a_regulator_account_without_a_province_sees_the_refusal_not_a_broken_page(
    server: str, browser: Browser
) -> None:
    loose: User = with_server_password(UserFactory(role=Role.REGULATOR))
    context = signed_in_context(browser, server, loose, viewport=VIEWPORT)
    page = context.new_page()
    errors = watch(page)
    page.goto(f"{server}/console/regulator/")
    expect(page.locator("h1")).to_have_text("监管人员工作台")
    expect(page.locator("#connection")).to_have_attribute("data-state", "failed")
    expect(page.locator("#alerts-error")).to_have_text("您的账号未关联监管辖区。")
    expect(page.locator("#alerts-error")).to_have_attribute("data-code", "not_a_regulator")
    expect(page.locator("#indicators-error")).to_have_attribute("data-code", "not_a_regulator")
    expect(page.locator("#feed-error")).to_have_attribute("data-code", "not_a_regulator")
    accessible(page)
    assert errors == []
    context.close()
