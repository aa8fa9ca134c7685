"""The console sees prescriptions move live: the on-duty pharmacist's review queue gets
the signed prescription, the doctor sees the approval, and the staff of the pharmacy
holding the claim are told when the doctor cancels it."""

from __future__ import annotations

import pytest
from asgiref.sync import sync_to_async

from backend.organisations.models import Practitioner
from tests.consult_helpers import close_socket, open_socket
from tests.factories import DepartmentFactory
from tests.rx_helpers import RxScene, client_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("icd10")]


async def _socket(api):
    ticket = (await sync_to_async(api.post)("/api/console/v1/ws-ticket")).json()
    socket, hello = await open_socket(f"/ws/console/?ticket={ticket['ticket']}")
    assert hello["type"] == "hello"
    return socket


async def _next_prescription_frame(socket):
    while True:
        frame = await socket.receive_json_from(timeout=5)
        if frame["type"] == "prescription.changed":
            return frame


async def test_review_queue_and_cancel_notices_arrive_live():
    department = await sync_to_async(DepartmentFactory)()
    scene = await sync_to_async(RxScene)(department)
    await sync_to_async(Practitioner.objects.filter(pk=scene.pharmacist.pk).update)(on_duty=True)
    off_duty = await sync_to_async(RxScene)(department)  # another pharmacist, not on duty
    pharmacist = await _socket(await sync_to_async(client_for)(scene.pharmacist.user))
    quiet = await _socket(await sync_to_async(client_for)(off_duty.pharmacist.user))
    doctor = await _socket(await sync_to_async(client_for)(scene.doctor.user))
    staff = await _socket(scene.pharmacy_api)
    try:
        prescription_id = await sync_to_async(scene.signed)()
        seen = []
        for _ in range(2):  # sign, then submit to the review queue
            frame = await _next_prescription_frame(pharmacist)
            seen.append((frame["action"], frame["prescription"]["status"]))
        assert seen == [("sign", "signed"), ("submit", "under_review")]
        assert frame["prescription"]["id"] == prescription_id

        approved = await sync_to_async(scene.approve)(prescription_id)
        assert approved.status_code == 200, approved.content
        actions = []
        while "approve" not in actions:
            actions.append((await _next_prescription_frame(doctor))["action"])
        assert actions[-1] == "approve"

        _, _secret = await sync_to_async(scene.claimed)(prescription_id)
        assert (await _next_prescription_frame(staff))["action"] == "claim"
        cancel = await sync_to_async(scene.doctor_session.post)(
            f"/api/console/v1/prescriptions/{prescription_id}/cancel",
            {"reason": "剂量需调整"},
            format="json",
        )
        assert cancel.status_code == 202, cancel.content
        notice = await _next_prescription_frame(staff)
        assert notice["action"] == "cancel_requested"
        assert notice["prescription"]["cancel_requested"] is True
        assert notice["prescription"]["status"] == "claimed"

        # The off-duty pharmacist of the same hospital got none of it.
        assert await quiet.receive_nothing(timeout=0.3)
    finally:
        for socket in (pharmacist, quiet, doctor, staff):
            await close_socket(socket)
