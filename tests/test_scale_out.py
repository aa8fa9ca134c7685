"""Scale-out: two Daphne processes sharing PostgreSQL and the Redis channel layer serve
one consultation, the patient on one and the doctor on the other (issue 5, item 8)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connection
from django.utils.crypto import get_random_string
from websockets.asyncio.client import connect
from websockets.typing import Origin

from backend.identity.services import api_token_create
from backend.organisations.models import Practitioner
from tests.conftest import require_redis, uses_postgres
from tests.consult_helpers import patient_with_record, ready_doctor
from tests.factories import DepartmentFactory
from tests.rx_helpers import RxScene, fresh_otp

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("icd10")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def two_servers():
    redis_url = require_redis()
    if not uses_postgres():
        if os.environ.get("REQUIRE_SERVICES") == "1":
            pytest.fail("REQUIRE_SERVICES=1 but DATABASE_URL is not PostgreSQL")
        pytest.skip("two processes must share a database server: set DATABASE_URL (PostgreSQL)")
    db = connection.settings_dict
    database_url = (
        f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"
    )
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "CHANNEL_LAYER_PREFIX": settings.CHANNEL_LAYERS["default"]["CONFIG"]["prefix"],
        "DEMO_MODE": "1",
    }
    ports = [_free_port(), _free_port()]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "daphne",
                "-b",
                "127.0.0.1",
                "-p",
                str(port),
                "backend.asgi:application",
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=None,
        )
        for port in ports
    ]
    try:
        for port, proc in zip(ports, procs, strict=True):
            deadline = time.monotonic() + 30
            while True:
                assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, "daphne did not start"
                time.sleep(0.2)
        yield [f"127.0.0.1:{port}" for port in ports]
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


def _people():
    department = DepartmentFactory()
    doctor = ready_doctor(department)
    account, profile, _ = patient_with_record()
    return (
        department,
        doctor,
        account,
        profile,
        api_token_create(user=account, name="app").key,
        api_token_create(user=doctor.user, name="console").key,
    )


class Inbox:
    """Reads every frame of one socket in the background, so none is skipped."""

    def __init__(self, ws) -> None:
        self.ws = ws
        self.frames: list[dict] = []
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for raw in self.ws:
            self.frames.append(json.loads(raw))

    async def wait_for(self, predicate, timeout: float = 10) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [f for f in self.frames if predicate(f)]
            if found:
                return found
            await asyncio.sleep(0.02)
        raise AssertionError(f"no matching frame; got {self.frames[-5:]}")

    def of(self, kind: str) -> list[dict]:
        return [f for f in self.frames if f["type"] == kind]


async def test_patient_and_doctor_on_two_processes_chat_and_see_state_changes(two_servers):
    server_a, server_b = two_servers
    department, doctor, _account, profile, patient_key, doctor_key = await sync_to_async(_people)()
    async with httpx.AsyncClient(timeout=10) as http:
        patient_h = {"Authorization": f"Token {patient_key}"}
        doctor_h = {"Authorization": f"Token {doctor_key}"}
        created = await http.post(
            f"http://{server_a}/api/mobile/v1/consultations",
            json={"profile": str(profile.pk), "department": str(department.pk)},
            headers=patient_h,
        )
        assert created.status_code == 201, created.text
        cid = created.json()["id"]
        accepted = await http.post(
            f"http://{server_b}/api/console/v1/consultations/{cid}/accept",
            json={"follow_up_confirmed": True},
            headers=doctor_h,
        )
        assert accepted.status_code == 200, accepted.text
        p_ticket = (
            await http.post(
                f"http://{server_a}/api/mobile/v1/consultations/{cid}/ws-ticket", headers=patient_h
            )
        ).json()["ticket"]
        d_ticket = (
            await http.post(
                f"http://{server_b}/api/console/v1/consultations/{cid}/ws-ticket", headers=doctor_h
            )
        ).json()["ticket"]

        path = f"/ws/consultations/{cid}/?ticket="
        async with (
            connect(
                f"ws://{server_a}{path}{p_ticket}", origin=Origin("http://127.0.0.1")
            ) as patient,
            connect(f"ws://{server_b}{path}{d_ticket}", origin=Origin("http://127.0.0.1")) as doc,
        ):
            p_in, d_in = Inbox(patient), Inbox(doc)
            sync = (await p_in.wait_for(lambda f: f["type"] == "sync"))[0]
            assert sync["consultation"]["status"] == "in_progress"
            await d_in.wait_for(lambda f: f["type"] == "sync")
            sent = {}
            for i in range(20):
                ws, text = (patient, f"患者消息{i}") if i % 2 == 0 else (doc, f"医生回复{i}")
                msg_id = str(uuid.uuid4())
                sent[msg_id] = text
                await ws.send(
                    json.dumps(
                        {
                            "type": "message.send",
                            "client_msg_id": msg_id,
                            "kind": "text",
                            "text": text,
                        }
                    )
                )
            await doc.send(json.dumps({"type": "typing"}))
            typing = await p_in.wait_for(lambda f: f["type"] == "typing")
            assert typing[0]["user"] == str(doctor.user_id)

            for inbox in (p_in, d_in):
                await inbox.wait_for(lambda f, box=inbox: len(box.of("message.new")) >= 20)
            acks = {
                f["client_msg_id"]: f["seq"]
                for f in p_in.of("message.ack") + d_in.of("message.ack")
            }
            assert set(acks) == set(sent)
            expected = sorted((acks[m], text) for m, text in sent.items())
            assert [seq for seq, _ in expected] == list(range(1, 21))
            for inbox in (p_in, d_in):
                got = [(f["message"]["seq"], f["message"]["text"]) for f in inbox.of("message.new")]
                assert got == expected  # same order, no gap, no duplicate, on both servers

            ended = await http.post(
                f"http://{server_b}/api/console/v1/consultations/{cid}/end",
                json={
                    "diagnoses": [{"icd10": "I10", "main": True}],
                    "note": {
                        "chief_complaint": "复诊",
                        "history": "",
                        "findings": "",
                        "advice": "继续服药",
                    },
                    "fee": 0,
                },
                headers=doctor_h,
            )
            assert ended.status_code == 200, ended.text
            state = await p_in.wait_for(lambda f: f["type"] == "consultation.state")
            assert state[0]["status"] == "ended"


def _console_headers(client) -> dict[str, str]:
    """A console session made in this process (test client), for requests to a server."""
    csrf = get_random_string(32)
    session = client.cookies[settings.SESSION_COOKIE_NAME].value
    return {
        "Cookie": f"{settings.SESSION_COOKIE_NAME}={session}; {settings.CSRF_COOKIE_NAME}={csrf}",
        "X-CSRFToken": csrf,
    }


def _prescribing_scene() -> tuple[RxScene, list[str]]:
    scene = RxScene(DepartmentFactory())
    Practitioner.objects.filter(pk=scene.pharmacist.pk).update(on_duty=True)
    drafts = []
    for _ in range(3):
        drafted = scene.draft()
        assert drafted.status_code == 201, drafted.content
        drafts.append(str(drafted.json()["id"]))
    return scene, drafts


async def test_signing_on_one_process_reaches_the_pharmacist_on_another_in_order(two_servers):
    """A request hands its pushes to the server's loop and answers without waiting for
    them; they still reach the other process, in the order the requests made them."""
    server_a, server_b = two_servers
    scene, drafts = await sync_to_async(_prescribing_scene)()
    doctor_h = _console_headers(scene.doctor_session)
    pharmacist_h = _console_headers(scene.pharmacist_session)
    async with httpx.AsyncClient(timeout=10) as http:
        ticket = await http.post(
            f"http://{server_b}/api/console/v1/ws-ticket", headers=pharmacist_h
        )
        assert ticket.status_code == 201, ticket.text
        async with connect(
            f"ws://{server_b}/ws/console/?ticket={ticket.json()['ticket']}",
            origin=Origin("http://127.0.0.1"),
        ) as ws:
            inbox = Inbox(ws)
            await inbox.wait_for(lambda f: f["type"] == "hello")
            for prescription_id in drafts:
                otp = await sync_to_async(fresh_otp)(scene.doctor.user)
                signed = await http.post(
                    f"http://{server_a}/api/console/v1/prescriptions/{prescription_id}/sign",
                    json={"otp": otp},
                    headers=doctor_h,
                )
                assert signed.status_code == 200, signed.text
                assert signed.json()["status"] == "under_review"
            await inbox.wait_for(lambda f: len(inbox.of("prescription.changed")) >= 6)
            got = [
                (f["prescription"]["id"], f["action"], f["prescription"]["status"])
                for f in inbox.of("prescription.changed")
            ]
            assert got == [
                (prescription_id, action, status)
                for prescription_id in drafts
                for action, status in (("sign", "signed"), ("submit", "under_review"))
            ]
