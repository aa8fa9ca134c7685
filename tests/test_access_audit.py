"""DOMAIN rule 12: every access to medical data is recorded, who, when, what, from where.

Staff reads (the doctor's consultation, patient summary, chat and attachments; the console's
and a pharmacy's prescription, bundle and FHIR export; an official's regulator records)
each append an event to the audit chain, through the public HTTP interface; a patient
reading their own records is the data subject and leaves none.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from backend.audit.models import AuditEvent
from backend.audit.services import audit_chain_verify
from tests.consult_http_helpers import CONSOLE, MOBILE, PNG_BYTES, Scene
from tests.factories import DepartmentFactory
from tests.rx_helpers import PHARMACY, RxScene

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("icd10")]

BROWSER = {"HTTP_USER_AGENT": "ConsoleBrowser/1.0", "REMOTE_ADDR": "10.1.2.3"}


def _reads(object_id: Any) -> list[tuple[str, str, dict[str, Any] | None]]:
    """The read events of this object, in order: (action, actor id, after)."""
    return [
        (e.action, e.actor_id, e.after)
        for e in AuditEvent.objects.filter(object_id=str(object_id)).order_by("seq")
        if e.action.endswith(("viewed", "downloaded", "listed"))
    ]


def _body(response: Any) -> bytes:
    """Read a streamed file to its end (the test client then closes the file)."""
    return b"".join(response.streaming_content)


@pytest.fixture
def media(settings: Any, tmp_path: Path) -> Path:
    settings.MEDIA_ROOT = tmp_path
    return tmp_path


def test_the_doctors_reads_of_a_consultation_are_recorded_the_patients_are_not(
    media: Path,
) -> None:
    scene = Scene(DepartmentFactory())
    consultation_id = scene.in_progress()
    upload = SimpleUploadedFile("血压.png", PNG_BYTES, content_type="image/png")
    attachment = scene.patient_api.post(
        f"{MOBILE}/consultations/{consultation_id}/attachments", {"file": upload}
    ).json()["id"]
    doctor = str(scene.doctor.user.pk)

    # The patient reads their own chat and file: nothing is recorded.
    assert scene.patient_api.get(f"{MOBILE}/consultations/{consultation_id}").status_code == 200
    mine = scene.patient_api.get(f"{MOBILE}/consultations/{consultation_id}/messages")
    assert mine.status_code == 200
    own_file = scene.patient_api.get(
        f"{MOBILE}/consultations/{consultation_id}/attachments/{attachment}"
    )
    assert own_file.status_code == 200
    _body(own_file)
    assert _reads(consultation_id) == []

    base = f"{CONSOLE}/consultations/{consultation_id}"
    scene.doctor_api.defaults.update(BROWSER)  # the address and browser of every read
    assert scene.doctor_api.get(base).status_code == 200
    assert scene.doctor_api.get(f"{base}/patient").status_code == 200
    history = scene.doctor_api.get(f"{base}/messages?after_seq=0")
    assert history.status_code == 200
    download = scene.doctor_api.get(f"{base}/attachments/{attachment}")
    assert download.status_code == 200
    _body(download)

    assert _reads(consultation_id) == [
        ("consultation.viewed", doctor, None),
        (
            "consultation.messages_viewed",
            doctor,
            {"after_seq": 0, "messages": len(history.json()["results"])},
        ),
        ("consultation.attachment_downloaded", doctor, {"attachment": attachment}),
    ]
    summary = AuditEvent.objects.get(action="patient_profile.viewed")
    assert (summary.object_id, summary.actor_id, summary.after) == (
        str(scene.profile.pk),
        doctor,
        {"consultation": consultation_id},
    )
    # From where: the address and the browser of each read.
    assert {(e.ip, e.user_agent) for e in AuditEvent.objects.filter(actor_id=doctor)} >= {
        ("10.1.2.3", "ConsoleBrowser/1.0")
    }
    # A refused read leaves no record: a colleague who is not the treating doctor.
    colleague = Scene(scene.department)
    assert colleague.doctor_api.get(base).status_code == 404
    assert not AuditEvent.objects.filter(
        actor_id=str(colleague.doctor.user.pk), action__endswith="viewed"
    ).exists()
    assert audit_chain_verify().ok


def test_every_staff_read_of_a_prescription_is_recorded(department: Any) -> None:
    scene = RxScene(department)
    prescription_id = scene.active()
    patient = scene.patient_api.get(f"{MOBILE}/prescriptions/{prescription_id}")
    assert patient.status_code == 200
    assert _reads(prescription_id) == []

    doctor, pharmacist = str(scene.doctor.user.pk), str(scene.pharmacist.user.pk)
    console = f"{CONSOLE}/prescriptions/{prescription_id}"
    assert scene.doctor_session.get(console).status_code == 200
    assert scene.pharmacist_session.get(console).status_code == 200
    assert scene.pharmacist_session.get(f"{console}/fhir").status_code == 200
    assert scene.doctor_session.get(f"{console}/bundle").status_code == 200

    _, _ = scene.claimed(prescription_id)
    pharmacy = f"{PHARMACY}/prescriptions/{prescription_id}"
    for part in ("", "/bundle", "/fhir"):
        assert scene.pharmacy_api.get(f"{pharmacy}{part}").status_code == 200
    staff = str(scene.staff.user.pk)
    held_by = str(scene.pharmacy.pk)

    assert _reads(prescription_id) == [
        ("prescription.viewed", doctor, None),
        ("prescription.viewed", pharmacist, None),
        ("prescription.viewed", pharmacist, {"part": "fhir"}),
        ("prescription.viewed", doctor, {"part": "bundle"}),
        ("prescription.viewed", staff, {"pharmacy": held_by, "part": "detail"}),
        ("prescription.viewed", staff, {"pharmacy": held_by, "part": "bundle"}),
        ("prescription.viewed", staff, {"pharmacy": held_by, "part": "fhir"}),
    ]
    assert audit_chain_verify().ok


def test_each_page_of_a_staff_list_with_medical_data_is_recorded(department: Any) -> None:
    """The queue's rows carry complaints and diagnoses, the prescription lists patients and
    drugs: each page read names its objects and filters; an empty page too."""
    scene = RxScene(department)
    signed = scene.signed()
    doctor, pharmacist = str(scene.doctor.user.pk), str(scene.pharmacist.user.pk)

    assert scene.doctor_session.get(f"{CONSOLE}/consultations").status_code == 200
    mine = scene.doctor_session.get(f"{CONSOLE}/prescriptions?status=under_review")
    queue = scene.pharmacist_session.get(f"{CONSOLE}/reviews")
    assert [p["id"] for p in mine.json()["results"]] == [signed]
    assert [p["id"] for p in queue.json()["results"]] == [signed]
    assert scene.doctor_session.get(f"{CONSOLE}/prescriptions?status=expired").status_code == 200

    listed = [
        (e.action, e.actor_id, e.after)
        for e in AuditEvent.objects.filter(action__endswith=".listed").order_by("seq")
    ]
    assert listed == [
        (
            "consultation.listed",
            doctor,
            {"ids": [scene.consultation_id], "filters": {}},
        ),
        ("prescription.listed", doctor, {"ids": [signed], "filters": {"status": "under_review"}}),
        ("prescription.listed", pharmacist, {"ids": [signed], "filters": {}}),
        ("prescription.listed", doctor, {"ids": [], "filters": {"status": "expired"}}),
    ]
    # The patient's own list is theirs: not recorded.
    assert scene.patient_api.get(f"{MOBILE}/prescriptions").status_code == 200
    assert AuditEvent.objects.filter(action__endswith=".listed").count() == len(listed)
