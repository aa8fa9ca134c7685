"""The chat's delivery guarantee (CONTRACT section 3): a client that reconnects with the
highest ``seq`` it has seen receives every later message exactly once and in order, and
re-sending what it has not seen acked stores nothing twice.

Clients here behave as the mobile app and the console do: they keep the highest seq they
hold, re-send every ``client_msg_id`` they have not seen acked after reconnecting, and
check each frame they read against what they already hold."""

from __future__ import annotations

import asyncio
import random
import threading
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.db import connection, transaction

from consultations import messaging
from consultations.models import Consultation, Message
from tests.chat_helpers import (
    TIMEOUT,
    Chat,
    _fast_password_hashing,  # noqa: F401 - autouse fixture
    chat_create,
    expect,
    hang_up,
    open_chat,
    quiet,
    release_connections,
    send_and_echo,
    stored,
    text_frame,
)

pytestmark = pytest.mark.django_db(transaction=True)

SEED = 20250611
CONSULTATIONS = 4
MESSAGES_PER_CLIENT = 128  # 4 consultations x 2 participants x 128 = 1,024 messages
#: At each step a client may hang up before sending (frames on their way to it are lost),
#: lose the frame it was about to send together with the connection, or hang up after
#: sending without waiting for the ack.
P_HANG_UP = 0.025
P_FRAME_LOST = 0.015
P_HANG_UP_IN_FLIGHT = 0.03


@dataclass
class Client:
    """One participant's app: what it has sent, what it has seen acked, what it holds."""

    chat: Chat
    who: str
    rng: random.Random
    outbox: list[tuple[str, str]]
    sent: int = 0  # outbox[:sent] were handed to a connection (or lost with one)
    acked: dict[str, int] = field(default_factory=dict)
    held: list[dict[str, Any]] = field(default_factory=list)
    socket: WebsocketCommunicator | None = None
    connections: int = 0
    resends: int = 0
    rate_limited: int = 0

    @property
    def highest(self) -> int:
        return self.held[-1]["seq"] if self.held else 0

    def take(self, message: dict[str, Any]) -> None:
        """Exactly once and in order: every message is the one after the last held."""
        assert message["seq"] == self.highest + 1, (
            f"{self.who} of {self.chat.id} holds up to {self.highest} and got seq {message['seq']}"
        )
        self.held.append(message)

    async def connect(self) -> None:
        self.socket, sync = await open_chat(self.chat, self.who, after_seq=self.highest)
        self.connections += 1
        for message in sync["messages"]:
            self.take(message)

    async def hang_up(self) -> None:
        assert self.socket is not None
        await hang_up(self.socket)  # whatever it had not read yet is lost
        self.socket = None

    def unacked(self) -> list[tuple[str, str]]:
        return [item for item in self.outbox[: self.sent] if item[0] not in self.acked]

    async def send(self, client_msg_id: str, text: str) -> None:
        """Send one message and read until its ack, or hang up on the way."""
        assert self.socket is not None
        while True:
            await self.socket.send_json_to(text_frame(text, client_msg_id))
            if self.rng.random() < P_HANG_UP_IN_FLIGHT:
                await self.hang_up()
                return
            while True:
                frame = await self.socket.receive_json_from(timeout=TIMEOUT)
                if frame["type"] == "message.new":
                    self.take(frame["message"])
                    continue
                break
            if frame["type"] == "error" and frame["code"] == "rate_limited":
                # Dropped visibly: wait for the bucket to refill and send it again.
                self.rate_limited += 1
                await asyncio.sleep(0.06)
                continue
            assert frame["type"] == "message.ack", frame
            assert frame["client_msg_id"] == client_msg_id, frame
            self.acked[client_msg_id] = frame["seq"]
            return

    async def run(self) -> None:
        try:
            await self.converse()
        finally:
            if self.socket is not None:  # also when a sibling failed and this was cancelled
                await self.hang_up()

    async def converse(self) -> None:
        while True:
            if self.socket is None:
                await self.connect()
            pending = self.unacked()
            if pending:
                client_msg_id, text = pending[0]
                self.resends += 1
            elif self.sent < len(self.outbox):
                client_msg_id, text = self.outbox[self.sent]
                roll = self.rng.random()
                if roll < P_HANG_UP:
                    await self.hang_up()
                    continue
                self.sent += 1
                if roll < P_HANG_UP + P_FRAME_LOST:
                    await self.hang_up()  # the frame never left the phone
                    continue
            else:
                break
            await self.send(client_msg_id, text)


async def test_a_thousand_messages_through_random_reconnects_arrive_exactly_once_in_order() -> None:
    chats = [await chat_create() for _ in range(CONSULTATIONS)]
    clients: list[Client] = []
    for c, chat in enumerate(chats):
        for w, who in enumerate(("patient", "doctor")):
            outbox = []
            for n in range(MESSAGES_PER_CLIENT):
                client_msg_id = str(uuid.uuid4())
                outbox.append((client_msg_id, f"{who} {n} {client_msg_id}"))
            rng = random.Random(SEED * 100 + c * 10 + w)
            clients.append(Client(chat=chat, who=who, rng=rng, outbox=outbox))

    async with asyncio.TaskGroup() as group:  # the first failure cancels the others
        for client in clients:
            group.create_task(client.run())
    # Everyone comes back once more to collect what was sent after they left.
    for client in clients:
        await client.connect()
        await client.hang_up()

    total = 0
    for chat in chats:
        pair = [client for client in clients if client.chat is chat]
        sent = {cid: text for client in pair for cid, text in client.outbox}
        n = len(sent)
        assert n == 2 * MESSAGES_PER_CLIENT
        total += n
        for client in pair:
            assert [m["seq"] for m in client.held] == list(range(1, n + 1))
            assert len(client.acked) == MESSAGES_PER_CLIENT
        assert pair[0].held == pair[1].held  # identical, field by field
        held_texts = Counter(m["text"] for m in pair[0].held)
        assert held_texts == Counter(sent.values())  # each sent message exactly once
        by_text = {m["text"]: m for m in pair[0].held}
        for client in pair:
            user_id = str(chat.account.pk if client.who == "patient" else chat.doctor.user.pk)
            for cid, text in client.outbox:
                assert by_text[text]["seq"] == client.acked[cid]
                assert by_text[text]["sender"] == user_id

        def database(chat: Chat = chat) -> tuple[int, list[tuple[int, str, str]]]:
            last_seq = Consultation.objects.get(pk=chat.id).last_seq
            rows = Message.objects.filter(consultation_id=chat.id).order_by("seq")
            return last_seq, [(m.seq, str(m.client_msg_id), m.text) for m in rows]

        last_seq, rows = await database_sync_to_async(database)()
        assert last_seq == n
        assert [seq for seq, _, _ in rows] == list(range(1, n + 1))
        assert {cid: (seq, text) for seq, cid, text in rows} == {
            cid: (by_text[text]["seq"], text) for cid, text in sent.items()
        }
    assert total >= 1000

    # The run did exercise what it claims (the counts follow from the seed).
    assert sum(client.connections for client in clients) >= 4 * len(clients)
    assert sum(client.resends for client in clients) >= len(clients)
    await release_connections()


# --- A push that goes missing or comes late ------------------------------------------------


async def test_messages_whose_pushes_were_lost_come_from_the_store_on_reconnect() -> None:
    chat = await chat_create()
    patient, _ = await open_chat(chat, "patient")
    doctor, _ = await open_chat(chat, "doctor")
    for n in range(1, 6):
        await send_and_echo(patient, f"第{n}条")
    assert (await expect(doctor, "message.new"))["message"]["seq"] == 1
    # The doctor's connection drops with pushes 2..5 unread (lost on the way)...
    await hang_up(doctor)
    # ...and more is written while they are away.
    for n in range(6, 9):
        await send_and_echo(patient, f"第{n}条")

    doctor, sync = await open_chat(chat, "doctor", after_seq=1)

    assert [m["seq"] for m in sync["messages"]] == list(range(2, 9))
    assert [m["text"] for m in sync["messages"]] == [f"第{n}条" for n in range(2, 9)]
    await send_and_echo(patient, "第9条")
    assert (await expect(doctor, "message.new"))["message"]["seq"] == 9
    await quiet(doctor)
    await hang_up(patient)
    await hang_up(doctor)


async def test_a_push_that_overtakes_an_earlier_one_is_delivered_in_order_once() -> None:
    """Message 1 is committed but its push is held up; message 2's push arrives first. The
    socket must fill the gap from the store (1, then 2) and drop the late push of 1."""
    chat = await chat_create()
    doctor, _ = await open_chat(chat, "doctor")
    patient = chat.account
    committed = threading.Event()
    release = threading.Event()

    def hold_up_the_push() -> None:
        committed.set()
        release.wait(TIMEOUT)

    def first_message_with_a_slow_push() -> int:
        try:
            with transaction.atomic():
                # Runs after the commit and before the message's own push (on_commit
                # callbacks run in the order they were registered).
                transaction.on_commit(hold_up_the_push)
                sent = messaging.message_send(
                    consultation_id=chat.id,
                    sender=patient,
                    client_msg_id=uuid.uuid4(),
                    kind="text",
                    text="第一条",
                )
            return sent.message.seq
        finally:
            connection.close()

    def second_message() -> int:
        sent = messaging.message_send(
            consultation_id=chat.id,
            sender=patient,
            client_msg_id=uuid.uuid4(),
            kind="text",
            text="第二条",
        )
        return sent.message.seq

    first = asyncio.ensure_future(
        sync_to_async(first_message_with_a_slow_push, thread_sensitive=False)()
    )
    try:
        assert await sync_to_async(committed.wait, thread_sensitive=False)(TIMEOUT)
        assert await database_sync_to_async(second_message)() == 2

        # Only the push of 2 has been sent; the socket delivers 1 and 2, in order.
        one = await expect(doctor, "message.new")
        two = await expect(doctor, "message.new")
        assert [one["message"]["seq"], two["message"]["seq"]] == [1, 2]
        assert [one["message"]["text"], two["message"]["text"]] == ["第一条", "第二条"]
    finally:
        release.set()
        assert await first == 1
    # The late push of 1 is dropped.
    await quiet(doctor, 0.5)
    assert [seq for seq, *_ in await stored(chat.id)] == [1, 2]
    await hang_up(doctor)
    await release_connections()


async def test_a_message_is_stored_while_another_consultation_is_being_written() -> None:
    """Writes of different consultations do not fail each other: while one consultation's
    message is being written (its transaction still open), a message in another is stored
    and acked (on PostgreSQL at once, on SQLite once the first commits)."""
    busy, quiet_chat = await chat_create(), await chat_create()
    socket, _ = await open_chat(quiet_chat, "patient")
    writing = threading.Event()
    release = threading.Event()

    def a_long_write() -> int:
        try:
            with transaction.atomic():
                sent = messaging.message_send(
                    consultation_id=busy.id,
                    sender=busy.account,
                    client_msg_id=uuid.uuid4(),
                    kind="text",
                    text="长事务",
                )
                writing.set()
                release.wait(TIMEOUT)
            return sent.message.seq
        finally:
            connection.close()

    long_write = asyncio.ensure_future(sync_to_async(a_long_write, thread_sensitive=False)())
    try:
        assert await sync_to_async(writing.wait, thread_sensitive=False)(TIMEOUT)
        await socket.send_json_to(text_frame("同时发送"))
        await asyncio.sleep(0.3)
        release.set()
        ack = await socket.receive_json_from(timeout=TIMEOUT)
        assert (ack["type"], ack["seq"]) == ("message.ack", 1), ack
    finally:
        release.set()
        assert await long_write == 1
    await hang_up(socket)
    assert [seq for seq, *_ in await stored(quiet_chat.id)] == [1]
    assert [seq for seq, *_ in await stored(busy.id)] == [1]
    await release_connections()
