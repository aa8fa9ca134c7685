"""The whole story (issue 5): a patient with a prior diagnosis requests a follow-up, the
on-duty doctor's console sees it live, accepts, both chat, the doctor ends it with a
diagnosis, the patient's socket gets the state change and further messages are refused."""

from __future__ import annotations

import uuid
from urllib.parse import urlsplit

import pytest
from asgiref.sync import sync_to_async

from backend.audit.services import audit_chain_verify
from consultations.models import Consultation, ConsultationEvent, Message
from tests.consult_helpers import (
    client_for,
    close_socket,
    open_socket,
    patient_with_record,
    ready_doctor,
    request_consultation,
)
from tests.factories import DepartmentFactory

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("icd10")]


def _setup():
    department = DepartmentFactory()
    doctor = ready_doctor(department)
    account, profile, record = patient_with_record()
    return department, doctor, account, profile, record


async def test_a_follow_up_from_request_to_end():
    department, doctor, account, profile, _ = await sync_to_async(_setup)()
    patient_api = await sync_to_async(client_for)(account)
    doctor_api = await sync_to_async(client_for)(doctor.user)

    # The doctor's console socket is open before the patient asks.
    ticket = (await sync_to_async(doctor_api.post)("/api/console/v1/ws-ticket")).json()
    console, hello = await open_socket(f"/ws/console/?ticket={ticket['ticket']}")
    assert hello["type"] == "hello"

    response = await sync_to_async(request_consultation)(
        patient_api, profile, department, complaint="血压稳定，需要续方"
    )
    assert response.status_code == 201, response.content
    consultation_id = response.json()["id"]
    assert response.json()["status"] == "waiting"

    pushed = await console.receive_json_from(timeout=5)
    assert pushed["type"] == "queue.changed"
    assert pushed["action"] == "enqueue"
    assert pushed["consultation"]["id"] == consultation_id
    assert pushed["consultation"]["status"] == "waiting"

    # The patient opens the chat while waiting.
    pticket = (
        await sync_to_async(patient_api.post)(
            f"/api/mobile/v1/consultations/{consultation_id}/ws-ticket"
        )
    ).json()
    url = urlsplit(pticket["url"])
    assert url.path == f"/ws/consultations/{consultation_id}/"
    patient, sync = await open_socket(f"{url.path}?{url.query}")
    assert sync["type"] == "sync"
    assert sync["consultation"]["status"] == "waiting"
    assert sync["messages"] == []

    accepted = await sync_to_async(doctor_api.post)(
        f"/api/console/v1/consultations/{consultation_id}/accept",
        {"follow_up_confirmed": True},
        format="json",
    )
    assert accepted.status_code == 200, accepted.content
    assert accepted.json()["status"] == "in_progress"
    assert await patient.receive_json_from(timeout=5) == {
        "type": "consultation.state",
        "status": "in_progress",
        "reason": "",
    }

    dticket = (
        await sync_to_async(doctor_api.post)(
            f"/api/console/v1/consultations/{consultation_id}/ws-ticket"
        )
    ).json()
    doc, dsync = await open_socket(
        f"/ws/consultations/{consultation_id}/?ticket={dticket['ticket']}"
    )
    assert dsync["consultation"]["status"] == "in_progress"

    first_id = str(uuid.uuid4())
    await patient.send_json_to(
        {
            "type": "message.send",
            "client_msg_id": first_id,
            "kind": "text",
            "text": "医生您好，最近血压130/85",
        }
    )
    ack = await patient.receive_json_from(timeout=5)
    assert ack == {"type": "message.ack", "client_msg_id": first_id, "seq": 1}
    new = await patient.receive_json_from(timeout=5)
    assert new["type"] == "message.new"
    assert new["message"]["seq"] == 1
    assert new["message"]["text"] == "医生您好，最近血压130/85"
    at_doctor = await doc.receive_json_from(timeout=5)
    assert at_doctor == new

    reply_id = str(uuid.uuid4())
    await doc.send_json_to(
        {
            "type": "message.send",
            "client_msg_id": reply_id,
            "kind": "text",
            "text": "控制得不错，继续原方案",
        }
    )
    assert (await doc.receive_json_from(timeout=5))["seq"] == 2
    assert (await patient.receive_json_from(timeout=5))["message"]["seq"] == 2

    ended = await sync_to_async(doctor_api.post)(
        f"/api/console/v1/consultations/{consultation_id}/end",
        {
            "diagnoses": [{"icd10": "I10", "main": True}],
            "note": {
                "chief_complaint": "高血压复诊",
                "history": "规律服药",
                "findings": "血压130/85",
                "advice": "继续服药，监测血压",
            },
            "fee": 2000,
        },
        format="json",
    )
    assert ended.status_code == 200, ended.content
    assert ended.json()["diagnoses"] == [{"icd10": "I10", "name": "原发性高血压", "main": True}]
    state = await patient.receive_json_from(timeout=5)
    assert state == {"type": "consultation.state", "status": "ended", "reason": ""}

    late_id = str(uuid.uuid4())
    await patient.send_json_to(
        {"type": "message.send", "client_msg_id": late_id, "kind": "text", "text": "还有一个问题"}
    )
    refused = await patient.receive_json_from(timeout=5)
    assert refused["type"] == "error"
    assert refused["code"] == "consultation_not_open"
    assert refused["client_msg_id"] == late_id

    for socket in (patient, doc, console):
        await close_socket(socket)

    def stored():
        c = Consultation.objects.get(pk=consultation_id)
        return (
            c.status,
            c.fee,
            list(Message.objects.filter(consultation=c).values_list("seq", flat=True)),
            list(ConsultationEvent.objects.filter(consultation=c).values_list("action", flat=True)),
            audit_chain_verify().ok,
        )

    status, fee, seqs, actions, chain_ok = await sync_to_async(stored)()
    assert (status, fee, seqs) == ("ended", 2000, [1, 2])
    assert actions == ["request", "enqueue", "accept", "end"]
    assert chain_ok
