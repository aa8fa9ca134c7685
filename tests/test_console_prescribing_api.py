"""The console's prescribing pages and the read they add, without a browser: the drug
catalogue search (``GET drugs?q=``) and who reaches the prescription editor, the
pharmacist's review queue and the review page (the browser story is
tests/test_console_prescribing_browser.py)."""

from __future__ import annotations

from typing import Any
from uuid import uuid4

import pytest
from rest_framework.test import APIClient

from backend.identity.models import Role
from console.i18n import MESSAGES
from tests.consult_http_helpers import CONSOLE
from tests.factories import PASSWORD, DepartmentFactory, PractitionerFactory, UserFactory
from tests.rx_helpers import console_session, load_catalogue, pharmacist_for

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _plain_static_files(settings: Any) -> None:
    """The pages name their scripts through ``{% static %}``; rendered here without
    collectstatic, so the plain storage (no manifest) answers."""
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }


@pytest.fixture
def doctor_client() -> APIClient:
    load_catalogue()
    return console_session(PractitionerFactory().user)


def _codes(client: APIClient, query: str, **params: Any) -> list[str]:
    response = client.get(f"{CONSOLE}/drugs", {"q": query, **params})
    assert response.status_code == 200, response.content
    return [row["code"] for row in response.json()["results"]]


def test_the_drug_search_finds_by_code_prefix_and_by_generic_or_trade_name(doctor_client):
    answer = doctor_client.get(f"{CONSOLE}/drugs", {"q": "demo-0001"}).json()
    assert answer["next"] is None
    [amlodipine] = answer["results"]
    assert {k: amlodipine[k] for k in ("code", "generic_name", "trade_name", "specification")} == {
        "code": "DEMO-0001",
        "generic_name": "苯磺酸氨氯地平片",
        "trade_name": "络活喜",
        "specification": "5mg*7片",
    }
    assert amlodipine["unit"] == "盒"
    assert amlodipine["route"] == "口服"
    assert amlodipine["controlled"] is False
    assert amlodipine["control_class"] == "none"
    assert _codes(doctor_client, "沙坦") == ["DEMO-0002", "DEMO-0003"]  # by generic name
    assert _codes(doctor_client, "立普妥") == ["DEMO-0008"]  # by trade name
    assert _codes(doctor_client, "   ") == []
    assert _codes(doctor_client, "no such drug") == []
    # In code order and in pages, like every list of the API.
    first = doctor_client.get(f"{CONSOLE}/drugs", {"q": "DEMO-00", "page_size": 3}).json()
    second = doctor_client.get(first["next"]).json()
    assert [r["code"] for r in first["results"]] == ["DEMO-0001", "DEMO-0002", "DEMO-0003"]
    assert second["results"][0]["code"] == "DEMO-0004"


def test_specially_controlled_drugs_are_listed_and_marked(doctor_client):
    """The editor shows them so that the rule refuses them (and the refusal is kept)."""
    [morphine] = doctor_client.get(f"{CONSOLE}/drugs", {"q": "吗啡"}).json()["results"]
    assert (morphine["code"], morphine["controlled"], morphine["control_class"]) == (
        "DEMO-C001",
        True,
        "narcotic",
    )


def test_only_doctors_and_pharmacists_search_the_drug_catalogue(api):
    load_catalogue()
    assert api.get(f"{CONSOLE}/drugs", {"q": "DEMO"}).status_code == 401
    regulator = UserFactory(role=Role.REGULATOR)
    client = APIClient()
    login = client.post(
        f"{CONSOLE}/auth/login",
        {"username": regulator.username, "password": PASSWORD},
        format="json",
    )
    assert login.status_code == 200, login.content
    assert client.get(f"{CONSOLE}/drugs", {"q": "DEMO"}).status_code == 403
    pharmacist = pharmacist_for(DepartmentFactory())
    assert _codes(console_session(pharmacist.user), "DEMO-0001") == ["DEMO-0001"]


# --- the pages ---------------------------------------------------------------------------------


def test_the_doctor_reaches_the_prescription_editor_of_a_consultation():
    client = console_session(PractitionerFactory().user)
    consultation = uuid4()
    page = client.get(f"/console/doctor/consultations/{consultation}/prescription/")
    assert page.status_code == 200
    html = page.content.decode()
    assert f"<title>{MESSAGES['rx_editor_title']['zh-hans']} · " in html
    assert "console/prescription_editor.js" in html
    assert f'"consultation": "{consultation}"' in html
    assert f'href="/console/doctor/consultations/{consultation}/"' in html  # back to the room
    # The room links to it.
    room = client.get(f"/console/doctor/consultations/{consultation}/").content.decode()
    assert f'href="/console/doctor/consultations/{consultation}/prescription/"' in room
    assert MESSAGES["rx_open_editor"]["zh-hans"] in room


def test_the_pharmacist_has_a_review_queue_and_a_review_page_in_both_languages():
    client = console_session(pharmacist_for(DepartmentFactory()).user)
    home = client.get("/console/pharmacist/").content.decode()
    assert f"<title>{MESSAGES['rx_pharmacist_title']['zh-hans']} · " in home
    assert "console/pharmacist.js" in home
    assert MESSAGES["placeholder_body"]["zh-hans"] not in home
    prescription = uuid4()
    review = client.get(f"/console/pharmacist/prescriptions/{prescription}/?lang=en")
    assert review.status_code == 200
    html = review.content.decode()
    assert '<html lang="en">' in html
    assert "<title>Review a prescription · " in html
    assert f'"prescription": "{prescription}"' in html


def test_each_role_reaches_only_its_own_prescribing_pages():
    doctor = console_session(PractitionerFactory().user)
    pharmacist = console_session(pharmacist_for(DepartmentFactory()).user)
    some = uuid4()
    assert doctor.get("/console/pharmacist/")["Location"] == "/console/doctor/"
    assert doctor.get(f"/console/pharmacist/prescriptions/{some}/")["Location"] == (
        "/console/doctor/"
    )
    editor = pharmacist.get(f"/console/doctor/consultations/{some}/prescription/")
    assert editor["Location"] == "/console/pharmacist/"
    anonymous = APIClient().get("/console/pharmacist/")
    assert anonymous["Location"] == "/console/login/?next=%2Fconsole%2Fpharmacist%2F"
