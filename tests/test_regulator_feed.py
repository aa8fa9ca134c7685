"""The regulator side (CONTRACT section 7) after real deliveries to the bundled platform
peer: the live feed ``/ws/regulator/feed/?after=N`` gives an official of the province
every record the platform received, in feed order, resumable, and pushes new ones live;
an official of another province sees nothing of it, nor does anyone else. The HTTP API
(records, alerts, indicators, ws-ticket) filters and scopes the same way.

Runs on SQLite (in-memory channel layer) and on PostgreSQL + Redis (Redis channel layer)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings as django_settings
from django.utils import timezone
from rest_framework.test import APIClient

from backend.asgi import application
from backend.audit.models import AuditEvent
from backend.identity.models import Role, User
from backend.identity.services import ws_ticket_issue
from backend.organisations.models import Department, Province, RegulatorOfficial
from consultations.services import consultations_expire_due
from regulators.models import Alert, AlertKind, OutboxRecord, RecordStatus
from regulators.services import hospital_code, record_deliver
from tests.chat_helpers import release_connections
from tests.consult_helpers import HEADERS, client_for, close_socket, open_socket
from tests.consult_http_helpers import CONSOLE, Scene, end_body
from tests.factories import (
    PASSWORD,
    DepartmentFactory,
    HospitalFactory,
    PatientFactory,
    PractitionerFactory,
    ProvinceFactory,
    UserFactory,
)
from tests.regulator_helpers import Platform, drain, platform
from tests.rx_helpers import RxScene, line

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("icd10")]

API = "/api/regulator/v1"
FEED = "/ws/regulator/feed/"


# --- Set-up ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def peer(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with platform(tmp_path_factory.mktemp("peer")) as running:
        yield running


@pytest.fixture
def province_peer(peer: Platform, settings: Any, department: Department) -> Platform:
    settings.REGULATOR_RETRY_BASE_SECONDS = 0
    peer.reset()
    peer.connect(department.hospital.province)
    return peer


@pytest.fixture(autouse=True)
async def _release_connections() -> Any:
    """Give back the connection of the thread ``sync_to_async`` ran in (on PostgreSQL it
    would otherwise keep the test database from being dropped)."""
    yield
    await release_connections()


def _jiangsu() -> Province:
    return ProvinceFactory(code="320000", name="江苏省", regulator_name="江苏省卫生健康委员会")


def _official(province: Province) -> tuple[User, APIClient]:
    user = UserFactory(role=Role.REGULATOR)
    RegulatorOfficial.objects.create(user=user, province=province)
    return user, client_for(user)


def _end(scene: RxScene) -> None:
    ended = scene.doctor_api.post(
        f"{CONSOLE}/consultations/{scene.consultation_id}/end", end_body(), format="json"
    )
    assert ended.status_code == 200, ended.content


def _story(scene: RxScene) -> None:
    """Request, accept, a prescription signed, approved, claimed and dispensed, end."""
    prescription_id, secret = scene.claimed()
    assert scene.dispense(prescription_id, secret).status_code == 200
    _end(scene)


def _feed_order(province: Province) -> list[str]:
    """The record ids the province's feed must give, by feed sequence."""
    return [
        str(r)
        for r in OutboxRecord.objects.filter(province=province, feed_seq__isnull=False)
        .order_by("feed_seq")
        .values_list("record_id", flat=True)
    ]


def _list(client: APIClient, path: str, **params: Any) -> list[dict[str, Any]]:
    """Every page of a cursor-paginated list."""
    response = client.get(f"{API}/{path}", params)
    assert response.status_code == 200, response.content
    body = response.json()
    results: list[dict[str, Any]] = body["results"]
    while body["next"]:
        response = client.get(body["next"])
        assert response.status_code == 200, response.content
        body = response.json()
        results += body["results"]
    return results


# --- Feed sockets ---------------------------------------------------------------------------------


async def _ticket(client: APIClient) -> str:
    response = await sync_to_async(client.post)(f"{API}/ws-ticket")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["url"] == f"ws://testserver{FEED}?ticket={body['ticket']}"
    return str(body["ticket"])


async def _feed(client: APIClient, after: int | str = 0) -> tuple[WebsocketCommunicator, Any]:
    ticket = await _ticket(client)
    return await open_socket(f"{FEED}?after={after}&ticket={ticket}")


async def _records(socket: WebsocketCommunicator, count: int) -> list[dict[str, Any]]:
    records = []
    for _ in range(count):
        frame = await socket.receive_json_from(timeout=5)
        assert frame["type"] == "record", frame
        records.append(frame["record"])
    return records


async def _refused_with(path: str, code: int) -> None:
    """Refusals are accepted, then closed with the documented code."""
    communicator = WebsocketCommunicator(application, path, headers=HEADERS)
    try:
        connected, _ = await communicator.connect(timeout=5)
        assert connected is True
        closed = await communicator.receive_output(timeout=5)
        assert closed == {"type": "websocket.close", "code": code}
    finally:
        await close_socket(communicator)


# --- The feed -------------------------------------------------------------------------------------


async def test_the_feed_gives_our_official_every_received_record_and_another_province_nothing(
    province_peer: Platform, department: Department
) -> None:
    scene = await sync_to_async(RxScene)(department)
    await sync_to_async(_story)(scene)
    await sync_to_async(drain)()
    province = await sync_to_async(lambda: department.hospital.province)()
    _, ours = await sync_to_async(_official)(province)
    _, theirs = await sync_to_async(lambda: _official(_jiangsu()))()
    expected = await sync_to_async(_feed_order)(province)
    received = await sync_to_async(province_peer.records)()
    # The institution filing, three consultation records, issued, review, the pharmacy's
    # claim and the dispense.
    assert len(expected) == len(received) == 8

    socket, hello = await _feed(ours)
    other, other_hello = await _feed(theirs)
    try:
        assert hello == {"type": "hello", "province": "330000", "after": 0}
        records = await _records(socket, len(expected))
        assert [r["seq"] for r in records] == list(range(1, len(expected) + 1))
        assert [r["record_id"] for r in records] == expected
        # What the platform stored, in the order it stored it, is what the feed gives.
        assert [r["record_id"] for r in records] == [r["record_id"] for r in received]
        by_id = {r["record_id"]: r for r in received}
        for record in records:
            stored = by_id[record["record_id"]]
            assert record["record_type"] == stored["record_type"]
            assert record["hospital_code"] == stored["hospital_code"]
            assert record["payload"] == stored["payload"]
            assert record["acknowledged_at"] is not None
            assert record["hospital"] == str(department.hospital_id)
        assert records[0]["record_type"] == "filing.institution"
        assert await socket.receive_nothing(timeout=0.3)

        assert other_hello == {"type": "hello", "province": "320000", "after": 0}
        assert await other.receive_nothing(timeout=0.3)
    finally:
        await close_socket(socket)
        await close_socket(other)


async def test_each_province_gets_its_own_gap_free_feed_and_nothing_of_the_other(
    province_peer: Platform, department: Department
) -> None:
    def build() -> tuple[Province, Province]:
        zhejiang = department.hospital.province
        jiangsu = _jiangsu()
        province_peer.connect(jiangsu)
        RxScene(department).active()
        RxScene(DepartmentFactory(hospital=HospitalFactory(province=jiangsu))).active()
        drain()
        return zhejiang, jiangsu

    zhejiang, jiangsu = await sync_to_async(build)()
    _, ours = await sync_to_async(_official)(zhejiang)
    _, theirs = await sync_to_async(_official)(jiangsu)
    ours_expected = await sync_to_async(_feed_order)(zhejiang)
    theirs_expected = await sync_to_async(_feed_order)(jiangsu)
    assert len(ours_expected) == len(theirs_expected) == 5  # filing, 2 consultation, 2 Rx
    assert not set(ours_expected) & set(theirs_expected)

    socket, _ = await _feed(ours)
    other, other_hello = await _feed(theirs)
    try:
        assert other_hello["province"] == "320000"
        mine = await _records(socket, len(ours_expected))
        their = await _records(other, len(theirs_expected))
        assert [r["record_id"] for r in mine] == ours_expected
        assert [r["record_id"] for r in their] == theirs_expected
        assert [r["seq"] for r in mine] == [r["seq"] for r in their] == [1, 2, 3, 4, 5]
        assert await socket.receive_nothing(timeout=0.3)
        assert await other.receive_nothing(timeout=0.3)
    finally:
        await close_socket(socket)
        await close_socket(other)


async def test_reconnecting_with_after_gives_exactly_the_records_after_it(
    province_peer: Platform, department: Department
) -> None:
    scene = await sync_to_async(RxScene)(department)
    await sync_to_async(_story)(scene)
    await sync_to_async(drain)()
    province = await sync_to_async(lambda: department.hospital.province)()
    _, ours = await sync_to_async(_official)(province)
    expected = await sync_to_async(_feed_order)(province)
    n = len(expected)

    for after in (3, n - 1, n, n + 5):
        socket, hello = await _feed(ours, after=after)
        try:
            assert hello == {"type": "hello", "province": "330000", "after": after}
            records = await _records(socket, max(n - after, 0))
            assert [r["seq"] for r in records] == list(range(after + 1, n + 1))
            assert [r["record_id"] for r in records] == expected[after:]
            assert await socket.receive_nothing(timeout=0.2)
        finally:
            await close_socket(socket)

    # What each catch-up read from the database is recorded for the official (DOMAIN
    # rule 12); the two reconnects with nothing after them read nothing.
    reads = await sync_to_async(
        lambda: [
            e.after
            for e in AuditEvent.objects.filter(action="regulator_record.listed").order_by("seq")
        ]
    )()
    assert reads == [
        {"ids": expected[3:], "via": "websocket"},
        {"ids": expected[n - 1 :], "via": "websocket"},
    ]


async def test_a_record_acknowledged_while_connected_arrives_live_once(
    province_peer: Platform, department: Department
) -> None:
    scene = await sync_to_async(RxScene)(department)
    await sync_to_async(drain)()
    province = await sync_to_async(lambda: department.hospital.province)()
    _, ours = await sync_to_async(_official)(province)
    _, theirs = await sync_to_async(lambda: _official(_jiangsu()))()
    n = len(await sync_to_async(_feed_order)(province))
    assert n == 3  # filing, requested, accepted

    socket, _ = await _feed(ours)
    resumed, _ = await _feed(ours, after=n - 1)  # a client that resumed from n-1
    other, _ = await _feed(theirs)
    try:
        await _records(socket, n)
        await _records(resumed, 1)
        await sync_to_async(_end)(scene)
        ended = await sync_to_async(OutboxRecord.objects.get)(record_type="consultation.ended")
        assert ended.status == RecordStatus.PENDING
        assert (await sync_to_async(record_deliver)(record_pk=ended.pk)).outcome == "acknowledged"

        for client_socket in (socket, resumed):
            [live] = await _records(client_socket, 1)
            assert live["seq"] == n + 1
            assert live["record_id"] == str(ended.record_id)
            assert live["record_type"] == "consultation.ended"
            assert live["payload"]["consultation_id"] == scene.consultation_id
            assert await client_socket.receive_nothing(timeout=0.3)  # once, not twice
        assert await other.receive_nothing(timeout=0.3)
    finally:
        for client_socket in (socket, resumed, other):
            await close_socket(client_socket)

    # What arrived live is also what a reconnection after n gives.
    again, _ = await _feed(ours, after=n)
    try:
        [record] = await _records(again, 1)
        assert record["record_id"] == str(ended.record_id)
        assert await again.receive_nothing(timeout=0.2)
    finally:
        await close_socket(again)


async def test_only_officials_of_a_province_may_open_the_feed(department: Department) -> None:
    def accounts() -> dict[str, User]:
        return {
            "patient": PatientFactory(),
            "doctor": PractitionerFactory(hospital=department.hospital).user,
            "administrator": UserFactory(role=Role.ADMINISTRATOR),
            # The regulator role without a province behind it sees nothing either.
            "regulator_without_province": UserFactory(role=Role.REGULATOR),
        }

    users = await sync_to_async(accounts)()
    for name, user in users.items():
        # The ticket endpoint refuses them ...
        client = await sync_to_async(client_for)(user)
        response = await sync_to_async(client.post)(f"{API}/ws-ticket")
        assert response.status_code == 403, (name, response.content)
        # ... and a ticket for the feed path issued to them anyway is refused by the socket.
        issued = await sync_to_async(ws_ticket_issue)(user=user, path=FEED)
        await _refused_with(f"{FEED}?ticket={issued.ticket}", 4403)

    await _refused_with(FEED, 4401)  # no ticket
    await _refused_with(f"{FEED}?ticket=not-a-ticket", 4401)
    province = await sync_to_async(lambda: department.hospital.province)()
    official, ours = await sync_to_async(_official)(province)
    ticket = await _ticket(ours)
    socket, hello = await open_socket(f"{FEED}?ticket={ticket}")
    await close_socket(socket)
    assert hello["type"] == "hello"
    await _refused_with(f"{FEED}?ticket={ticket}", 4401)  # a ticket is good for one connection
    # A ticket issued for another path does not open the feed.
    console = await sync_to_async(ws_ticket_issue)(user=official, path="/ws/console/")
    await _refused_with(f"{FEED}?ticket={console.ticket}", 4401)


async def test_an_official_signed_in_to_the_console_opens_the_feed_with_the_session(
    province_peer: Platform, department: Department
) -> None:
    """CONTRACT 1: a WebSocket takes the console's session cookie as well as a ticket."""

    def signed_in() -> tuple[APIClient, list[tuple[bytes, bytes]]]:
        RxScene(department)
        drain()
        user, _ = _official(department.hospital.province)
        client = APIClient()
        response = client.post(
            f"{CONSOLE}/auth/login", {"username": user.username, "password": PASSWORD}, "json"
        )
        assert response.status_code == 200, response.content
        assert response.json()["second_factor_required"] is False
        cookie = client.cookies[django_settings.SESSION_COOKIE_NAME].value
        header = f"{django_settings.SESSION_COOKIE_NAME}={cookie}".encode()
        return client, [*HEADERS, (b"cookie", header)]

    client, headers = await sync_to_async(signed_in)()
    expected = await sync_to_async(_feed_order)(
        await sync_to_async(lambda: department.hospital.province)()
    )
    communicator = WebsocketCommunicator(application, f"{FEED}?after=1", headers=headers)
    try:
        connected, _ = await communicator.connect(timeout=5)
        assert connected
        hello = await communicator.receive_json_from(timeout=5)
        assert hello == {"type": "hello", "province": "330000", "after": 1}
        records = await _records(communicator, len(expected) - 1)
        assert [r["record_id"] for r in records] == expected[1:]
    finally:
        await close_socket(communicator)
    # The session also gets tickets and reads the API.
    response = await sync_to_async(client.post)(f"{API}/ws-ticket")
    assert response.status_code == 201, response.content
    listed = await sync_to_async(client.get)(f"{API}/records")
    assert [r["record_id"] for r in listed.json()["results"]] == expected


# --- The HTTP API ---------------------------------------------------------------------------------


def test_records_filter_by_type_hospital_and_time(province_peer: Platform, department) -> None:
    province = department.hospital.province
    first = RxScene(department)
    _story(first)
    drain()
    cut = timezone.now()
    second_department = DepartmentFactory(hospital=HospitalFactory())  # same province
    second = RxScene(second_department)
    second.active()
    drain()
    _, ours = _official(province)

    everything = _list(ours, "records", page_size=5)  # several pages
    assert [r["record_id"] for r in everything] == _feed_order(province)
    assert [r["seq"] for r in everything] == list(range(1, len(everything) + 1))
    assert len(everything) == 8 + 5  # the first story's claim is reported too

    consultation = _list(ours, "records", record_type="consultation")
    assert {r["record_type"] for r in consultation} == {
        "consultation.requested",
        "consultation.accepted",
        "consultation.ended",
    }
    assert len(consultation) == 3 + 2
    reviews = _list(ours, "records", record_type="review")
    assert [r["payload"]["result"] for r in reviews] == ["pass", "pass"]
    assert _list(ours, "records", record_type="prescription.revoked") == []

    theirs = _list(ours, "records", hospital=str(second_department.hospital_id))
    assert {r["hospital"] for r in theirs} == {str(second_department.hospital_id)}
    assert {r["hospital_code"] for r in theirs} == {hospital_code(second_department.hospital)}
    assert [r["record_type"] for r in theirs] == [
        "filing.institution",
        "consultation.requested",
        "consultation.accepted",
        "prescription.issued",
        "review",
    ]
    combined = _list(
        ours, "records", hospital=str(department.hospital_id), record_type="prescription"
    )
    assert [r["record_type"] for r in combined] == ["prescription.issued"]

    before = _list(ours, "records", to=cut.isoformat())
    after = _list(ours, "records", **{"from": cut.isoformat()})
    assert {r["hospital"] for r in before} == {str(department.hospital_id)}
    assert {r["hospital"] for r in after} == {str(second_department.hospital_id)}
    assert len(before) + len(after) == len(everything)
    today = timezone.localdate()
    yesterday, tomorrow = today - dt.timedelta(days=1), today + dt.timedelta(days=1)
    assert len(_list(ours, "records", **{"from": yesterday.isoformat()})) == len(everything)
    assert _list(ours, "records", **{"from": tomorrow.isoformat()}) == []
    assert _list(ours, "records", to=yesterday.isoformat()) == []
    bad = ours.get(f"{API}/records", {"from": "last tuesday"})
    assert bad.status_code == 400, bad.content


def test_alerts_filter_by_kind_and_hospital(province_peer: Platform, department) -> None:
    province = department.hospital.province
    scene = RxScene(department)
    assert scene.draft(lines=[line("DEMO-C001")]).status_code == 422  # controlled drug
    _end(scene)
    other_department = DepartmentFactory(hospital=HospitalFactory())
    waiting = Scene(other_department).request()
    assert consultations_expire_due(now=timezone.now() + dt.timedelta(hours=2)) == 1
    province_peer.faults(
        refuse={
            "code": "E4001",
            "message": "药品编码未备案",
            "count": 1,
            "record_types": ["review"],
        }
    )
    RxScene(department).active()
    drain()
    assert set(Alert.objects.values_list("kind", flat=True)) == {
        AlertKind.CONTROLLED_DRUG,
        AlertKind.CONSULTATION_EXPIRED,
        AlertKind.DEAD_LETTER,
    }
    _, ours = _official(province)

    everything = _list(ours, "alerts")
    assert len(everything) == 3
    created = [a["created_at"] for a in everything]
    assert created == sorted(created, reverse=True)  # newest first
    controlled = _list(ours, "alerts", kind="controlled_drug")
    assert [a["kind"] for a in controlled] == ["controlled_drug"]
    assert controlled[0]["hospital"] == str(department.hospital_id)
    assert controlled[0]["hospital_name"] == department.hospital.name
    expired = _list(ours, "alerts", kind="consultation_expired")
    assert [a["subject_id"] for a in expired] == [waiting]
    dead = _list(ours, "alerts", kind="dead_letter")
    assert dead[0]["details"]["code"] == "E4001"
    assert _list(ours, "alerts", kind="upload_delay") == []
    by_hospital = _list(ours, "alerts", hospital=str(other_department.hospital_id))
    assert [a["kind"] for a in by_hospital] == ["consultation_expired"]
    tomorrow = timezone.localdate() + dt.timedelta(days=1)
    assert _list(ours, "alerts", **{"from": tomorrow.isoformat()}) == []
    assert len(_list(ours, "alerts", to=tomorrow.isoformat())) == 3
    # The alerts reached the regulator as records too (the dead letter's own alert also).
    alert_records = _list(ours, "records", record_type="alert")
    assert {r["payload"]["kind"] for r in alert_records} == {
        "controlled_drug",
        "consultation_expired",
        "dead_letter",
    }


def test_a_regulator_of_another_province_sees_nothing_of_this_one(
    province_peer: Platform, department
) -> None:
    scene = RxScene(department)
    _story(scene)
    assert scene.draft(lines=[line("DEMO-C001")]).status_code == 422
    drain()
    assert Alert.objects.exists()
    _, theirs = _official(_jiangsu())
    ours_hospital = str(department.hospital_id)
    for path in ("records", "alerts"):
        assert _list(theirs, path) == []
        assert _list(theirs, path, hospital=ours_hospital) == []
    assert _list(theirs, "records", record_type="consultation") == []
    assert _list(theirs, "alerts", kind="controlled_drug") == []
    for params in ({}, {"hospital": ours_hospital}, {"by": "doctor"}):
        response = theirs.get(f"{API}/indicators", params)
        assert response.status_code == 200, response.content
        assert response.json()["results"] == []
    _, ours = _official(department.hospital.province)
    assert len(_list(ours, "records")) == OutboxRecord.objects.count()
    rows = ours.get(f"{API}/indicators").json()["results"]
    assert [r["hospital"] for r in rows] == [ours_hospital]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "records"),
        ("get", "alerts"),
        ("get", "indicators"),
        ("post", "ws-ticket"),
    ],
)
def test_non_regulators_are_refused(method: str, path: str, department) -> None:
    doctor = PractitionerFactory(hospital=department.hospital).user
    for user in (PatientFactory(), doctor, UserFactory(role=Role.ADMINISTRATOR)):
        response = getattr(client_for(user), method)(f"{API}/{path}")
        assert response.status_code == 403, (user.role, response.content)
    lone = UserFactory(role=Role.REGULATOR)  # no province behind the role
    response = getattr(client_for(lone), method)(f"{API}/{path}")
    assert response.status_code == 403, response.content
    assert response.json()["code"] == "not_a_regulator"
    anonymous = getattr(APIClient(), method)(f"{API}/{path}")
    assert anonymous.status_code == 401, anonymous.content


def test_indicators_count_only_what_the_platform_received(
    province_peer: Platform, department
) -> None:
    province_peer.faults(down_for_seconds=60)
    RxScene(department)  # requested and accepted; the platform is down
    assert OutboxRecord.objects.filter(status=RecordStatus.PENDING).count() == 3
    _, ours = _official(department.hospital.province)
    assert _list(ours, "records") == []  # the platform received nothing
    rows = ours.get(f"{API}/indicators").json()["results"]
    province_peer.faults()
    assert [(r["consultations_requested"], r["consultations_answered"]) for r in rows] in (
        [],
        [(0, 0)],
    ), rows
