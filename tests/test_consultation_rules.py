"""Rules added after review: refusing as a first visit is a medical decision (the doctor
must be qualified), an unlicensed hospital takes no requests, and filters read booleans
as people write them."""

from __future__ import annotations

import datetime as dt

import pytest

from backend.organisations.models import Hospital
from consultations.models import Consultation
from tests.consult_http_helpers import CONSOLE, Scene, assert_problem, status_of
from tests.factories import DepartmentFactory

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("icd10")]


def test_an_unqualified_doctor_cannot_refuse_a_consultation_as_a_first_visit():
    scene = Scene(DepartmentFactory(), licence_valid_until=dt.date(2020, 1, 1))
    consultation_id = scene.request()
    response = scene.doctor_api.post(
        f"{CONSOLE}/consultations/{consultation_id}/refuse-first-visit",
        {"reason": "首诊"},
        format="json",
    )
    body = assert_problem(response, 403, "doctor_not_qualified")
    assert "licence expired" in body["detail"]
    assert status_of(consultation_id) == "waiting"


def test_a_hospital_whose_licence_expired_takes_no_requests():
    scene = Scene(DepartmentFactory())
    Hospital.objects.filter(pk=scene.hospital.pk).update(
        practice_licence_valid_until=dt.date(2020, 1, 1)
    )
    scene.department.hospital.refresh_from_db()
    response = scene.patient_api.post(
        "/api/mobile/v1/consultations",
        {"profile": str(scene.profile.pk), "department": str(scene.department.pk)},
        format="json",
    )
    body = assert_problem(response, 400, "validation_error")
    assert "department" in body["errors"]
    assert not Consultation.objects.exists()


@pytest.mark.parametrize("value", ["true", "True", "1", "yes"])
def test_available_doctors_filter_reads_usual_spellings_of_true(value):
    scene = Scene(DepartmentFactory())
    off_duty = Scene(scene.department, on_duty=False).doctor
    listed = scene.patient_api.get(
        f"/api/mobile/v1/doctors?department={scene.department.pk}&available={value}"
    )
    ids = [d["id"] for d in listed.json()["results"]]
    assert str(scene.doctor.pk) in ids
    assert str(off_duty.pk) not in ids
