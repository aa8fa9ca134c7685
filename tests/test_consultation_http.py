"""The HTTP side around consultations: the directory a patient chooses from, the chat
history (``messages?after_seq=``) and chat attachments, each only for the consultation's
participants."""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone

from backend.identity.models import Role
from backend.organisations.models import FilingStatus, PractitionerKind
from consultations.messaging import message_send
from consultations.models import Attachment, Message
from tests.consult_helpers import client_for, ready_doctor
from tests.consult_http_helpers import (
    CONSOLE,
    MOBILE,
    PDF_BYTES,
    PNG_BYTES,
    Scene,
    another_patient,
    assert_problem,
    audit_count,
    end_body,
    fast_password_hashing,  # noqa: F401 - fixture
)
from tests.factories import (
    DepartmentFactory,
    HospitalFactory,
    PatientFactory,
    PractitionerFactory,
)

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fast_password_hashing")]


# --- Directory --------------------------------------------------------------------------------


def _ids(response) -> set[str]:
    assert response.status_code == 200, response.content
    return {item["id"] for item in response.json()["results"]}


def test_hospitals_lists_those_with_a_valid_practice_licence():
    today = timezone.localdate()
    valid = HospitalFactory()
    last_day = HospitalFactory(practice_licence_valid_until=today)
    HospitalFactory(practice_licence_valid_until=today - dt.timedelta(days=1))
    api = client_for(PatientFactory())

    response = api.get(f"{MOBILE}/hospitals")

    assert _ids(response) == {str(valid.pk), str(last_day.pk)}
    listed = {h["id"]: h for h in response.json()["results"]}
    assert listed[str(valid.pk)]["name"] == valid.name
    assert listed[str(valid.pk)]["province"] == "浙江省"
    assert response.json()["next"] is None


def test_departments_are_filtered_by_hospital_and_only_active_ones_are_shown():
    hospital = HospitalFactory()
    cardiology = DepartmentFactory(hospital=hospital)
    endocrinology = DepartmentFactory(hospital=hospital)
    DepartmentFactory(hospital=hospital, is_active=False)
    elsewhere = DepartmentFactory()
    api = client_for(PatientFactory())

    assert _ids(api.get(f"{MOBILE}/departments?hospital={hospital.pk}")) == {
        str(cardiology.pk),
        str(endocrinology.pk),
    }
    assert _ids(api.get(f"{MOBILE}/departments")) == {
        str(cardiology.pk),
        str(endocrinology.pk),
        str(elsewhere.pk),
    }


def test_doctors_of_a_department_and_only_the_available_ones():
    department = DepartmentFactory()
    on_duty = ready_doctor(department)
    off_duty = ready_doctor(department, on_duty=False)
    ready_doctor(department, filing_status=FilingStatus.SUSPENDED)  # not listed at all
    PractitionerFactory(
        hospital=department.hospital,
        department=department,
        kind=PractitionerKind.PHARMACIST,
        user__role=Role.PHARMACIST,
        on_duty=True,
    )
    neighbour = ready_doctor(DepartmentFactory(hospital=department.hospital))
    ready_doctor(DepartmentFactory())  # another hospital
    api = client_for(PatientFactory())

    everyone = api.get(f"{MOBILE}/doctors?department={department.pk}")
    assert _ids(everyone) == {str(on_duty.pk), str(off_duty.pk)}
    availability = {d["id"]: d["available"] for d in everyone.json()["results"]}
    assert availability == {str(on_duty.pk): True, str(off_duty.pk): False}

    for flag in ("true", "1"):
        available = api.get(f"{MOBILE}/doctors?department={department.pk}&available={flag}")
        assert _ids(available) == {str(on_duty.pk)}
    in_hospital = f"{MOBILE}/doctors?hospital={department.hospital_id}"
    assert _ids(api.get(in_hospital)) == {str(on_duty.pk), str(off_duty.pk), str(neighbour.pk)}
    assert _ids(api.get(in_hospital + "&available=true")) == {str(on_duty.pk), str(neighbour.pk)}


@pytest.mark.parametrize(
    "path",
    [
        "departments?hospital=not-a-uuid",
        "doctors?department=123",
        "doctors?hospital=00000000-0000-0000-0000-00000000000g",
    ],
)
def test_a_malformed_uuid_query_parameter_is_a_validation_error(path):
    api = client_for(PatientFactory())
    response = api.get(f"{MOBILE}/{path}")
    body = assert_problem(response, 400, "validation_error")
    name = path.split("?")[1].split("=")[0]
    assert list(body["errors"]) == [name]


@pytest.mark.parametrize("path", ["hospitals", "departments", "doctors"])
def test_the_directory_needs_an_account(api, path):
    assert_problem(api.get(f"{MOBILE}/{path}"), 401, "not_authenticated")


# --- Message history ----------------------------------------------------------------------------


def _say(consultation_id: str, sender, text: str, **fields) -> Message:
    sent = message_send(
        consultation_id=consultation_id,
        sender=sender,
        client_msg_id=uuid.uuid4(),
        kind=fields.pop("kind", "text"),
        text=text,
        **fields,
    )
    assert sent.created
    return sent.message


def _conversation(scene: Scene) -> str:
    consultation_id = scene.in_progress()
    patient, doctor = scene.account, scene.doctor.user
    for sender, text in (
        (patient, "医生您好"),
        (patient, "最近血压130/85"),
        (doctor, "控制得不错"),
        (patient, "需要调整用药吗"),
        (doctor, "继续原方案"),
    ):
        _say(consultation_id, sender, text)
    return consultation_id


def _messages(consultation_id: str, edge: str = MOBILE) -> str:
    return f"{edge}/consultations/{consultation_id}/messages"


def test_the_history_is_paged_in_seq_order_with_a_next_link_until_done():
    scene = Scene(DepartmentFactory())
    consultation_id = _conversation(scene)

    pages, url = [], _messages(consultation_id) + "?after_seq=0&limit=2"
    while url:
        response = scene.patient_api.get(url)
        assert response.status_code == 200, response.content
        pages.append([m["seq"] for m in response.json()["results"]])
        url = response.json()["next"]
        if url:
            query = parse_qs(urlsplit(url).query)
            assert query["limit"] == ["2"]
            assert query["after_seq"] == [str(pages[-1][-1])]

    assert pages == [[1, 2], [3, 4], [5]]

    everything = scene.patient_api.get(_messages(consultation_id)).json()
    assert everything["next"] is None
    assert [m["text"] for m in everything["results"]] == [
        "医生您好",
        "最近血压130/85",
        "控制得不错",
        "需要调整用药吗",
        "继续原方案",
    ]
    first = everything["results"][0]
    assert first["sender"] == str(scene.account.pk)
    assert first["kind"] == "text"
    assert first["attachment"] is None
    assert everything["results"][2]["sender"] == str(scene.doctor.user.pk)

    # The doctor reads the same history from the console; after_seq resumes.
    at_doctor = scene.doctor_api.get(_messages(consultation_id, CONSOLE) + "?after_seq=3")
    assert at_doctor.status_code == 200
    assert [m["seq"] for m in at_doctor.json()["results"]] == [4, 5]
    assert at_doctor.json()["next"] is None
    exact = scene.patient_api.get(_messages(consultation_id) + "?limit=5")
    assert exact.json()["next"] is None


@pytest.mark.parametrize("query", ["after_seq=abc", "limit=ten", "after_seq=1.5"])
def test_a_non_integer_paging_parameter_is_a_validation_error(query):
    scene = Scene(DepartmentFactory())
    consultation_id = scene.in_progress()
    response = scene.patient_api.get(_messages(consultation_id) + "?" + query)
    assert_problem(response, 400, "validation_error")


def test_the_history_is_only_for_the_participants():
    scene = Scene(DepartmentFactory())
    consultation_id = scene.request()
    _say(consultation_id, scene.account, "我先描述一下情况")
    colleague = client_for(ready_doctor(scene.department).user)
    outsider = client_for(ready_doctor(DepartmentFactory()).user)
    _, _, stranger = another_patient()

    # While it waits, a doctor of the queue sees the consultation but not the chat.
    assert_problem(colleague.get(_messages(consultation_id, CONSOLE)), 403, "not_a_participant")

    assert scene.accept(consultation_id).status_code == 200
    assert_problem(colleague.get(_messages(consultation_id, CONSOLE)), 404, "not_found")
    assert_problem(outsider.get(_messages(consultation_id, CONSOLE)), 404, "not_found")
    assert_problem(stranger.get(_messages(consultation_id)), 404, "not_found")
    assert_problem(scene.patient_api.get(_messages(str(uuid.uuid4()))), 404, "not_found")
    assert [
        m["seq"]
        for m in scene.doctor_api.get(_messages(consultation_id, CONSOLE)).json()["results"]
    ] == [1]


# --- Attachments --------------------------------------------------------------------------------


@pytest.fixture
def media(settings, tmp_path: Path) -> Path:
    settings.MEDIA_ROOT = tmp_path
    return tmp_path


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def _attachments(consultation_id: str, edge: str = MOBILE) -> str:
    return f"{edge}/consultations/{consultation_id}/attachments"


def _upload(api, consultation_id: str, name: str, content: bytes, edge: str = MOBILE, **kw):
    upload = SimpleUploadedFile(name, content, content_type=kw.get("content_type", "image/png"))
    return api.post(_attachments(consultation_id, edge), {"file": upload}, format="multipart")


def _download(api, url: str) -> tuple[int, bytes, Any]:
    """Read the whole body. The test client closes a streamed response (the open file)
    once it is consumed; closing it again would fire ``request_finished`` and close the
    test's database connection."""
    response = api.get(url)
    content = b"".join(response.streaming_content) if response.streaming else response.content
    return response.status_code, content, response


def test_a_participant_uploads_and_the_other_participant_downloads(media):
    scene = Scene(DepartmentFactory())
    consultation_id = scene.in_progress()

    uploaded = _upload(scene.patient_api, consultation_id, "血压记录.png", PNG_BYTES)

    assert uploaded.status_code == 201, uploaded.content
    body = uploaded.json()
    assert body["filename"] == "血压记录.png"
    assert body["content_type"] == "image/png"
    assert body["size"] == len(PNG_BYTES)
    attachment = Attachment.objects.get(pk=body["id"])
    assert attachment.uploaded_by_id == scene.account.pk
    assert attachment.sha256 == hashlib.sha256(PNG_BYTES).hexdigest()
    assert [p.name for p in _files(media)] == [f"{attachment.pk}.png"]
    assert audit_count("attachment.uploaded", attachment.pk) == 1

    url = f"{_attachments(consultation_id, CONSOLE)}/{attachment.pk}"
    status, content, response = _download(scene.doctor_api, url)
    assert status == 200
    assert content == PNG_BYTES
    assert response["Content-Type"] == "image/png"

    # The patient sends it as an image message; the history names the attachment.
    _say(consultation_id, scene.account, "", kind="image", attachment_id=attachment.pk)
    history = scene.doctor_api.get(_messages(consultation_id, CONSOLE)).json()["results"]
    assert history[-1]["kind"] == "image"
    assert history[-1]["attachment"] == {
        "id": str(attachment.pk),
        "filename": "血压记录.png",
        "content_type": "image/png",
        "size": len(PNG_BYTES),
    }


def test_the_doctor_uploads_a_pdf_and_the_patient_downloads_it(media):
    scene = Scene(DepartmentFactory())
    consultation_id = scene.in_progress()
    uploaded = _upload(
        scene.doctor_api,
        consultation_id,
        "检查单.pdf",
        PDF_BYTES,
        CONSOLE,
        content_type="application/pdf",
    )
    assert uploaded.status_code == 201, uploaded.content
    assert uploaded.json()["content_type"] == "application/pdf"

    status, content, _ = _download(
        scene.patient_api, f"{_attachments(consultation_id)}/{uploaded.json()['id']}"
    )
    assert (status, content) == (200, PDF_BYTES)


def test_strangers_cannot_download_an_attachment(media):
    scene = Scene(DepartmentFactory())
    consultation_id = scene.in_progress()
    attachment_id = _upload(scene.patient_api, consultation_id, "a.png", PNG_BYTES).json()["id"]
    _, _, stranger = another_patient()
    colleague = client_for(ready_doctor(scene.department).user)

    for api, edge in ((stranger, MOBILE), (colleague, CONSOLE)):
        status, content, response = _download(
            api, f"{_attachments(consultation_id, edge)}/{attachment_id}"
        )
        assert status == 404
        assert response.json()["code"] == "not_found"
        assert PNG_BYTES not in content

    # Nor through a consultation of their own that does not hold it.
    own = Scene(DepartmentFactory())
    own_id = own.in_progress()
    status, _, response = _download(own.patient_api, f"{_attachments(own_id)}/{attachment_id}")
    assert status == 404
    assert response.json()["code"] == "not_found"


def test_an_upload_that_is_not_a_pdf_jpeg_or_png_is_refused(media):
    scene = Scene(DepartmentFactory())
    consultation_id = scene.in_progress()
    response = _upload(
        scene.patient_api,
        consultation_id,
        "notes.png",
        b"just some text\n",
        content_type="image/png",
    )
    assert_problem(response, 415, "unsupported_document_type")
    assert not Attachment.objects.exists()
    assert _files(media) == []
    assert audit_count("attachment.uploaded") == 0


def test_an_upload_over_the_limit_is_refused(media, settings):
    settings.UPLOAD_MAX_BYTES = len(PNG_BYTES) - 1
    scene = Scene(DepartmentFactory())
    consultation_id = scene.in_progress()
    assert_problem(
        _upload(scene.patient_api, consultation_id, "a.png", PNG_BYTES), 413, "document_too_large"
    )
    assert not Attachment.objects.exists()
    assert _files(media) == []


@pytest.mark.usefixtures("icd10")
def test_nothing_can_be_uploaded_once_the_consultation_has_ended(media):
    scene = Scene(DepartmentFactory())
    consultation_id = scene.in_progress()
    ended = scene.doctor_api.post(
        f"{CONSOLE}/consultations/{consultation_id}/end", end_body(), format="json"
    )
    assert ended.status_code == 200, ended.content

    response = _upload(scene.patient_api, consultation_id, "a.png", PNG_BYTES)

    assert_problem(response, 409, "consultation_not_open")
    assert not Attachment.objects.exists()
    assert _files(media) == []


def test_a_stranger_cannot_upload_into_someone_elses_consultation(media):
    scene = Scene(DepartmentFactory())
    consultation_id = scene.in_progress()
    _, _, stranger = another_patient()

    response = _upload(stranger, consultation_id, "a.png", PNG_BYTES)

    assert response.status_code in (403, 404), response.content
    assert not Attachment.objects.exists()
    assert _files(media) == []
    assert audit_count("attachment.uploaded") == 0


def test_a_strangers_upload_is_answered_like_an_unknown_consultation(media):
    scene = Scene(DepartmentFactory())
    consultation_id = scene.in_progress()
    _, _, stranger = another_patient()

    unknown = _upload(stranger, str(uuid.uuid4()), "a.png", PNG_BYTES)
    assert_problem(unknown, 404, "not_found")
    assert_problem(_upload(stranger, consultation_id, "a.png", PNG_BYTES), 404, "not_found")
