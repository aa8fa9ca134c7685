"""The room's video call in a real browser (issue 3, CONTRACT section 3): Debian's
Chromium with its fake camera and microphone, driven by Playwright against a real Daphne
process on the test database.

The doctor calls with the keyboard; the patient's app is the scripted WebSocket client,
and a second headless page stands in for the patient's phone: its RTCPeerConnection
answers the doctor's offer and trades ICE candidates, all relayed as ``call.signal``
frames through the patient's socket. The call connects and the patient's picture plays
in the room; hanging up ends it. The patient calls back, the doctor answers with the same
button, and the patient hangs up. Each call is in the chat record (``call.started``,
``call.ended`` system messages) and shown in the room's message list. A denied camera is
said plainly, and the call button works only while the consultation is in progress.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, ViewportSize, expect

from consultations.models import Consultation, Message
from tests.console_browser_fixtures import watch
from tests.console_browser_helpers import (
    FAKE_MEDIA_ARGS,
    Screenshots,
    ScriptedPatient,
    accessibility_problems,
    chromium_with,
    signed_in_context,
    tab_to,
    with_server_password,
)
from tests.consult_helpers import patient_with_record, ready_doctor
from tests.factories import DepartmentFactory

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("orm_beside_playwright"),
]

expect.set_options(timeout=15_000)
VIEWPORT: ViewportSize = {"width": 1440, "height": 1000}


@pytest.fixture(scope="module")
def browser(server: str) -> Iterator[Browser]:
    with chromium_with(FAKE_MEDIA_ARGS) as launched:
        yield launched


# --- the patient's phone: a second page with its own RTCPeerConnection -------------------------

_PEER_SETUP = """async () => {
  const stream = await navigator.mediaDevices.getUserMedia({ video: true, audio: true });
  const pc = new RTCPeerConnection();
  for (const track of stream.getTracks()) pc.addTrack(track, stream);
  window.peer = pc;
  window.peerOut = [];
  pc.onicecandidate = (e) => {
    if (e.candidate) window.peerOut.push({ type: "candidate", candidate: e.candidate.toJSON() });
  };
}"""

_PEER_ANSWER = """async (offer) => {
  await window.peer.setRemoteDescription({ type: "offer", sdp: offer.sdp });
  const answer = await window.peer.createAnswer();
  await window.peer.setLocalDescription(answer);
  return { type: "answer", sdp: answer.sdp };
}"""

_PEER_OFFER = """async () => {
  const offer = await window.peer.createOffer();
  await window.peer.setLocalDescription(offer);
  return { type: "offer", sdp: offer.sdp };
}"""


def _signal(frame: dict[str, Any], kind: str) -> bool:
    return frame["type"] == "call.signal" and frame["signal"].get("type") == kind


def _stored_frame(frame: dict[str, Any], text: str) -> bool:
    return frame["type"] == "message.new" and frame["message"]["text"] == text


def _relay_until_connected(page: Page, peer: Page, patient: ScriptedPatient) -> None:
    """Carry ICE candidates both ways (the doctor's arrive on the patient's socket) until
    the room says the call is connected."""
    relayed = 0
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        theirs = [f for f in patient.of("call.signal") if f["signal"].get("type") == "candidate"]
        for frame in theirs[relayed:]:
            peer.evaluate("(c) => window.peer.addIceCandidate(c)", frame["signal"]["candidate"])
        relayed = len(theirs)
        for candidate in peer.evaluate("() => window.peerOut.splice(0)"):
            patient.send({"type": "call.signal", "signal": candidate})
        if page.locator("#call-state").get_attribute("data-state") == "connected":
            return
        time.sleep(0.1)
    raise AssertionError(
        f"the call did not connect: {page.locator('#call-state').get_attribute('data-state')}"
    )


def _stored(consultation_id: str) -> list[tuple[int, str, str, str]]:
    return [
        (seq, kind, text, str(sender))
        for seq, kind, text, sender in Message.objects.filter(
            consultation_id=consultation_id
        ).values_list("seq", "kind", "text", "sender")
    ]


def test_a_doctor_calls_the_patient_hangs_up_and_answers_the_patients_call(
    server: str, browser: Browser, shots: Screenshots
) -> None:
    department = DepartmentFactory()
    doctor = ready_doctor(department)
    with_server_password(doctor.user)
    doctor_id = str(doctor.user.pk)
    account, profile, _ = patient_with_record(real_name="张伟")
    patient_id = str(account.pk)
    patient = ScriptedPatient(server, account)
    consultation_id = patient.request(profile, department, "高血压复诊，想视频看一下")
    patient.connect(consultation_id)

    context = signed_in_context(browser, server, doctor.user, viewport=VIEWPORT)
    page = context.new_page()
    errors = watch(page)
    page.goto(f"{server}/console/doctor/consultations/{consultation_id}/")
    state = page.locator("#call-state")
    start = page.get_by_role("button", name="视频通话", exact=True)
    hang_up = page.get_by_role("button", name="挂断")

    # No call before the consultation is in progress.
    expect(page.locator("#room-status")).to_have_text("候诊中")
    expect(start).to_be_disabled()
    expect(state).to_have_text("问诊进行中才能视频通话")
    page.get_by_label("我已核实：患者已在线下确诊，本次为复诊").check()
    page.get_by_role("button", name="接诊").click()
    expect(page.locator("#room-status")).to_have_text("问诊中")
    expect(page.locator("#connection")).to_have_attribute("data-state", "open")
    expect(state).to_have_text("未在通话")
    expect(start).to_be_enabled()
    expect(hang_up).to_be_disabled()

    # The patient's phone, ready with its camera.
    peer_context = browser.new_context()
    peer = peer_context.new_page()
    peer.goto(f"{server}/healthz")
    peer.evaluate(_PEER_SETUP)

    # The doctor calls, with the keyboard: an offer reaches the patient, the call starts.
    tab_to(page, "#call-start", presses=40)
    page.keyboard.press("Enter")
    [offer] = patient.wait_for(lambda f: _signal(f, "offer"))
    assert offer["user"] == doctor_id
    assert "m=audio" in offer["signal"]["sdp"]
    assert "m=video" in offer["signal"]["sdp"]
    expect(hang_up).to_be_focused()
    expect(page.get_by_label("我的画面")).to_be_visible()
    patient.wait_for(lambda f: _stored_frame(f, "call.started"))

    # The phone answers; the candidates cross; the patient's picture plays in the room.
    patient.send({"type": "call.signal", "signal": peer.evaluate(_PEER_ANSWER, offer["signal"])})
    _relay_until_connected(page, peer, patient)
    expect(state).to_have_text("通话中")
    page.wait_for_function("() => document.getElementById('call-remote').videoWidth > 0")
    expect(page.locator("#messages li.system")).to_have_count(1)
    expect(page.locator('#messages li[data-seq="1"] p')).to_have_text("视频通话开始")
    assert accessibility_problems(page) == []
    shots.take(
        page,
        "30-room-video-call",
        "the room in a video call: the patient's picture, the doctor's own, hang up",
    )

    # Hang up with the keyboard: the patient hears of it, the end is in the record.
    page.keyboard.press("Enter")
    patient.wait_for(lambda f: _signal(f, "hangup"))
    patient.wait_for(lambda f: _stored_frame(f, "call.ended"))
    expect(state).to_have_text("通话已结束")
    expect(start).to_be_focused()
    expect(page.locator("#call-stage")).to_be_hidden()
    expect(page.locator('#messages li[data-seq="2"] p')).to_have_text("视频通话结束")
    peer.evaluate("() => window.peer.close()")

    # The patient calls back; the doctor answers with the same button; the patient hangs up.
    peer.evaluate(_PEER_SETUP)
    patient.send({"type": "call.signal", "signal": peer.evaluate(_PEER_OFFER)})
    expect(state).to_have_text("患者发起了视频通话")
    answer_button = page.get_by_role("button", name="接听视频通话")
    answer_button.click()
    [answer] = patient.wait_for(lambda f: _signal(f, "answer"))
    peer.evaluate(
        "(a) => window.peer.setRemoteDescription({ type: 'answer', sdp: a.sdp })", answer["signal"]
    )
    _relay_until_connected(page, peer, patient)
    patient.send({"type": "call.signal", "signal": {"type": "hangup"}})
    expect(state).to_have_text("患者已挂断")
    expect(page.locator('#messages li[data-seq="4"] p')).to_have_text("视频通话结束")
    expect(start).to_be_enabled()

    assert _stored(consultation_id) == [
        (1, "system", "call.started", doctor_id),
        (2, "system", "call.ended", doctor_id),
        (3, "system", "call.started", patient_id),
        (4, "system", "call.ended", patient_id),
    ]
    assert Consultation.objects.get(pk=consultation_id).call_started_at is None
    shown = page.eval_on_selector_all(
        "#messages li[data-seq] p", "ps => ps.map(p => p.textContent)"
    )
    assert shown == ["视频通话开始", "视频通话结束", "视频通话开始", "视频通话结束"]
    assert errors == []
    peer_context.close()
    context.close()
    patient.close()


_MEDIA_REFUSED = """() => {
  navigator.mediaDevices.getUserMedia = async () => {
    throw new DOMException("refused by the test", window.mediaError || "NotAllowedError");
  };
}"""


def test_a_camera_the_browser_refuses_or_lacks_is_said_plainly(
    server: str, browser: Browser
) -> None:
    department = DepartmentFactory()
    doctor = ready_doctor(department)
    with_server_password(doctor.user)
    account, profile, _ = patient_with_record(real_name="李雷")
    patient = ScriptedPatient(server, account)
    consultation_id = patient.request(profile, department, "复诊")
    context = signed_in_context(browser, server, doctor.user, viewport=VIEWPORT)
    context.add_init_script(f"({_MEDIA_REFUSED})()")
    page = context.new_page()
    errors = watch(page)
    page.goto(f"{server}/console/doctor/consultations/{consultation_id}/?lang=en")
    page.get_by_label("I confirm the patient was diagnosed offline").check()
    page.get_by_role("button", name="Accept").click()
    expect(page.locator("#connection")).to_have_attribute("data-state", "open")
    start = page.get_by_role("button", name="Video call", exact=True)
    error = page.locator("#call-error")

    start.click()
    expect(error).to_have_text(
        "The browser may not use the camera or microphone; allow them in the "
        "site's permissions and try again."
    )
    expect(error).to_have_attribute("role", "alert")
    expect(page.locator("#call-state")).to_have_text("Not in a call")
    expect(start).to_be_enabled()
    expect(page.get_by_role("button", name="Hang up")).to_be_disabled()

    page.evaluate("window.mediaError = 'NotFoundError'")
    start.click()
    expect(error).to_have_text("No camera or microphone was found; connect one and try again.")
    assert accessibility_problems(page) == []
    assert Message.objects.filter(consultation_id=consultation_id).count() == 0  # no call
    assert errors == []
    context.close()
    patient.close()
