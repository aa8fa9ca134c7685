"""The consultation WebSocket, one behaviour per test (CONTRACT section 3): who may
connect and the close codes, ``sync``, idempotent sending, the frame checks and limits,
typing, call signalling, read receipts and the consultation's state."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.utils import timezone

from backend.asgi import application
from backend.audit.models import AuditEvent
from backend.identity.models import WsTicket
from backend.identity.services import ws_ticket_issue
from consultations.models import Consultation, Message, ReadMarker
from tests.chat_helpers import (
    _fast_password_hashing,  # noqa: F401 - autouse fixture
    accept,
    assert_refused,
    chat_create,
    connect,
    console_session_headers,
    expect,
    hang_up,
    open_chat,
    quiet,
    send_and_echo,
    send_text,
    socket_path,
    still_open,
    stored,
    text_frame,
    ticket,
)
from tests.consult_helpers import HEADERS, client_for, patient_with_record, ready_doctor

pytestmark = pytest.mark.django_db(transaction=True)


# --- Who may connect ---------------------------------------------------------------------


async def test_without_a_ticket_the_socket_closes_with_4401() -> None:
    chat = await chat_create()

    await assert_refused(chat.path, 4401)


async def test_a_ticket_used_once_closes_a_second_connection_with_4401() -> None:
    chat = await chat_create()
    path = socket_path(chat, await ticket(chat, "patient"))
    first = await connect(path)
    await expect(first, "sync")
    await hang_up(first)

    await assert_refused(path, 4401)


async def test_an_expired_ticket_closes_with_4401() -> None:
    chat = await chat_create()
    path = socket_path(chat, await ticket(chat, "patient"))
    await database_sync_to_async(
        lambda: WsTicket.objects.update(expires_at=timezone.now() - dt.timedelta(seconds=1))
    )()

    await assert_refused(path, 4401)


async def test_a_ticket_for_another_consultation_of_the_same_patient_closes_with_4401() -> None:
    first = await chat_create()
    # The same patient's second consultation, in another hospital.
    second = await chat_create(account=first.account, profile=first.profile)
    ticket_for_first = await ticket(first, "patient")

    await assert_refused(f"{second.path}?ticket={ticket_for_first}", 4401)
    # Refused at the door, the ticket was not spent: it still opens its own path.
    socket = await connect(socket_path(first, ticket_for_first))
    await expect(socket, "sync")
    await hang_up(socket)


async def test_another_patient_is_not_a_participant_4403() -> None:
    chat = await chat_create()

    def other_patients_ticket() -> str:
        other, _, _ = patient_with_record()
        # The HTTP endpoint does not hand them one...
        refused = client_for(other).post(f"/api/mobile/v1/consultations/{chat.id}/ws-ticket")
        assert refused.status_code == 404, refused.content
        # ...and a ticket they hold for this path does not get them in either.
        return ws_ticket_issue(user=other, path=chat.path).ticket

    await assert_refused(
        socket_path(chat, await database_sync_to_async(other_patients_ticket)()), 4403
    )


async def test_another_doctor_of_the_department_is_refused_4403_once_one_accepted() -> None:
    chat = await chat_create()
    colleague = await database_sync_to_async(lambda: ready_doctor(chat.department).user)()
    headers = await console_session_headers(colleague)

    await assert_refused(chat.path, 4403, headers)


async def test_an_unknown_consultation_closes_with_4404() -> None:
    chat = await chat_create()
    headers = await console_session_headers(chat.doctor.user)

    await assert_refused(f"/ws/consultations/{uuid.uuid4()}/", 4404, headers)


async def test_a_consultation_id_that_is_not_a_uuid_closes_with_4404() -> None:
    chat = await chat_create()
    headers = await console_session_headers(chat.doctor.user)

    await assert_refused("/ws/consultations/not-a-uuid/", 4404, headers)


async def test_the_guardian_of_a_child_connects_to_the_childs_consultation() -> None:
    chat = await chat_create(child=True)

    socket, sync = await open_chat(chat, "patient")

    assert sync["consultation"]["id"] == chat.id
    assert sync["consultation"]["patient"]["relation"] == "child"
    answer = await send_text(socket, "孩子咳嗽好些了")
    assert answer["type"] == "message.ack"
    await hang_up(socket)


async def test_the_doctor_connects_only_after_accepting() -> None:
    chat = await chat_create(accept=False)
    headers = await console_session_headers(chat.doctor.user)

    await assert_refused(chat.path, 4403, headers)
    refused = await database_sync_to_async(chat.doctor_api.post)(
        f"/api/console/v1/consultations/{chat.id}/ws-ticket"
    )
    assert refused.status_code == 403, refused.content

    await accept(chat)

    socket, sync = await open_chat(chat, "doctor")
    assert sync["consultation"]["status"] == "in_progress"
    await hang_up(socket)
    by_session = await connect(chat.path, headers)
    assert (await expect(by_session, "sync"))["consultation"]["status"] == "in_progress"
    await hang_up(by_session)


# --- sync ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("after_seq", "first_expected"),
    [(None, 1), ("3", 4), ("0", 1), ("five", 1), ("-2", 1), ("5", None), ("99", None)],
)
async def test_sync_holds_every_message_after_after_seq_in_order(
    after_seq: Any, first_expected: int | None
) -> None:
    chat = await chat_create()
    writer, _ = await open_chat(chat, "patient")
    for n in range(1, 6):
        assert (await send_and_echo(writer, f"第{n}条"))[0]["seq"] == n
    await hang_up(writer)

    reader, sync = await open_chat(chat, "doctor", after_seq=after_seq)

    expected = list(range(first_expected, 6)) if first_expected else []
    assert [m["seq"] for m in sync["messages"]] == expected
    assert [m["text"] for m in sync["messages"]] == [f"第{n}条" for n in expected]
    assert sync["consultation"]["last_seq"] == 5
    await hang_up(reader)


async def test_the_doctor_reading_the_chat_on_a_socket_is_recorded_the_patient_is_not() -> None:
    """DOMAIN rule 12: a staff account's read of the chat, as the ``sync`` backlog, is
    an audit event with what was read and from where; the patient's own is not."""
    chat = await chat_create()
    writer, _ = await open_chat(chat, "patient")
    for n in range(1, 4):
        await send_and_echo(writer, f"第{n}条")
    await hang_up(writer)
    reads = database_sync_to_async(
        lambda: [
            (e.actor_id, e.after, e.ip, e.user_agent)
            for e in AuditEvent.objects.filter(
                action="consultation.messages_viewed", object_id=chat.id
            ).order_by("seq")
        ]
    )
    assert await reads() == []

    path = socket_path(chat, await ticket(chat, "doctor"), after_seq="1")
    reader = WebsocketCommunicator(
        application, path, headers=[*HEADERS, (b"user-agent", b"ConsoleBrowser/1.0")]
    )
    reader.scope["client"] = ("10.1.2.3", 50123)  # as Daphne fills it in
    assert (await reader.connect(timeout=5))[0] is True
    sync = await reader.receive_json_from(timeout=5)
    assert len(sync["messages"]) == 2
    await hang_up(reader)
    assert await reads() == [
        (
            str(chat.doctor.user.pk),
            {"after_seq": 1, "messages": 2, "via": "websocket"},
            "10.1.2.3",
            "ConsoleBrowser/1.0",
        )
    ]


# --- Sending --------------------------------------------------------------------------------


async def test_resending_a_client_msg_id_returns_the_same_ack_and_stores_nothing() -> None:
    chat = await chat_create()
    patient, _ = await open_chat(chat, "patient")
    doctor, _ = await open_chat(chat, "doctor")
    client_msg_id = str(uuid.uuid4())

    first = await send_text(patient, "血压130/85", client_msg_id)
    assert first == {"type": "message.ack", "client_msg_id": client_msg_id, "seq": 1}
    assert (await expect(patient, "message.new"))["message"]["seq"] == 1
    assert (await expect(doctor, "message.new"))["message"]["seq"] == 1

    again = await send_text(patient, "血压130/85", client_msg_id)
    assert again == first
    await hang_up(patient)
    # And after a reconnect, as a client does with what it has not seen acked.
    patient, sync = await open_chat(chat, "patient", after_seq=1)
    assert sync["messages"] == []
    assert await send_text(patient, "血压130/85", client_msg_id) == first

    await quiet(doctor)
    await quiet(patient)
    assert [row[0] for row in await stored(chat.id)] == [1]
    await hang_up(patient)
    await hang_up(doctor)


@pytest.mark.parametrize(
    "raw",
    ["{not json", "[1, 2]", '"message.send"', "null", '{"text": "no type"}', '{"type": 7}'],
    ids=["not-json", "array", "string", "null", "missing-type", "type-not-a-string"],
)
async def test_a_malformed_frame_is_answered_and_the_connection_stays_open(raw: str) -> None:
    chat = await chat_create()
    socket, _ = await open_chat(chat, "patient")

    await socket.send_to(text_data=raw)

    error = await expect(socket, "error")
    assert error["code"] == "malformed_frame"
    await still_open(socket)
    await hang_up(socket)


async def test_an_unknown_frame_type_is_answered_unknown_type() -> None:
    chat = await chat_create()
    socket, _ = await open_chat(chat, "patient")

    await socket.send_json_to({"type": "message.delete", "seq": 1})

    assert (await expect(socket, "error"))["code"] == "unknown_type"
    await still_open(socket)
    await hang_up(socket)


async def test_a_frame_over_64_kib_is_refused_frame_too_large() -> None:
    chat = await chat_create()
    socket, _ = await open_chat(chat, "patient")
    limit = settings.CHAT_MAX_FRAME_BYTES
    assert limit == 64 * 1024

    def ping_of(size: int) -> str:
        frame = json.dumps({"type": "ping", "pad": ""})
        return json.dumps({"type": "ping", "pad": "x" * (size - len(frame))})

    await socket.send_to(text_data=ping_of(limit))
    assert await socket.receive_json_from() == {"type": "pong"}  # exactly at the limit
    await socket.send_to(text_data=ping_of(limit + 1))
    assert (await expect(socket, "error"))["code"] == "frame_too_large"
    # Counted in bytes, not characters: 30,000 CJK characters are 90,000 bytes. The error
    # names the refused message (read from the frame's start, not parsed: CONTRACT 3).
    too_large = text_frame("字" * 30_000)
    await socket.send_json_to(too_large)
    refused = await expect(socket, "error")
    assert (refused["code"], refused["client_msg_id"]) == (
        "frame_too_large",
        too_large["client_msg_id"],
    )
    await still_open(socket)
    assert await stored(chat.id) == []
    await hang_up(socket)


async def test_text_over_the_limit_is_refused_with_its_client_msg_id() -> None:
    chat = await chat_create()
    socket, _ = await open_chat(chat, "patient")
    limit = settings.CHAT_MAX_TEXT_CHARS
    assert limit == 4000
    client_msg_id = str(uuid.uuid4())

    error = await send_text(socket, "字" * (limit + 1), client_msg_id)

    assert error["type"] == "error"
    assert error["code"] == "validation_error"
    assert error["client_msg_id"] == client_msg_id
    assert await stored(chat.id) == []
    # Exactly at the limit it is accepted.
    assert (await send_text(socket, "字" * limit))["type"] == "message.ack"
    await hang_up(socket)


@pytest.mark.parametrize(
    "client_msg_id", ["not-a-uuid", None, 42, ""], ids=["garbage", "missing", "number", "empty"]
)
async def test_a_bad_client_msg_id_is_a_malformed_frame(client_msg_id: Any) -> None:
    chat = await chat_create()
    socket, _ = await open_chat(chat, "patient")
    frame: dict[str, Any] = {"type": "message.send", "kind": "text", "text": "你好"}
    if client_msg_id is not None:
        frame["client_msg_id"] = client_msg_id

    await socket.send_json_to(frame)

    assert (await expect(socket, "error"))["code"] == "malformed_frame"
    await still_open(socket)
    assert await stored(chat.id) == []
    await hang_up(socket)


async def test_a_burst_over_the_rate_limit_drops_frames_visibly_and_loses_no_acked_one() -> None:
    chat = await chat_create()
    socket, _ = await open_chat(chat, "patient")
    burst = 3 * settings.CHAT_MAX_FRAMES_PER_SECOND
    frames = [text_frame(f"连发{n}") for n in range(burst)]

    for frame in frames:
        await socket.send_json_to(frame)
    acks: dict[str, int] = {}
    dropped: list[str] = []
    news = 0
    while len(acks) + len(dropped) < burst or news < len(acks):
        frame = await socket.receive_json_from(timeout=5)
        if frame["type"] == "message.ack":
            acks[frame["client_msg_id"]] = frame["seq"]
        elif frame["type"] == "message.new":
            news += 1
        else:
            assert frame["type"] == "error", frame
            assert frame["code"] == "rate_limited", frame
            dropped.append(frame["client_msg_id"])

    assert dropped
    # Each dropped message is named, so the client knows which to send again.
    assert sorted([*acks, *dropped]) == sorted(f["client_msg_id"] for f in frames)
    assert len(acks) >= settings.CHAT_MAX_FRAMES_PER_SECOND
    rows = await stored(chat.id)
    assert [seq for seq, *_ in rows] == list(range(1, len(acks) + 1))
    texts_by_id = {f["client_msg_id"]: f["text"] for f in frames}
    assert {seq: texts_by_id[cid] for cid, seq in acks.items()} == {
        seq: text for seq, _, _, text in rows
    }
    await quiet(socket, 0.1)
    await hang_up(socket)


@pytest.mark.parametrize("kind", ["image", "file"])
async def test_an_attachment_id_that_is_not_a_uuid_is_a_validation_error(kind: str) -> None:
    chat = await chat_create()
    socket, _ = await open_chat(chat, "patient")
    client_msg_id = str(uuid.uuid4())

    await socket.send_json_to(
        {
            "type": "message.send",
            "client_msg_id": client_msg_id,
            "kind": kind,
            "attachment_id": "not-a-uuid",
        }
    )

    # (Short timeout: the refusal comes at once, and a crashed consumer is only noticed
    # when the wait ends.)
    error = await socket.receive_json_from(timeout=1)
    assert (error["type"], error["code"], error["client_msg_id"]) == (
        "error",
        "validation_error",
        client_msg_id,
    )
    await still_open(socket)
    assert await stored(chat.id) == []
    await hang_up(socket)


# --- Typing, calls, reading -----------------------------------------------------------------


async def test_typing_reaches_the_other_participant_only() -> None:
    chat = await chat_create()
    patient, _ = await open_chat(chat, "patient")
    doctor, _ = await open_chat(chat, "doctor")

    await patient.send_json_to({"type": "typing"})

    assert await doctor.receive_json_from(timeout=5) == {
        "type": "typing",
        "user": str(chat.account.pk),
    }
    await quiet(patient)
    await still_open(patient)
    assert await stored(chat.id) == []
    await hang_up(patient)
    await hang_up(doctor)


async def test_call_signals_are_relayed_and_the_call_is_recorded_as_system_messages() -> None:
    chat = await chat_create()
    patient, _ = await open_chat(chat, "patient")
    doctor, _ = await open_chat(chat, "doctor")
    patient_id, doctor_id = str(chat.account.pk), str(chat.doctor.user.pk)
    offer = {"type": "offer", "sdp": "v=0 o=- 1 2 IN IP4 127.0.0.1"}

    async def two_frames(socket: Any) -> dict[str, dict[str, Any]]:
        frames = [await socket.receive_json_from(timeout=5) for _ in range(2)]
        return {f["type"]: f for f in frames}

    await patient.send_json_to({"type": "call.signal", "signal": offer})

    at_doctor = await two_frames(doctor)
    assert at_doctor["call.signal"] == {"type": "call.signal", "user": patient_id, "signal": offer}
    started = at_doctor["message.new"]["message"]
    assert (started["seq"], started["kind"], started["text"], started["sender"]) == (
        1,
        "system",
        "call.started",
        patient_id,
    )
    assert await expect(patient, "message.new") == at_doctor["message.new"]
    await quiet(patient)

    # The answer and a second offer are relayed to the patient only, and stored nowhere.
    answer = {"type": "answer", "sdp": "v=0"}
    await doctor.send_json_to({"type": "call.signal", "signal": answer})
    assert await patient.receive_json_from(timeout=5) == {
        "type": "call.signal",
        "user": doctor_id,
        "signal": answer,
    }
    await doctor.send_json_to({"type": "call.signal", "signal": offer})
    assert (await expect(patient, "call.signal"))["signal"] == offer
    await quiet(doctor)
    assert [text for *_, text in await stored(chat.id)] == ["call.started"]

    await doctor.send_json_to({"type": "call.signal", "signal": {"type": "hangup"}})
    at_patient = await two_frames(patient)
    assert at_patient["call.signal"]["signal"] == {"type": "hangup"}
    ended = at_patient["message.new"]["message"]
    assert (ended["seq"], ended["text"], ended["sender"]) == (2, "call.ended", doctor_id)
    assert await expect(doctor, "message.new") == at_patient["message.new"]

    assert [(seq, kind, text) for seq, _, kind, text in await stored(chat.id)] == [
        (1, "system", "call.started"),
        (2, "system", "call.ended"),
    ]
    await hang_up(patient)
    await hang_up(doctor)


@pytest.mark.parametrize("signal", ["offer", ["offer"], None], ids=["string", "array", "missing"])
async def test_a_call_signal_that_is_not_an_object_is_a_malformed_frame(signal: Any) -> None:
    chat = await chat_create()
    patient, _ = await open_chat(chat, "patient")
    doctor, _ = await open_chat(chat, "doctor")
    frame: dict[str, Any] = {"type": "call.signal"}
    if signal is not None:
        frame["signal"] = signal

    await patient.send_json_to(frame)

    assert (await expect(patient, "error"))["code"] == "malformed_frame"
    await quiet(doctor)
    await still_open(patient)
    assert await stored(chat.id) == []
    await hang_up(patient)
    await hang_up(doctor)


async def test_read_sends_a_receipt_and_a_lower_value_later_changes_nothing() -> None:
    chat = await chat_create()
    patient, _ = await open_chat(chat, "patient")
    doctor, _ = await open_chat(chat, "doctor")
    for n in range(3):
        await send_and_echo(patient, f"消息{n}")
        await expect(doctor, "message.new")
    doctor_id = str(chat.doctor.user.pk)

    await doctor.send_json_to({"type": "read", "up_to_seq": 3})

    receipt = {"type": "read.receipt", "user": doctor_id, "up_to_seq": 3}
    assert await patient.receive_json_from(timeout=5) == receipt

    await doctor.send_json_to({"type": "read", "up_to_seq": 1})
    await quiet(patient)
    await doctor.send_json_to({"type": "read", "up_to_seq": -1})
    # The doctor's own copy of the first receipt and the refusal of -1, nothing else.
    at_doctor = [await doctor.receive_json_from(timeout=5) for _ in range(2)]
    assert receipt in at_doctor
    assert [f["code"] for f in at_doctor if f["type"] == "error"] == ["malformed_frame"]
    await quiet(doctor)

    marker = await database_sync_to_async(
        lambda: ReadMarker.objects.get(consultation_id=chat.id, user=chat.doctor.user).up_to_seq
    )()
    assert marker == 3
    await hang_up(patient)
    await hang_up(doctor)


# --- The consultation's state ---------------------------------------------------------------


@pytest.mark.usefixtures("icd10")
async def test_messages_after_the_consultation_ended_are_refused_and_not_stored() -> None:
    chat = await chat_create()
    patient, _ = await open_chat(chat, "patient")
    doctor, _ = await open_chat(chat, "doctor")
    earlier_id = str(uuid.uuid4())
    earlier, _ = await send_and_echo(patient, "最后一个问题", earlier_id)
    await expect(doctor, "message.new")
    ended = await database_sync_to_async(chat.doctor_api.post)(
        f"/api/console/v1/consultations/{chat.id}/end",
        {
            "diagnoses": [{"icd10": "I10", "main": True}],
            "note": {
                "chief_complaint": "高血压复诊",
                "history": "规律服药",
                "findings": "血压130/85",
                "advice": "继续服药",
            },
            "fee": 0,
        },
        format="json",
    )
    assert ended.status_code == 200, ended.content
    for socket in (patient, doctor):
        assert (await expect(socket, "consultation.state"))["status"] == "ended"

    for socket in (patient, doctor):
        client_msg_id = str(uuid.uuid4())
        error = await send_text(socket, "还有一个问题", client_msg_id)
        assert (error["type"], error["code"], error["client_msg_id"]) == (
            "error",
            "consultation_not_open",
            client_msg_id,
        )
    # What was stored before the end is still acked when the app resends it.
    assert await send_text(patient, "最后一个问题", earlier_id) == earlier
    await quiet(patient)
    assert [seq for seq, *_ in await stored(chat.id)] == [1]
    await hang_up(patient)
    await hang_up(doctor)


async def test_the_patient_may_write_while_waiting_and_a_cancel_reaches_the_socket() -> None:
    chat = await chat_create(accept=False)
    patient, sync = await open_chat(chat, "patient")
    assert sync["consultation"]["status"] == "waiting"
    assert (await send_text(patient, "我先描述一下情况"))["seq"] == 1
    await expect(patient, "message.new")

    cancelled = await database_sync_to_async(chat.patient_api.post)(
        f"/api/mobile/v1/consultations/{chat.id}/cancel", {"reason": "不需要了"}, format="json"
    )
    assert cancelled.status_code == 200, cancelled.content

    assert await patient.receive_json_from(timeout=5) == {
        "type": "consultation.state",
        "status": "cancelled",
        "reason": "不需要了",
    }
    error = await send_text(patient, "取消以后")
    assert error["code"] == "consultation_not_open"
    status = await database_sync_to_async(lambda: Consultation.objects.get(pk=chat.id).status)()
    assert status == "cancelled"
    assert (
        await database_sync_to_async(Message.objects.filter(consultation_id=chat.id).count)() == 1
    )
    await hang_up(patient)
