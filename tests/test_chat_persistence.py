"""What the chat's write path must keep under concurrency, through real sockets (CONTRACT
section 3, docs/chat.md): seqs stay gap-free when several sockets write into one
consultation at once, a resent ``client_msg_id`` gets its original seq and spends none,
and a message racing the transition that ends the consultation is either stored before
it or refused — never stored after it. Run on PostgreSQL (one statement per message) and
on SQLite (the locked transaction)."""

from __future__ import annotations

import asyncio
import threading
import uuid
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.db import connection, transaction

from consultations.models import Consultation, ConsultationStatus
from consultations.services import consultation_end
from tests.chat_helpers import (
    TIMEOUT,
    _fast_password_hashing,  # noqa: F401 - autouse fixture
    chat_create,
    expect,
    hang_up,
    open_chat,
    quiet,
    release_connections,
    send_and_echo,
    send_text,
    stored,
    text_frame,
)
from tests.consult_http_helpers import end_body

pytestmark = pytest.mark.django_db(transaction=True)


async def answers(socket: WebsocketCommunicator, count: int) -> list[dict[str, Any]]:
    """The next ``count`` acks or errors on ``socket`` (pushes in between are skipped)."""
    got: list[dict[str, Any]] = []
    while len(got) < count:
        frame = await socket.receive_json_from(timeout=TIMEOUT)
        if frame["type"] in ("message.ack", "error"):
            got.append(frame)
    return got


def _last_seq(consultation_id: str) -> int:
    return Consultation.objects.get(pk=consultation_id).last_seq


last_seq = database_sync_to_async(_last_seq)


async def test_four_sockets_writing_at_once_get_every_seq_exactly_once() -> None:
    chat = await chat_create()
    sockets = [
        (await open_chat(chat, who))[0] for who in ("patient", "patient", "doctor", "doctor")
    ]
    per_socket = 15  # within the burst the rate limit allows
    sent = {id(s): [str(uuid.uuid4()) for _ in range(per_socket)] for s in sockets}
    for k in range(per_socket):  # interleaved, none waiting for its ack
        for socket in sockets:
            await socket.send_json_to(text_frame(f"消息{k}", sent[id(socket)][k]))

    acks = [await answers(socket, per_socket) for socket in sockets]
    for socket, got in zip(sockets, acks, strict=True):
        assert [a["type"] for a in got] == ["message.ack"] * per_socket, got
        assert [a["client_msg_id"] for a in got] == sent[id(socket)]
        # One socket's messages are stored in the order it sent them.
        assert [a["seq"] for a in got] == sorted(a["seq"] for a in got)
    seqs = sorted(a["seq"] for got in acks for a in got)
    total = len(sockets) * per_socket
    assert seqs == list(range(1, total + 1))
    assert [row[0] for row in await stored(chat.id)] == seqs
    assert await last_seq(chat.id) == total
    for socket in sockets:
        await hang_up(socket)
    await release_connections()


async def test_a_resend_gets_its_seq_back_and_the_next_message_takes_the_next_seq() -> None:
    chat = await chat_create()
    patient, _ = await open_chat(chat, "patient")
    doctor, _ = await open_chat(chat, "doctor")
    repeated = str(uuid.uuid4())
    first, _ = await send_and_echo(patient, "第一条", repeated)
    assert first["seq"] == 1
    assert (await expect(doctor, "message.new"))["message"]["seq"] == 1
    for _ in range(3):
        assert await send_text(patient, "第一条", repeated) == first
    # The refused duplicates spent no seq: the next message is 2, and nothing is missing.
    second, _ = await send_and_echo(doctor, "第二条")
    assert second["seq"] == 2
    assert await last_seq(chat.id) == 2
    assert [(seq, text) for seq, _, _, text in await stored(chat.id)] == [
        (1, "第一条"),
        (2, "第二条"),
    ]
    await hang_up(patient)
    await hang_up(doctor)


async def test_the_same_client_msg_id_from_two_sockets_at_once_is_stored_once() -> None:
    """A reconnecting app may resend while its old socket's frame is still in flight."""
    chat = await chat_create()
    old, _ = await open_chat(chat, "patient")
    new, _ = await open_chat(chat, "patient")
    ids = [str(uuid.uuid4()) for _ in range(10)]
    for client_msg_id in ids:
        await old.send_json_to(text_frame("重发", client_msg_id))
        await new.send_json_to(text_frame("重发", client_msg_id))
    from_old, from_new = await answers(old, len(ids)), await answers(new, len(ids))
    assert from_old == from_new
    assert [a["seq"] for a in from_old] == list(range(1, len(ids) + 1))
    assert [row[0] for row in await stored(chat.id)] == list(range(1, len(ids) + 1))
    assert await last_seq(chat.id) == len(ids)
    await hang_up(old)
    await hang_up(new)
    await release_connections()


@pytest.mark.usefixtures("icd10")
async def test_a_message_racing_the_end_waits_for_it_and_is_refused() -> None:
    """The doctor's end has locked the consultation and not committed yet when the
    patient's message arrives: the message waits for the lock and, once the end commits,
    is refused with ``consultation_not_open`` — it is not stored after the end."""
    chat = await chat_create()
    patient, _ = await open_chat(chat, "patient")
    ack, _ = await send_and_echo(patient, "结束前")
    ending, release = threading.Event(), threading.Event()

    def end_held_open() -> None:
        try:
            with transaction.atomic():
                consultation_end(consultation_id=chat.id, user=chat.doctor.user, **end_body(fee=0))
                ending.set()
                release.wait(TIMEOUT)
        finally:
            connection.close()

    end = asyncio.ensure_future(sync_to_async(end_held_open, thread_sensitive=False)())
    try:
        assert await sync_to_async(ending.wait, thread_sensitive=False)(TIMEOUT)
        racing = str(uuid.uuid4())
        await patient.send_json_to(text_frame("结束时", racing))
        await quiet(patient, 0.5)  # waiting for the end's lock: no ack yet
    finally:
        release.set()
        await end
    frames = [await patient.receive_json_from(timeout=TIMEOUT) for _ in range(2)]
    error = next(f for f in frames if f["type"] == "error")
    assert (error["code"], error["client_msg_id"]) == ("consultation_not_open", racing)
    state = next(f for f in frames if f["type"] == "consultation.state")
    assert state["status"] == ConsultationStatus.ENDED
    assert [row[0] for row in await stored(chat.id)] == [ack["seq"]]
    assert await last_seq(chat.id) == ack["seq"]
    await hang_up(patient)
    await release_connections()


@pytest.mark.usefixtures("icd10")
async def test_a_burst_across_the_end_stores_a_gap_free_prefix_and_refuses_the_rest() -> None:
    chat = await chat_create()
    patient, _ = await open_chat(chat, "patient")
    doctor, _ = await open_chat(chat, "doctor")
    ids = [str(uuid.uuid4()) for _ in range(15)]

    async def burst() -> list[dict[str, Any]]:
        for k, client_msg_id in enumerate(ids):
            await patient.send_json_to(text_frame(f"连发{k}", client_msg_id))
            await asyncio.sleep(0.005)
        return await answers(patient, len(ids))

    async def end() -> None:
        await asyncio.sleep(0.02)
        await database_sync_to_async(consultation_end)(
            consultation_id=chat.id, user=chat.doctor.user, **end_body(fee=0)
        )

    got, _ = await asyncio.gather(burst(), end())
    assert [a["client_msg_id"] for a in got] == ids
    kinds = [a["type"] for a in got]
    accepted = kinds.count("message.ack")
    # Acks first, then only refusals: nothing is accepted once the end has committed.
    assert kinds == ["message.ack"] * accepted + ["error"] * (len(ids) - accepted)
    assert {a["code"] for a in got[accepted:]} <= {"consultation_not_open"}
    assert [a["seq"] for a in got[:accepted]] == list(range(1, accepted + 1))
    assert [row[0] for row in await stored(chat.id)] == list(range(1, accepted + 1))
    assert await last_seq(chat.id) == accepted
    await hang_up(patient)
    await hang_up(doctor)
    await release_connections()
