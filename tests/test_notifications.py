"""Offline notification: a participant without an open socket gets a push on their
devices (through a real local HTTP peer standing in for the push gateway); one who is
connected does not. Pushes carry no health data."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from asgiref.sync import sync_to_async

from backend.notifications.backends import PushDeliveryError, push_backend
from backend.notifications.models import Device
from backend.notifications.services import device_register, push_deliver
from consultations.services import consultation_accept
from tests.consult_helpers import (
    client_for,
    close_socket,
    open_socket,
    patient_with_record,
    ready_doctor,
    request_consultation,
)
from tests.consult_http_helpers import require_postgres
from tests.factories import DepartmentFactory, PatientFactory
from tests.worker_helpers import WorkerProcess


class _Gateway(BaseHTTPRequestHandler):
    received: list[dict] = []
    status = 200

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).received.append({"auth": self.headers.get("Authorization"), **body})
        self.send_response(type(self).status)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def gateway(settings):
    _Gateway.received = []
    _Gateway.status = 200
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Gateway)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    settings.PUSH_BACKEND = "backend.notifications.backends.HttpPushBackend"
    settings.PUSH_HTTP_URL = f"http://127.0.0.1:{server.server_address[1]}/push"
    settings.PUSH_HTTP_TOKEN = "gw-token"
    push_backend.cache_clear()
    yield _Gateway
    push_backend.cache_clear()
    server.shutdown()
    server.server_close()


@pytest.fixture
def push_worker(gateway, settings, tmp_path):
    """A real Celery worker, on the broker this process queues to, that sends pushes to
    the gateway above."""
    require_postgres("a worker on the test database")
    worker = WorkerProcess(
        tmp_path / "worker.log",
        env={
            "PUSH_BACKEND": settings.PUSH_BACKEND,
            "PUSH_HTTP_URL": settings.PUSH_HTTP_URL,
            "PUSH_HTTP_TOKEN": settings.PUSH_HTTP_TOKEN,
        },
    )
    try:
        worker.wait_ready()
        yield worker
    finally:
        worker.stop()


async def _pushes(gateway: type[_Gateway], count: int, worker: WorkerProcess) -> list[dict]:
    """The gateway's requests once ``count`` have come (the worker sends them)."""
    for _ in range(600):
        if len(gateway.received) >= count:
            return list(gateway.received)
        await asyncio.sleep(0.05)
    raise AssertionError(f"{len(gateway.received)} pushes of {count}\n{worker.tail()}")


@pytest.mark.django_db
def test_devices_are_registered_listed_and_removed_over_http():
    patient = PatientFactory()
    api = client_for(patient)
    created = api.post(
        "/api/mobile/v1/devices", {"platform": "android", "token": "tok-1"}, format="json"
    )
    assert created.status_code == 201
    assert "token" not in created.json()
    listed = api.get("/api/mobile/v1/devices").json()["results"]
    assert [d["id"] for d in listed] == [created.json()["id"]]
    assert api.delete(f"/api/mobile/v1/devices/{created.json()['id']}").status_code == 204
    assert not Device.objects.exists()
    bad = api.post("/api/mobile/v1/devices", {"platform": "symbian", "token": "x"}, format="json")
    assert bad.status_code == 400


@pytest.mark.django_db
def test_a_token_moves_to_the_last_account_that_registers_it():
    first, second = PatientFactory(), PatientFactory()
    device_register(user=first, platform="ios", token="shared")
    device_register(user=second, platform="ios", token="shared")
    assert list(Device.objects.values_list("user_id", flat=True)) == [second.pk]


@pytest.mark.django_db
def test_the_gateway_gets_the_message_and_a_dead_token_is_forgotten(gateway):
    patient = PatientFactory()
    device_register(user=patient, platform="android", token="live")
    device_register(user=patient, platform="ios", token="dead")
    reached = push_deliver(user_id=str(patient.pk), title="t", body="b", data={"k": 1})
    assert reached == 2
    assert sorted(r["token"] for r in gateway.received) == ["dead", "live"]
    assert gateway.received[0]["auth"] == "Bearer gw-token"

    gateway.received.clear()
    gateway.status = 410
    assert push_deliver(user_id=str(patient.pk), title="t", body="b", data={}) == 0
    assert not Device.objects.exists()


@pytest.mark.django_db
def test_a_gateway_failure_is_raised_for_the_task_to_retry(gateway):
    patient = PatientFactory()
    device_register(user=patient, platform="android", token="live")
    gateway.status = 503
    with pytest.raises(PushDeliveryError, match="503"):
        push_deliver(user_id=str(patient.pk), title="t", body="b", data={})
    assert Device.objects.count() == 1


def _consultation_in_progress():
    department = DepartmentFactory()
    doctor = ready_doctor(department)
    account, profile, _ = patient_with_record()
    device_register(user=account, platform="android", token="patient-phone")
    response = request_consultation(client_for(account), profile, department)
    consultation_id = response.json()["id"]
    consultation_accept(consultation_id=consultation_id, user=doctor.user, follow_up_confirmed=True)
    return account, doctor, consultation_id


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("icd10")
async def test_only_a_participant_who_is_away_gets_a_push(gateway, push_worker):
    account, doctor, consultation_id = await sync_to_async(_consultation_in_progress)()
    # The patient was away when the doctor accepted: they were told, without health data.
    assert [(r["token"], r["data"]) for r in await _pushes(gateway, 1, push_worker)] == [
        ("patient-phone", {"consultation": consultation_id, "status": "in_progress"})
    ]
    gateway.received.clear()
    doctor_api = await sync_to_async(client_for)(doctor.user)
    patient_api = await sync_to_async(client_for)(account)

    async def socket(api, prefix):
        ticket = (
            await sync_to_async(api.post)(
                f"/api/{prefix}/v1/consultations/{consultation_id}/ws-ticket"
            )
        ).json()
        return await open_socket(f"/ws/consultations/{consultation_id}/?ticket={ticket['ticket']}")

    doc, _ = await socket(doctor_api, "console")
    patient, _ = await socket(patient_api, "mobile")

    await doc.send_json_to(
        {
            "type": "message.send",
            "client_msg_id": str(uuid.uuid4()),
            "kind": "text",
            "text": "血压药继续吃",
        }
    )
    assert (await doc.receive_json_from(timeout=5))["type"] == "message.ack"
    assert (await patient.receive_json_from(timeout=5))["type"] == "message.new"
    assert gateway.received == []  # the patient is in the chat: no push

    await close_socket(patient)
    await doc.receive_json_from(timeout=5)  # the message.new echo of the first message
    await doc.send_json_to(
        {
            "type": "message.send",
            "client_msg_id": str(uuid.uuid4()),
            "kind": "text",
            "text": "记得监测血压",
        }
    )
    ack = await doc.receive_json_from(timeout=5)
    assert ack["type"] == "message.ack"
    await close_socket(doc)

    # One worker takes the queue in order: had the first message (the patient in the
    # chat) queued a push, it would have come before this one.
    received = await _pushes(gateway, 1, push_worker)
    assert len(received) == 1
    push = received[0]
    assert push["token"] == "patient-phone"
    assert push["data"] == {"consultation": consultation_id, "seq": ack["seq"]}
    assert "血压" not in json.dumps(push, ensure_ascii=False)  # no health data in pushes
