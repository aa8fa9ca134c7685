"""Cursor pagination (CONTRACT section 0): ``?cursor=`` in, ``{"results", "next"}`` out."""

from __future__ import annotations

import pytest

from tests.consult_helpers import client_for
from tests.factories import HospitalFactory, PatientFactory

pytestmark = pytest.mark.django_db


def test_following_next_visits_every_row_once_in_order():
    names = [f"医院{i:02d}" for i in range(7)]
    for name in reversed(names):
        HospitalFactory(name=name)
    api = client_for(PatientFactory())
    url, seen, pages = "/api/mobile/v1/hospitals?page_size=3", [], 0
    while url:
        body = api.get(url).json()
        assert set(body) >= {"results", "next"}
        assert len(body["results"]) <= 3
        seen += [h["name"] for h in body["results"]]
        url, pages = body["next"], pages + 1
    assert seen == names
    assert pages == 3


def test_a_forged_cursor_is_a_404_problem():
    api = client_for(PatientFactory())
    response = api.get("/api/mobile/v1/hospitals?cursor=bz1hYmM%3D")
    assert response.status_code == 404
    assert response["Content-Type"] == "application/problem+json"
    assert response.json()["code"] == "not_found"
