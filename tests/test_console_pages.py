"""The web console's pages and the reads they need, without a browser: who reaches which
page, the language, the words catalogue, and the console API's ICD-10 search, patient
summary, duty state and session (the browser story is tests/test_console_browser.py)."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from django.conf import settings as django_settings
from django.utils import timezone
from rest_framework.test import APIClient

from backend.identity.models import Role
from backend.organisations.models import Practitioner
from backend.patients.models import Relation, Sex
from console.i18n import LANGUAGES, MESSAGES
from consultations.models import Consultation, ConsultationStatus
from regulators.schemas import RECORD_TYPES, payload_errors
from tests.consult_http_helpers import CONSOLE, MOBILE, Scene, end_body
from tests.factories import PASSWORD, DepartmentFactory, PractitionerFactory, UserFactory
from tests.rx_helpers import console_session

pytestmark = pytest.mark.django_db
ROOT = Path(__file__).resolve().parent.parent
CONSOLE_APP = ROOT / "console"


@pytest.fixture(autouse=True)
def _plain_static_files(settings: Any) -> None:
    """The pages name their scripts through ``{% static %}``; these tests render pages
    without running collectstatic, so the plain storage (no manifest) answers."""
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }


def _signed_in(role: str) -> APIClient:
    if role in (Role.DOCTOR, Role.PHARMACIST):
        practitioner: Practitioner = PractitionerFactory(user__role=role)
        return console_session(practitioner.user)
    client = APIClient()
    user = UserFactory(role=role)
    response = client.post(
        f"{CONSOLE}/auth/login", {"username": user.username, "password": PASSWORD}, format="json"
    )
    assert response.status_code == 200, response.content
    return client


# --- who reaches which page --------------------------------------------------------------


@pytest.mark.parametrize("path", ["/console/", "/console/doctor/", "/console/regulator/"])
def test_a_visitor_who_is_not_signed_in_is_sent_to_the_sign_in_page_and_back(path):
    response = APIClient().get(path)
    assert response.status_code == 302
    assert response["Location"] == f"/console/login/?next={path.replace('/', '%2F')}"


def test_a_password_without_the_second_factor_opens_no_page():
    doctor = PractitionerFactory().user
    client = APIClient()
    response = client.post(
        f"{CONSOLE}/auth/login", {"username": doctor.username, "password": PASSWORD}, format="json"
    )
    assert response.json() == {"second_factor_required": True}
    response = client.get("/console/doctor/")
    assert response.status_code == 302
    assert response["Location"].startswith("/console/login/")


@pytest.mark.parametrize(
    ("role", "home"),
    [
        (Role.DOCTOR, "/console/doctor/"),
        (Role.PHARMACIST, "/console/pharmacist/"),
        (Role.PHARMACY_STAFF, "/console/pharmacy/"),
        (Role.REGULATOR, "/console/regulator/"),
        (Role.ADMINISTRATOR, "/console/administrator/"),
    ],
)
def test_the_console_root_sends_each_role_to_its_home(role, home):
    client = _signed_in(role)
    response = client.get("/console/")
    assert (response.status_code, response["Location"]) == (302, home)
    page = client.get(home)
    assert page.status_code == 200
    assert page["Cache-Control"].startswith("max-age=0")
    assert "csrftoken" in page.cookies
    # The sign-in page sends a signed-in account home (or to the page it asked for).
    assert client.get("/console/login/")["Location"] == home
    assert client.get("/console/login/?next=/console/")["Location"] == "/console/"
    assert client.get("/console/login/?next=https://evil.example/")["Location"] == home


def test_roles_whose_pages_come_later_see_a_page_that_says_so():
    page = _signed_in(Role.PHARMACY_STAFF).get("/console/pharmacy/")
    html = page.content.decode()
    assert "<title>药店人员工作台 · " in html
    assert MESSAGES["placeholder_body"]["zh-hans"] in html


def test_another_roles_page_sends_the_account_to_its_own_home():
    client = _signed_in(Role.PHARMACIST)
    response = client.get("/console/doctor/")
    assert (response.status_code, response["Location"]) == (302, "/console/pharmacist/")
    room = client.get(f"/console/doctor/consultations/{Consultation().pk}/")
    assert room["Location"] == "/console/pharmacist/"


# --- language ------------------------------------------------------------------------------


def test_the_console_speaks_chinese_first_whatever_the_browser_asks_for():
    client = APIClient()
    page = client.get("/console/login/", HTTP_ACCEPT_LANGUAGE="en-US,en;q=0.9")
    html = page.content.decode()
    assert '<html lang="zh-hans">' in html
    assert MESSAGES["login_title"]["zh-hans"] in html
    assert "console_lang" not in page.cookies


def test_lang_switches_to_english_and_is_remembered():
    client = APIClient()
    english = client.get("/console/login/?lang=en")
    assert '<html lang="en">' in english.content.decode()
    assert english.cookies["console_lang"].value == "en"
    again = client.get("/console/login/").content.decode()
    assert '<html lang="en">' in again
    assert "Sign in to the console" in again
    assert '"lang": "en"' in again  # the scripts' configuration
    back = client.get("/console/login/?lang=zh-hans").content.decode()
    assert '<html lang="zh-hans">' in back
    assert '<html lang="zh-hans">' in client.get("/console/login/?lang=fr").content.decode()


def test_every_word_has_chinese_and_english_and_every_key_used_exists():
    for key, texts in MESSAGES.items():
        assert set(texts) == set(LANGUAGES), key
        assert all(text.strip() for text in texts.values()), key
        names = [set(re.findall(r"\{(\w+)\}", text)) for text in texts.values()]
        assert names[0] == names[1], f"{key}: placeholders differ between languages"
    used: set[str] = set()
    literals: set[str] = set()  # every quoted word: keys handed around before t() reads them
    for template in (CONSOLE_APP / "templates").rglob("*.html"):
        used |= set(re.findall(r"\bt\.(\w+)", template.read_text()))
    for source in [*(CONSOLE_APP / "static").rglob("*.js"), CONSOLE_APP / "pages.py"]:
        used |= set(re.findall(r"\bt\(\s*\"(\w+)\"", source.read_text()))
        literals |= set(re.findall(r"\"(\w+)\"", source.read_text()))
    assert used, "no keys found: the patterns above no longer match the sources"
    assert sorted(used - set(MESSAGES)) == []
    built = ("status_", "sex_", "relation_", "role_", "conn_", "problem_")
    unused = [k for k in MESSAGES if k not in used | literals and not k.startswith(built)]
    assert unused == []
    # Keys the scripts build from the API's values: one entry per value.
    families: dict[str, Any] = {
        "status": ConsultationStatus.values,
        "sex": Sex.values,
        "relation": Relation.values,
        "role": [r for r in Role.values if r != Role.PATIENT],
        "conn": ["idle", "connecting", "open", "closed", "offline", "failed"],
    }
    for prefix, values in families.items():
        assert sorted(f"{prefix}_{v}" for v in values if f"{prefix}_{v}" not in MESSAGES) == []


# --- the console API the pages call --------------------------------------------------------


@pytest.mark.usefixtures("icd10")
def test_the_icd10_search_finds_by_code_prefix_and_by_name_in_code_order():
    client = _signed_in(Role.DOCTOR)

    def codes(query: str) -> list[str]:
        response = client.get(f"{CONSOLE}/icd10?{urlencode({'q': query, 'page_size': 5})}")
        assert response.status_code == 200, response.content
        return [row["code"] for row in response.json()["results"]]

    by_code = client.get(f"{CONSOLE}/icd10", {"q": "i10"}).json()
    assert by_code["results"] == [
        {
            "code": "I10",
            "name": "原发性高血压",
            "name_zh": "原发性高血压",
            "name_en": "Essential (primary) hypertension",
            "kind": "category",
        },
        {
            "code": "I10.x00",
            "name": "高血压",
            "name_zh": "高血压",
            "name_en": "Hypertension",
            "kind": "cn_extension",
        },
    ]
    assert by_code["next"] is None
    assert codes("高血压") == ["I10", "I10.x00", "I11", "I11.0", "I11.9"]
    assert codes("Essential (primary) hyper") == ["I10"]
    assert codes("  ") == []
    # A long answer comes in pages, like every list of the API.
    first = client.get(f"{CONSOLE}/icd10?q=E1&page_size=3").json()
    second = client.get(first["next"]).json()
    assert [r["code"] for r in first["results"]] < [r["code"] for r in second["results"]]


@pytest.mark.usefixtures("icd10")
def test_only_console_accounts_search_the_icd10_table(api):
    assert api.get(f"{CONSOLE}/icd10", {"q": "I10"}).status_code == 401


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("icd10")
def test_the_patient_summary_shows_age_allergies_prior_diagnosis_and_earlier_visits():
    department = DepartmentFactory()
    scene = Scene(department)
    profile = scene.profile
    profile.allergies = ["青霉素", "磺胺类"]
    profile.birth_date = dt.date(1980, 1, 1)
    profile.sex = Sex.FEMALE
    profile.save()
    earlier = scene.in_progress()
    ended = scene.doctor_api.post(
        f"{CONSOLE}/consultations/{earlier}/end", end_body(fee=0), format="json"
    )
    assert ended.status_code == 200, ended.content
    cancelled = scene.request()
    assert scene.patient_api.post(f"{MOBILE}/consultations/{cancelled}/cancel").status_code == 200
    current = scene.request()

    response = scene.doctor_api.get(f"{CONSOLE}/consultations/{current}/patient")
    assert response.status_code == 200, response.content
    summary = response.json()
    today = timezone.localdate()
    assert summary["age"] == today.year - 1980 - (today < dt.date(today.year, 1, 1))
    assert {k: summary[k] for k in ("name", "sex", "birth_date", "relation", "allergies")} == {
        "name": profile.real_name,
        "sex": "female",
        "birth_date": "1980-01-01",
        "relation": "self",
        "allergies": ["青霉素", "磺胺类"],
    }
    assert summary["prior_diagnosis"] == {
        "id": str(scene.record.pk),
        "institution": "浙江大学医学院附属第一医院",
        "diagnosed_on": "2024-11-05",
        "icd10_code": "I10",
        "icd10_name": "原发性高血压",
        "diagnosis_text": "",
    }
    unanswered, previous = summary["earlier_consultations"]  # newest first
    assert (unanswered["id"], unanswered["status"], unanswered["doctor"]) == (
        cancelled,
        "cancelled",
        None,
    )
    assert (previous["id"], previous["status"], previous["department"]) == (
        earlier,
        "ended",
        department.name,
    )
    assert previous["doctor"] == scene.doctor.user.display_name
    assert previous["diagnoses"] == [{"icd10": "I10", "name": "原发性高血压", "main": True}]

    # A doctor whose queue does not hold it learns nothing, not even that it exists.
    stranger = PractitionerFactory(hospital=scene.hospital)
    other = APIClient()
    other.force_authenticate(stranger.user)
    assert other.get(f"{CONSOLE}/consultations/{current}/patient").status_code == 404


def test_the_duty_state_and_the_last_identity_check_are_read_back():
    doctor: Practitioner = PractitionerFactory(on_duty=False, last_identity_check_at=None)
    client = console_session(doctor.user)
    assert client.get(f"{CONSOLE}/duty").json() == {"on_duty": False, "identity_checked_at": None}
    assert client.post(f"{CONSOLE}/identity-check").json()["passed"] is True
    assert client.post(f"{CONSOLE}/duty", {"on_duty": True}, format="json").status_code == 200
    state = client.get(f"{CONSOLE}/duty").json()
    assert state["on_duty"] is True
    checked = dt.datetime.fromisoformat(state["identity_checked_at"])
    assert abs((timezone.now() - checked).total_seconds()) < 60


def test_the_session_says_who_is_signed_in_and_how_long_it_lasts_idle():
    doctor: Practitioner = PractitionerFactory()
    client = console_session(doctor.user)
    answer = client.get(f"{CONSOLE}/auth/session").json()
    assert answer["idle_seconds"] == django_settings.SESSION_COOKIE_AGE
    assert (answer["user"]["id"], answer["user"]["role"]) == (str(doctor.user_id), "doctor")
    assert APIClient().get(f"{CONSOLE}/auth/session").status_code == 401


def test_the_room_hands_the_configured_stun_and_turn_servers_to_the_call(settings):
    servers = [
        {"urls": "stun:stun.hospital.example:3478"},
        {"urls": "turn:turn.hospital.example:3478", "username": "u", "credential": "c"},
    ]
    settings.WEBRTC_ICE_SERVERS = servers
    room = _signed_in(Role.DOCTOR).get(f"/console/doctor/consultations/{Consultation().pk}/")
    assert room.status_code == 200
    config = room.content.decode().split('id="console-config" type="application/json">')[1]
    assert json.loads(config.split("</script>")[0])["ice_servers"] == servers


def test_every_record_type_the_hospital_sends_has_its_words_in_the_console() -> None:
    """The regulator's feed and the administrator's outbox name each record type; a type
    the server may send without words would show as its code."""
    source = (CONSOLE_APP / "static" / "console" / "record_types.js").read_text()
    mapping = dict(re.findall(r'^\s*"?([\w.]+)"?: "(ov_rt_\w+)",$', source, re.MULTILINE))
    assert sorted(mapping) == sorted(RECORD_TYPES)
    for key in mapping.values():
        assert set(MESSAGES[key]) == set(LANGUAGES), key
    # And the server refuses a type that is not on the list.
    assert payload_errors("dispense.teleport", {}) == ["unknown record type 'dispense.teleport'"]
