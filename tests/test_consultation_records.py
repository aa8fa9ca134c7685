"""Patients' own data over the mobile API: real-name profiles (DOMAIN rules 2 and 14)
and prior offline diagnoses with their documents (rule 3), checked against the ICD-10
table and by the files' content."""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone

from backend.demo.seeding import resident_id
from backend.patients.models import PatientProfile, Relation
from consultations.models import PriorDiagnosis
from tests.consult_helpers import client_for, ready_doctor
from tests.consult_http_helpers import (
    JPEG_BYTES,
    MOBILE,
    PDF_BYTES,
    PNG_BYTES,
    assert_problem,
    audit_count,
    fast_password_hashing,  # noqa: F401 - fixture
)
from tests.factories import DepartmentFactory, PatientFactory, PatientProfileFactory

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fast_password_hashing")]

RECORDS = f"{MOBILE}/records"
PROFILES = f"{MOBILE}/profiles"


@pytest.fixture
def media(settings, tmp_path: Path) -> Path:
    """Uploaded documents go to a folder of this test's own, so we can see every file."""
    settings.MEDIA_ROOT = tmp_path
    return tmp_path


@pytest.fixture
def owner():
    account = PatientFactory()
    profile = PatientProfileFactory(account=account)
    return account, profile, client_for(account)


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def record_body(profile: PatientProfile, **overrides):
    body = {
        "profile": str(profile.pk),
        "institution": "浙江省人民医院",
        "diagnosed_on": "2024-05-06",
        "icd10_code": "E11.9",
        "diagnosis_text": "2型糖尿病",
    }
    body.update(overrides)
    return body


# --- Records: created ---------------------------------------------------------------------


@pytest.mark.usefixtures("icd10")
def test_a_record_is_created_from_json_and_named_from_the_icd10_table(owner, media):
    account, profile, api = owner
    response = api.post(RECORDS, record_body(profile), format="json")

    assert response.status_code == 201, response.content
    body = response.json()
    assert body["profile"] == str(profile.pk)
    assert body["icd10_code"] == "E11.9"
    assert body["icd10_name"] == "2型糖尿病不伴有并发症"
    assert body["institution"] == "浙江省人民医院"
    assert body["diagnosed_on"] == "2024-05-06"
    assert body["has_document"] is False
    record = PriorDiagnosis.objects.get(pk=body["id"])
    assert record.created_by_id == account.pk
    assert not record.document
    assert audit_count("prior_diagnosis.created", record.pk) == 1
    assert files_under(media) == []


@pytest.mark.usefixtures("icd10")
@pytest.mark.parametrize(
    ("filename", "content", "claimed_type", "detected_type", "extension"),
    [
        ("discharge-summary.pdf", PDF_BYTES, "application/pdf", "application/pdf", "pdf"),
        ("outpatient.jpg", JPEG_BYTES, "image/jpeg", "image/jpeg", "jpg"),
        ("certificate.png", PNG_BYTES, "image/png", "image/png", "png"),
        # What the client claims does not matter: the bytes decide.
        ("scan.bin", JPEG_BYTES, "application/octet-stream", "image/jpeg", "jpg"),
    ],
)
def test_a_record_is_created_with_a_document_over_multipart(
    owner, media, filename, content, claimed_type, detected_type, extension
):
    _, profile, api = owner
    upload = SimpleUploadedFile(filename, content, content_type=claimed_type)
    response = api.post(RECORDS, {**record_body(profile), "document": upload}, format="multipart")

    assert response.status_code == 201, response.content
    body = response.json()
    assert body["has_document"] is True
    assert body["document_content_type"] == detected_type
    record = PriorDiagnosis.objects.get(pk=body["id"])
    assert record.document_size == len(content)
    assert record.document_sha256 == hashlib.sha256(content).hexdigest()
    stored = files_under(media)
    assert [p.name for p in stored] == [f"{record.pk}.{extension}"]
    assert stored[0].read_bytes() == content
    assert stored[0].relative_to(media).parts[0] == "records"
    assert audit_count("prior_diagnosis.created", record.pk) == 1


@pytest.mark.usefixtures("icd10")
def test_a_document_of_exactly_the_size_limit_is_accepted(owner, media, settings):
    _, profile, api = owner
    settings.UPLOAD_MAX_BYTES = len(PDF_BYTES)
    upload = SimpleUploadedFile("a.pdf", PDF_BYTES, content_type="application/pdf")
    response = api.post(RECORDS, {**record_body(profile), "document": upload}, format="multipart")
    assert response.status_code == 201, response.content


@pytest.mark.usefixtures("icd10")
@pytest.mark.parametrize(
    ("sent", "stored_code", "stored_name"),
    [
        # A national clinical-edition code not in the table: named after I10.x00 (the
        # longest known prefix), not after the category I10 (原发性高血压).
        ("I10.x00x002", "I10.x00x002", "高血压"),
        ("i10.X00X002", "I10.x00x002", "高血压"),
        ("E11.9x01", "E11.9x01", "2型糖尿病不伴有并发症"),
        ("E11.900", "E11.900", "2型糖尿病"),
    ],
)
def test_a_national_extension_code_is_named_after_its_longest_known_prefix(
    owner, sent, stored_code, stored_name
):
    _, profile, api = owner
    response = api.post(RECORDS, record_body(profile, icd10_code=sent), format="json")

    assert response.status_code == 201, response.content
    assert response.json()["icd10_code"] == stored_code
    assert response.json()["icd10_name"] == stored_name
    record = PriorDiagnosis.objects.get(pk=response.json()["id"])
    assert (record.icd10_code, record.icd10_name) == (stored_code, stored_name)


@pytest.mark.usefixtures("icd10")
def test_a_record_dated_today_in_shanghai_is_accepted(owner):
    _, profile, api = owner
    today = timezone.localdate().isoformat()
    response = api.post(RECORDS, record_body(profile, diagnosed_on=today), format="json")
    assert response.status_code == 201, response.content


@pytest.mark.usefixtures("icd10")
def test_a_guardian_registers_a_record_for_a_dependant_child(owner):
    guardian, _, api = owner
    child = PatientProfileFactory(
        account=guardian,
        relation=Relation.CHILD,
        real_name="刘小宝",
        id_number=resident_id("33010220210105345"),
        birth_date=dt.date(2021, 1, 5),
    )
    response = api.post(
        RECORDS,
        record_body(child, icd10_code="J45.900", institution="浙江大学医学院附属儿童医院"),
        format="json",
    )

    assert response.status_code == 201, response.content
    assert response.json()["profile"] == str(child.pk)
    assert response.json()["icd10_name"] == "哮喘"
    record = PriorDiagnosis.objects.get(pk=response.json()["id"])
    assert record.profile_id == child.pk
    assert record.created_by_id == guardian.pk


@pytest.mark.usefixtures("icd10")
def test_the_records_list_shows_only_the_accounts_own(owner):
    guardian, profile, api = owner
    child = PatientProfileFactory(
        account=guardian,
        relation=Relation.CHILD,
        id_number=resident_id("33010220210105345"),
        birth_date=dt.date(2021, 1, 5),
    )
    mine = {
        api.post(RECORDS, record_body(profile), format="json").json()["id"],
        api.post(RECORDS, record_body(child, icd10_code="J45.900"), format="json").json()["id"],
    }
    _, stranger_profile, stranger_api = owner_of_another_account()
    theirs = stranger_api.post(RECORDS, record_body(stranger_profile), format="json").json()["id"]

    response = api.get(RECORDS)
    assert response.status_code == 200
    assert {r["id"] for r in response.json()["results"]} == mine
    assert response.json()["next"] is None
    assert_problem(api.get(f"{RECORDS}/{theirs}"), 404, "not_found")
    assert api.get(f"{RECORDS}/{next(iter(mine))}").status_code == 200


def owner_of_another_account():
    account = PatientFactory()
    profile = PatientProfileFactory(account=account)
    return account, profile, client_for(account)


# --- Records: refused -----------------------------------------------------------------------


def _assert_no_record(profile: PatientProfile, media: Path | None = None) -> None:
    assert not PriorDiagnosis.objects.filter(profile=profile).exists()
    assert audit_count("prior_diagnosis.created") == 0
    if media is not None:
        assert files_under(media) == []


@pytest.mark.usefixtures("icd10")
def test_a_text_file_renamed_pdf_is_refused_as_unsupported(owner, media):
    _, profile, api = owner
    upload = SimpleUploadedFile(
        "discharge.pdf", b"Discharge summary: hypertension\n", content_type="application/pdf"
    )
    response = api.post(RECORDS, {**record_body(profile), "document": upload}, format="multipart")
    assert_problem(response, 415, "unsupported_document_type")
    _assert_no_record(profile, media)


@pytest.mark.usefixtures("icd10")
def test_a_document_over_the_upload_limit_is_refused(owner, media, settings):
    _, profile, api = owner
    settings.UPLOAD_MAX_BYTES = len(PDF_BYTES) - 1
    upload = SimpleUploadedFile("discharge.pdf", PDF_BYTES, content_type="application/pdf")
    response = api.post(RECORDS, {**record_body(profile), "document": upload}, format="multipart")
    body = assert_problem(response, 413, "document_too_large")
    assert str(len(PDF_BYTES)) in body["detail"]
    _assert_no_record(profile, media)


@pytest.mark.usefixtures("icd10")
@pytest.mark.parametrize(
    "code",
    [
        "U99.9",  # well-formed, not in the table, no known prefix
        "C99.1",  # C99 is not a category either
        "1234",  # malformed
        "I1",
        "hypertension",
        "I10.",
        "I10.x00x00201",  # nine characters after the dot
    ],
)
def test_an_unknown_or_malformed_icd10_code_is_refused(owner, code):
    _, profile, api = owner
    response = api.post(RECORDS, record_body(profile, icd10_code=code), format="json")
    assert_problem(response, 400, "invalid_icd10")
    _assert_no_record(profile)


@pytest.mark.usefixtures("icd10")
def test_a_diagnosis_date_in_the_future_is_refused(owner):
    _, profile, api = owner
    tomorrow = (timezone.localdate() + dt.timedelta(days=1)).isoformat()
    response = api.post(RECORDS, record_body(profile, diagnosed_on=tomorrow), format="json")
    body = assert_problem(response, 400, "validation_error")
    assert "diagnosed_on" in body["errors"]
    _assert_no_record(profile)


@pytest.mark.usefixtures("icd10")
def test_a_record_for_another_accounts_profile_is_not_found(owner, media):
    _, _, api = owner
    _, their_profile, _ = owner_of_another_account()
    upload = SimpleUploadedFile("a.pdf", PDF_BYTES, content_type="application/pdf")
    response = api.post(
        RECORDS, {**record_body(their_profile), "document": upload}, format="multipart"
    )
    assert_problem(response, 404, "not_found")
    _assert_no_record(their_profile, media)


def test_records_are_for_patients_only():
    doctor = ready_doctor(DepartmentFactory())
    api = client_for(doctor.user)
    assert_problem(api.get(RECORDS), 403, "permission_denied")
    profile = PatientProfileFactory()
    assert_problem(api.post(RECORDS, record_body(profile), format="json"), 403, "permission_denied")
    assert not PriorDiagnosis.objects.exists()


# --- Profiles -----------------------------------------------------------------------------

#: Born 1990-03-07 (digits 7-14), 17th digit 3 (odd: male).
SELF_PREFIX = "11010519900307123"
#: Born 2021-06-01, 17th digit 4 (even: female).
CHILD_PREFIX = "11010520210601024"


def profile_body(**overrides):
    body = {
        "relation": "self",
        "real_name": "李四",
        "id_type": "resident_id",
        "id_number": resident_id(SELF_PREFIX),
        "birth_date": "1990-03-07",
        "sex": "male",
        "phone": "13912345678",
        "allergies": ["青霉素"],
        "consent": True,
    }
    body.update(overrides)
    return body


def masked(number: str) -> str:
    return number[:3] + "*" * (len(number) - 7) + number[-4:]


def test_a_patient_registers_their_own_profile_and_sees_the_id_number_masked():
    account = PatientFactory()
    api = client_for(account)
    number = resident_id(SELF_PREFIX)

    response = api.post(PROFILES, profile_body(), format="json")

    assert response.status_code == 201, response.content
    body = response.json()
    assert body["relation"] == "self"
    assert body["id_number"] == masked(number)
    assert body["phone"] == "139****5678"
    assert number.encode() not in response.content
    assert b"13912345678" not in response.content
    profile = PatientProfile.objects.get(pk=body["id"])
    assert profile.account_id == account.pk
    assert profile.id_number == number
    assert profile.birth_date == dt.date(1990, 3, 7)
    assert profile.sensitive_data_consent_at is not None
    assert audit_count("patient_profile.created", profile.pk) == 1

    detail = api.get(f"{PROFILES}/{profile.pk}")
    assert detail.status_code == 200
    assert detail.json()["id_number"] == masked(number)
    assert number.encode() not in detail.content


def test_a_lower_case_x_check_digit_is_accepted_and_stored_upper_case():
    prefix = next(
        p
        for p in (f"110105199003071{n:02d}" for n in range(100))
        if resident_id(p).endswith("X") and int(p[16]) % 2 == 1
    )
    api = client_for(PatientFactory())
    response = api.post(
        PROFILES, profile_body(id_number=resident_id(prefix).lower()), format="json"
    )
    assert response.status_code == 201, response.content
    assert response.json()["id_number"].endswith("X")
    assert PatientProfile.objects.get(pk=response.json()["id"]).id_number == resident_id(prefix)


def test_a_guardian_registers_a_dependant_child():
    account = PatientFactory()
    api = client_for(account)
    own = api.post(PROFILES, profile_body(), format="json")
    assert own.status_code == 201, own.content

    child = api.post(
        PROFILES,
        profile_body(
            relation="child",
            real_name="李小花",
            id_number=resident_id(CHILD_PREFIX),
            birth_date="2021-06-01",
            sex="female",
            phone="",
            allergies=[" 头孢类 "],
        ),
        format="json",
    )

    assert child.status_code == 201, child.content
    assert child.json()["relation"] == "child"
    assert child.json()["phone"] is None
    assert child.json()["allergies"] == ["头孢类"]
    listed = api.get(PROFILES).json()["results"]
    assert {p["id"]: p["relation"] for p in listed} == {
        own.json()["id"]: "self",
        child.json()["id"]: "child",
    }
    assert PatientProfile.objects.filter(account=account).count() == 2


def _assert_no_profile() -> None:
    assert not PatientProfile.objects.exists()
    assert audit_count("patient_profile.created") == 0


def test_a_wrong_check_digit_is_refused():
    api = client_for(PatientFactory())
    number = resident_id(SELF_PREFIX)
    wrong = number[:17] + ("0" if number[17] != "0" else "1")
    response = api.post(PROFILES, profile_body(id_number=wrong), format="json")
    body = assert_problem(response, 400, "validation_error")
    assert list(body["errors"]) == ["id_number"]
    _assert_no_profile()


def test_a_birth_date_that_does_not_match_the_id_number_is_refused():
    api = client_for(PatientFactory())
    response = api.post(PROFILES, profile_body(birth_date="1990-03-08"), format="json")
    body = assert_problem(response, 400, "validation_error")
    assert list(body["errors"]) == ["birth_date"]
    _assert_no_profile()


def test_a_sex_that_does_not_match_the_id_number_is_refused():
    api = client_for(PatientFactory())
    response = api.post(PROFILES, profile_body(sex="female"), format="json")
    body = assert_problem(response, 400, "validation_error")
    assert list(body["errors"]) == ["sex"]
    _assert_no_profile()


def test_a_profile_without_consent_is_refused():
    api = client_for(PatientFactory())
    response = api.post(PROFILES, profile_body(consent=False), format="json")
    assert_problem(response, 422, "consent_required")
    _assert_no_profile()


def test_a_child_under_14_is_registered_by_a_guardian_not_on_their_own_account():
    """PIPL 31: only a guardian consents for a child under 14 (DOMAIN rule 14)."""
    born = timezone.localdate().replace(month=1, day=1) - dt.timedelta(days=365 * 12)
    prefix = f"110105{born:%Y%m%d}024"  # 17th digit 4: female
    child = {
        "id_number": resident_id(prefix),
        "birth_date": born.isoformat(),
        "sex": "female",
        "real_name": "李小花",
    }
    own_account = client_for(PatientFactory())
    refused = own_account.post(PROFILES, profile_body(**child), format="json")
    assert assert_problem(refused, 422, "guardian_consent_required")["detail"].startswith(
        "A child under 14 cannot consent for themselves"
    )
    _assert_no_profile()

    guardian = client_for(PatientFactory())
    registered = guardian.post(PROFILES, profile_body(relation="child", **child), format="json")
    assert registered.status_code == 201, registered.content
    # Fourteen (just): their own consent counts.
    today = timezone.localdate()
    teen = dt.date(today.year - 14, today.month, min(today.day, 28))
    fourteen = {
        "id_number": resident_id(f"110105{teen:%Y%m%d}013"),
        "birth_date": teen.isoformat(),
        "sex": "male",
        "real_name": "王小明",
    }
    assert own_account.post(PROFILES, profile_body(**fourteen), format="json").status_code == 201


def test_the_same_id_number_cannot_be_registered_twice():
    first = client_for(PatientFactory())
    assert first.post(PROFILES, profile_body(), format="json").status_code == 201

    # Another account, as its own profile or as a dependant: the person already exists.
    second = client_for(PatientFactory())
    assert_problem(second.post(PROFILES, profile_body(), format="json"), 409, "profile_exists")
    assert_problem(
        first.post(PROFILES, profile_body(relation="parent"), format="json"),
        409,
        "profile_exists",
    )
    assert PatientProfile.objects.count() == 1
    assert audit_count("patient_profile.created") == 1


def test_a_second_self_profile_is_refused():
    account = PatientFactory()
    api = client_for(account)
    assert api.post(PROFILES, profile_body(), format="json").status_code == 201

    other_person = resident_id("11010519850412003")  # born 1985-04-12, 17th digit 3: male
    response = api.post(
        PROFILES,
        profile_body(id_number=other_person, birth_date="1985-04-12", real_name="王五"),
        format="json",
    )
    assert_problem(response, 409, "profile_exists")
    assert PatientProfile.objects.filter(account=account).count() == 1
    assert audit_count("patient_profile.created") == 1


def test_a_doctor_account_cannot_hold_patient_profiles():
    doctor = ready_doctor(DepartmentFactory())
    response = client_for(doctor.user).post(PROFILES, profile_body(), format="json")
    assert_problem(response, 403, "permission_denied")
    _assert_no_profile()


def test_a_patient_updates_the_allergies_of_a_profile():
    account = PatientFactory()
    api = client_for(account)
    profile_id = api.post(PROFILES, profile_body(), format="json").json()["id"]

    response = api.patch(
        f"{PROFILES}/{profile_id}", {"allergies": [" 磺胺类 ", "青霉素"]}, format="json"
    )

    assert response.status_code == 200, response.content
    assert response.json()["allergies"] == ["磺胺类", "青霉素"]
    assert PatientProfile.objects.get(pk=profile_id).allergies == ["磺胺类", "青霉素"]
    assert audit_count("patient_profile.allergies", profile_id) == 1


def test_the_allergies_of_another_accounts_profile_cannot_be_changed():
    theirs = PatientProfileFactory(allergies=["青霉素"])
    api = client_for(PatientFactory())
    response = api.patch(f"{PROFILES}/{theirs.pk}", {"allergies": []}, format="json")
    assert_problem(response, 404, "not_found")
    assert_problem(api.get(f"{PROFILES}/{theirs.pk}"), 404, "not_found")
    theirs.refresh_from_db()
    assert theirs.allergies == ["青霉素"]
    assert audit_count("patient_profile.allergies") == 0
