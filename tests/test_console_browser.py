"""The web console in a real browser (issue 3): Debian's Chromium, driven by Playwright,
against a real Daphne process on the test database.

A doctor signs in with a password and an authenticator code, checks their identity, goes
on duty and sees a consultation arrive in the queue while the page is open; accepts it,
talks with a patient whose app is a scripted WebSocket client, loses the connection and
gets it back without losing or repeating a message, and ends the consultation with a
diagnosis found by the ICD-10 search. Other consultations are referred offline or
refused as first visits, in English. Every page passes the basic accessibility checks,
sign-in works with the keyboard alone, and an idle session warns before it ends.

Screenshots of every page go to ``$CONSOLE_SCREENSHOTS`` (CI: artifacts/screenshots),
else to ``screenshots/`` under pytest's temporary folder; ``INDEX.md`` there says what
each one shows.
"""

from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import Browser, Page, ViewportSize, expect

from backend.identity.models import Role, User
from backend.organisations.models import Practitioner
from consultations.models import Consultation
from tests.console_browser_fixtures import accessible, watch
from tests.console_browser_helpers import (
    Screenshots,
    ScriptedPatient,
    otp,
    signed_in_context,
    tab_to,
    with_server_password,
)
from tests.consult_helpers import patient_with_record, ready_doctor
from tests.consult_http_helpers import png_bytes
from tests.factories import PASSWORD, DepartmentFactory, UserFactory

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("orm_beside_playwright"),
]

expect.set_options(timeout=15_000)
VIEWPORT: ViewportSize = {"width": 1440, "height": 1000}


def _doctor(department: Any, **fields: Any) -> Practitioner:
    doctor = ready_doctor(department, **fields)
    with_server_password(doctor.user)
    return doctor


# --- sign-in with the keyboard only ------------------------------------------------------------


def test_a_doctor_signs_in_with_the_keyboard_only_and_goes_on_duty(
    server: str, browser: Browser, shots: Screenshots
) -> None:
    doctor = _doctor(DepartmentFactory(), on_duty=False)
    user = doctor.user
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    errors = watch(page)

    # Asking for a page signs in first, in Chinese whatever the browser prefers.
    page.goto(f"{server}/console/doctor/")
    expect(page).to_have_url(f"{server}/console/login/?next=%2Fconsole%2Fdoctor%2F")
    expect(page.locator("html")).to_have_attribute("lang", "zh-hans")
    accessible(page)
    shots.take(page, "01-login", "the sign-in page (zh-hans), username and password")

    tab_to(page, "#username")
    page.keyboard.type(user.username)
    page.keyboard.press("Tab")
    page.keyboard.type("not-the-password")
    page.keyboard.press("Enter")
    error = page.locator("#password-error")
    expect(error).to_have_text("用户名或密码错误。")
    expect(error).to_have_attribute("data-code", "authentication_failed")
    # The wrong password is selected: typing replaces it.
    page.keyboard.type(PASSWORD)
    page.keyboard.press("Enter")

    code = page.locator("#totp-code")
    expect(code).to_be_focused()
    accessible(page)
    page.keyboard.type(otp(user, steps_ahead=10))  # a code from the wrong time
    page.keyboard.press("Enter")
    expect(page.locator("#totp-error")).to_have_text("动态验证码错误或已使用，请输入新的验证码。")
    expect(page.locator("#totp-error")).to_have_attribute("data-code", "totp_invalid")
    shots.take(page, "02-login-second-factor", "the authenticator-code step with its error")
    page.keyboard.type(otp(user))
    page.keyboard.press("Enter")

    expect(page).to_have_url(f"{server}/console/doctor/")
    switch = page.locator("#duty-switch")
    expect(switch).to_have_attribute("aria-checked", "false")
    expect(page.locator("#duty-state")).to_have_text("已停诊：您不会收到新的问诊")
    tab_to(page, "#duty-switch")
    page.keyboard.press("Enter")
    expect(switch).to_have_attribute("aria-checked", "true")
    expect(page.locator("#duty-state")).to_have_text("接诊中：新的问诊会进入您的队列")
    doctor.refresh_from_db()
    assert doctor.on_duty is True
    assert errors == []
    context.close()


# --- the doctor's day: queue, room, chat through a dropped connection, end ----------------------


def _seqs_and_texts(page: Page) -> list[tuple[int, str]]:
    items: list[tuple[int, str]] = page.eval_on_selector_all(
        "#messages li[data-seq]",
        "els => els.map(li => [Number(li.dataset.seq), li.querySelector('p')?.textContent ?? "
        "li.querySelector('img')?.alt ?? ''])",
    )
    return [(seq, text) for seq, text in items]


@pytest.mark.usefixtures("icd10")
def test_a_doctor_takes_a_consultation_from_the_live_queue_to_its_end(
    server: str, browser: Browser, shots: Screenshots
) -> None:
    department = DepartmentFactory()
    doctor = _doctor(department, on_duty=False, last_identity_check_at=None)
    account, profile, _record = patient_with_record(real_name="王芳", allergies=["青霉素"])
    patient = ScriptedPatient(server, account)
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    errors = watch(page)

    # Sign in (password, then the code) and land on the doctor's home.
    page.goto(f"{server}/console/login/")
    page.get_by_label("用户名").fill(doctor.user.username)
    page.get_by_label("密码").fill(PASSWORD)
    page.get_by_role("button", name="登录").click()
    page.get_by_label("动态验证码").fill(otp(doctor.user))
    page.get_by_role("button", name="验证并登录").click()
    expect(page).to_have_url(f"{server}/console/doctor/")
    expect(page.locator("#connection")).to_have_attribute("data-state", "open")
    expect(page.locator("#queue-empty")).to_be_visible()

    # Today's identity check, then on duty.
    page.get_by_role("button", name="实名认证（人脸核验）").click()
    expect(page.locator("#identity-state")).to_contain_text("认证通过")
    page.get_by_role("switch", name="在线接诊").click()
    expect(page.get_by_role("switch", name="在线接诊")).to_have_attribute("aria-checked", "true")

    # The patient asks for a follow-up; it appears in the open page's queue.
    page.evaluate("window.__samePage = true")
    consultation_id = patient.request(profile, department, "血压控制尚可，需要续药")
    entry = page.locator(f'#queue li[data-consultation="{consultation_id}"]')
    expect(entry).to_contain_text("王芳")
    expect(entry).to_contain_text("血压控制尚可，需要续药")
    expect(page.locator("#queue-count")).to_have_text("(1)")
    assert page.evaluate("window.__samePage") is True  # no reload
    accessible(page)
    shots.take(page, "03-doctor-home", "doctor's home: on duty, identity checked, live queue")

    # While waiting, the patient describes the problem.
    patient.connect(consultation_id)
    first = patient.say("医生您好，我最近血压在130/85左右")

    # The room: summary, then accept (confirming it is a follow-up).
    entry.get_by_role("link").click()
    expect(page).to_have_url(f"{server}/console/doctor/consultations/{consultation_id}/")
    expect(page.locator("#patient-name")).to_have_text("王芳")
    expect(page.locator("#patient-allergies")).to_have_text("青霉素")
    expect(page.locator("#patient-prior")).to_contain_text("I10 原发性高血压")
    expect(page.locator("#room-status")).to_have_text("候诊中")
    page.get_by_role("button", name="接诊").click()
    accept_error = page.locator("#accept-form .error")
    expect(accept_error).to_have_text("请确认本次为复诊，或以初诊为由拒诊。")
    expect(accept_error).to_have_attribute("data-code", "follow_up_not_confirmed")
    accessible(page)
    shots.take(page, "04-room-waiting", "the room before accepting: summary, the API's error")
    page.get_by_label("我已核实：患者已在线下确诊，本次为复诊").check()
    page.get_by_role("button", name="接诊").click()
    expect(page.locator("#room-status")).to_have_text("问诊中")
    expect(page.locator("#connection")).to_have_attribute("data-state", "open")
    expect(page.locator(f'#messages li[data-seq="{first}"]')).to_contain_text("130/85")
    patient.wait_for(lambda f: f["type"] == "consultation.state" and f["status"] == "in_progress")

    # Typing, a message each way, a read receipt, an image shown inline.
    box = page.get_by_label("输入消息")
    box.fill("您好，最近有头晕、头痛吗？")
    patient.wait_for(lambda f: f["type"] == "typing")
    page.get_by_role("button", name="发送", exact=True).click()
    [asked] = patient.wait_for(
        lambda f: f["type"] == "message.new" and f["message"]["text"].startswith("您好，最近")
    )
    mine = page.locator(f'#messages li[data-seq="{asked["message"]["seq"]}"]')
    expect(mine).to_contain_text("已送达")
    patient.send({"type": "typing"})
    expect(page.locator("#typing")).to_be_visible()
    patient.send({"type": "read", "up_to_seq": asked["message"]["seq"]})
    expect(mine.locator(".receipt")).to_have_text("已读")
    patient.say("没有头晕，偶尔睡眠不好")
    image = patient.show_image(consultation_id, "血压记录.png", png_bytes(96, 64))
    picture = page.locator(f'#messages li[data-seq="{image}"] img')
    expect(picture).to_have_attribute("alt", "附件：血压记录.png")
    page.wait_for_function(
        "img => img.complete && img.naturalWidth > 0", arg=picture.element_handle()
    )

    # The connection drops. The patient keeps writing; so does the doctor.
    context.set_offline(True)
    expect(page.locator("#connection")).to_have_attribute("data-state", "offline")
    while_away = [patient.say(f"断线期间的消息{i}") for i in range(3)]
    box.fill("收到，请继续按时服药")
    page.get_by_role("button", name="发送", exact=True).click()
    pending = page.locator("#messages li.pending")
    expect(pending).to_have_count(1)
    expect(pending.locator(".receipt")).to_have_text("等待发送")
    kept = page.evaluate(f"sessionStorage.getItem('console.consultation.{consultation_id}.outbox')")
    assert "收到，请继续按时服药" in kept  # survives even a reload
    box.fill("还想问一下饮食")  # a draft, not sent
    context.set_offline(False)

    # Back: everything exactly once, in seq order, and the doctor's message delivered once.
    expect(page.locator("#connection")).to_have_attribute("data-state", "open")
    expect(page.locator(f'#messages li[data-seq="{while_away[-1]}"]')).to_be_visible()
    expect(pending).to_have_count(0)
    [sent] = patient.wait_for(
        lambda f: f["type"] == "message.new" and f["message"]["text"] == "收到，请继续按时服药"
    )
    expect(page.locator(f'#messages li[data-seq="{sent["message"]["seq"]}"]')).to_be_visible()
    shown = _seqs_and_texts(page)
    assert [seq for seq, _ in shown] == list(range(1, sent["message"]["seq"] + 1))
    assert [text for _, text in shown] == [
        "医生您好，我最近血压在130/85左右",
        "您好，最近有头晕、头痛吗？",
        "没有头晕，偶尔睡眠不好",
        "附件：血压记录.png",
        "断线期间的消息0",
        "断线期间的消息1",
        "断线期间的消息2",
        "收到，请继续按时服药",
    ]
    texts = [f["message"]["text"] for f in patient.of("message.new")]
    assert texts.count("收到，请继续按时服药") == 1
    assert box.input_value() == "还想问一下饮食"
    accessible(page)
    shots.take(page, "05-room-chat", "the chat after a dropped connection: all messages once")

    # End: a diagnosis found by the ICD-10 search, the note, the fee in yuan.
    page.get_by_label("诊断（ICD-10 编码或名称）").fill("高血压")
    page.get_by_role("button", name="选择 I10 原发性高血压").click()
    expect(page.locator("#icd-chosen li")).to_have_count(1)
    expect(page.get_by_label("主诊断：I10 原发性高血压")).to_be_checked()
    page.get_by_label("主诉").fill("高血压复诊，续药")
    page.get_by_label("现病史").fill("规律服用氨氯地平")
    page.get_by_label("检查所见").fill("家庭自测血压130/85 mmHg")
    page.get_by_label("医嘱").fill("继续服药，低盐饮食，每日监测血压")
    page.get_by_label("诊费（元）").fill("20.5")
    accessible(page)
    shots.take(page, "06-room-end-form", "ending: the ICD-10 search, the note and the fee")
    page.get_by_role("button", name="结束问诊").click()
    expect(page.locator("#room-status")).to_have_text("已结束")
    expect(page.locator("#closed-state")).to_contain_text("I10 原发性高血压")
    expect(page.get_by_label("输入消息")).to_be_disabled()
    shots.take(page, "07-room-ended", "the ended consultation with its diagnosis")
    patient.wait_for(lambda f: f["type"] == "consultation.state" and f["status"] == "ended")

    ended = Consultation.objects.get(pk=consultation_id)
    assert (ended.status, ended.fee) == ("ended", 2050)
    assert ended.diagnoses == [{"icd10": "I10", "name": "原发性高血压", "main": True}]
    assert ended.note == {
        "chief_complaint": "高血压复诊，续药",
        "history": "规律服用氨氯地平",
        "findings": "家庭自测血压130/85 mmHg",
        "advice": "继续服药，低盐饮食，每日监测血压",
    }
    assert ended.last_seq == len(shown)  # nothing stored twice
    patient.close()
    assert errors == []
    context.close()


# --- refer offline, refuse as a first visit, in English -----------------------------------------


def test_a_doctor_refers_one_consultation_offline_and_refuses_another_in_english(
    server: str, browser: Browser, shots: Screenshots
) -> None:
    department = DepartmentFactory()
    doctor = _doctor(department)
    refer_account, refer_profile, _ = patient_with_record(real_name="李雷")
    refuse_account, refuse_profile, _ = patient_with_record(real_name="韩梅梅")
    refer_id = ScriptedPatient(server, refer_account).request(refer_profile, department, "复诊")
    refuse_id = ScriptedPatient(server, refuse_account).request(
        refuse_profile, department, "第一次看这个病"
    )
    context = signed_in_context(browser, server, doctor.user, viewport=VIEWPORT)
    page = context.new_page()
    errors = watch(page)

    page.goto(f"{server}/console/doctor/consultations/{refuse_id}/?lang=en")
    expect(page.locator("html")).to_have_attribute("lang", "en")
    expect(page.locator("#room-status")).to_have_text("Waiting")
    page.get_by_label("Reason for refusing").fill("No prior offline diagnosis of this illness")
    page.get_by_role("button", name="Refuse", exact=True).click()
    expect(page.locator("#room-status")).to_have_text("Refused as a first visit")
    expect(page.locator("#closed-state")).to_contain_text(
        "Reason: No prior offline diagnosis of this illness"
    )
    accessible(page)
    shots.take(page, "08-room-refused-en", "a consultation refused as a first visit, in English")

    page.goto(f"{server}/console/doctor/consultations/{refer_id}/")  # English is remembered
    page.get_by_label("I confirm the patient was diagnosed offline").check()
    page.get_by_role("button", name="Accept").click()
    expect(page.locator("#room-status")).to_have_text("In progress")
    # The API's refusal is shown next to the action: a referral needs a reason.
    page.get_by_role("button", name="Refer offline", exact=True).click()
    refer_error = page.locator("#refer-form .error")
    expect(refer_error).to_have_attribute("data-code", "validation_error")
    expect(refer_error).to_contain_text("reason")
    page.get_by_label("Reason for the referral").fill("Needs an echocardiogram in person")
    page.get_by_role("button", name="Refer offline", exact=True).click()
    expect(page.locator("#room-status")).to_have_text("Referred offline")
    shots.take(page, "09-room-referred-en", "a consultation referred offline, in English")

    statuses = dict(
        Consultation.objects.filter(pk__in=[refer_id, refuse_id]).values_list("pk", "status")
    )
    assert {str(k): v for k, v in statuses.items()} == {
        refer_id: "referred_offline",
        refuse_id: "first_visit_refused",
    }
    assert errors == []
    context.close()


# --- the idle session --------------------------------------------------------------------------


def test_an_idle_session_warns_a_minute_before_it_ends_and_can_be_kept(
    server: str, browser: Browser, shots: Screenshots
) -> None:
    regulator: User = with_server_password(UserFactory(role=Role.REGULATOR))
    context = signed_in_context(browser, server, regulator, viewport=VIEWPORT)
    page = context.new_page()
    errors = watch(page)
    page.clock.install()
    page.goto(f"{server}/console/")
    expect(page).to_have_url(f"{server}/console/regulator/")
    expect(page.locator("h1")).to_have_text("监管人员工作台")
    accessible(page)
    shots.take(
        page, "10-regulator-no-province", "a regulator account with no province: its home says so"
    )

    config = "JSON.parse(document.getElementById('console-config').text)"
    idle = int(page.evaluate(f"{config}.idle_seconds"))
    page.clock.fast_forward((idle - 59) * 1000)
    dialog = page.get_by_role("alertdialog", name="即将自动退出")
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text("秒后自动退出登录")
    stay = page.get_by_role("button", name="保持登录")
    expect(stay).to_be_focused()
    shots.take(page, "11-session-warning", "the idle-session warning a minute before the end")
    with page.expect_response(lambda r: r.url.endswith("/api/console/v1/auth/session")) as kept:
        page.keyboard.press("Enter")
    assert kept.value.status == 200
    expect(dialog).to_be_hidden()

    # Left alone for the whole period this time: signed out, with the reason.
    page.clock.fast_forward((idle + 1) * 1000)
    expect(page).to_have_url(f"{server}/console/login/?next=%2Fconsole%2Fregulator%2F&reason=idle")
    expect(page.locator(".notice")).to_have_text("您因长时间未操作已退出登录，请重新登录。")
    page.goto(f"{server}/console/regulator/")
    expect(page).to_have_url(f"{server}/console/login/?next=%2Fconsole%2Fregulator%2F")
    assert errors == []
    context.close()
