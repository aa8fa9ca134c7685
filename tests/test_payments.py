"""Payment and medical-insurance settlement (issue 8), through HTTP, against the bundled
payment peer as a real process that posts its notifications to our live server.

Stories: a consultation fee paid through the gateway queues the consultation; a
prescription paid with insurance plus self-pay and dispensed, with a ledger that adds
up; notifications repeated, out of order and after a query book nothing twice; forged
ones change nothing; every refund trigger refunds once; reconciliation finds what the
peer was told to change; no order exists before the pharmacist's approval."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from django.core.management import call_command
from django.utils import timezone

from backend.api.problems import DomainError
from backend.identity.models import Role
from backend.organisations.models import HospitalAdministrator
from consultations.models import Consultation
from consultations.services import consultations_expire_due
from payments.models import (
    EntryKind,
    LedgerEntry,
    NotificationLog,
    Order,
    OrderKind,
    OrderStatus,
    Reconciliation,
    Refund,
)
from payments.services import order_create
from prescriptions.services import prescriptions_expire_due
from regulators.models import Alert, AlertKind, OutboxRecord
from tests.conftest import require_redis
from tests.consult_helpers import client_for
from tests.consult_http_helpers import CONSOLE, MOBILE, Scene, end_body, require_postgres
from tests.factories import HospitalFactory, UserFactory
from tests.payment_helpers import (
    PaymentPeer,
    ledger_balance,
    payment_peer,
    run_background,
    sweep,
    wait_for,
)
from tests.rx_helpers import RxScene, line, status_of
from tests.worker_helpers import purge_queue, running

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("icd10")]

FEE = 2500
ADDRESS = {"recipient": "张三", "phone": "13800000000", "address": "杭州市西湖区"}


@pytest.fixture(scope="module")
def peer_process(tmp_path_factory: Any) -> Any:
    with payment_peer(tmp_path_factory.mktemp("payment-peer")) as running:
        yield running


@pytest.fixture
def peer(peer_process: PaymentPeer, live_server: Any, department: Any) -> PaymentPeer:
    peer_process.reset()
    peer_process.connect(department.hospital, live_server.url)
    return peer_process


@pytest.fixture
def priced(department: Any) -> Any:
    department.consultation_fee = FEE
    department.save(update_fields=["consultation_fee"])
    return department


def order_of(api: Any, subject_id: str) -> dict[str, Any]:
    response = api.get(f"{MOBILE}/orders")
    assert response.status_code == 200, response.content
    matching = [o for o in response.json()["results"] if o["subject"] == subject_id]
    assert len(matching) == 1, matching
    return dict(matching[0])


def start_paying(api: Any, order_id: str, channel: str) -> dict[str, Any]:
    response = api.post(f"{MOBILE}/orders/{order_id}/pay", {"channel": channel}, format="json")
    assert response.status_code == 200, response.content
    return dict(response.json())


def paid_order(order_id: str) -> bool:
    """Paid, and what it pays for was told (the consultation joined the queue)."""
    return Order.objects.filter(
        pk=order_id, status=OrderStatus.PAID, subject_told_at__isnull=False
    ).exists()


def pay_fee(peer: PaymentPeer, scene: Scene, consultation_id: str) -> dict[str, Any]:
    order = order_of(scene.patient_api, consultation_id)
    started = start_paying(scene.patient_api, order["id"], "wechat")
    peer.pay(started["pay_url"])
    wait_for(lambda: paid_order(order["id"]), what="the fee's notification")
    return order


def queue_ids(scene: Scene) -> list[str]:
    response = scene.doctor_api.get(f"{CONSOLE}/consultations", {"status": "waiting"})
    assert response.status_code == 200, response.content
    return [c["id"] for c in response.json()["results"]]


def assert_balanced(order: Order) -> None:
    """The ledger adds up to the order: charges = total, split as the order says."""
    order.refresh_from_db()
    charges = LedgerEntry.objects.filter(order=order, amount__gt=0)
    assert sum(e.amount for e in charges) == order.total
    kinds = ledger_balance(order)
    assert kinds.get(EntryKind.GATEWAY_CHARGE, 0) == order.self_pay
    assert kinds.get(EntryKind.INSURANCE_FUND, 0) == (order.insurance_fund or 0)
    assert kinds.get(EntryKind.INSURANCE_ACCOUNT, 0) == (order.insurance_account or 0)


# --- The whole story ---------------------------------------------------------------------------


def test_fee_then_insured_prescription_then_dispense_and_the_ledger_adds_up(peer, priced):
    scene = RxScene(priced, consultation=False)
    consultation_id = scene.request()
    order = order_of(scene.patient_api, consultation_id)
    assert (order["kind"], order["status"], order["total"]) == ("consultation_fee", "unpaid", FEE)
    # Not paid: the doctor does not see it.
    assert Consultation.objects.get(pk=consultation_id).status == "requested"
    assert consultation_id not in queue_ids(scene)

    started = start_paying(scene.patient_api, order["id"], "wechat")
    assert started["amount"] == FEE
    assert started["pay_url"].startswith(peer.url)
    peer.pay(started["pay_url"])
    wait_for(lambda: paid_order(order["id"]), what="the fee's notification")
    assert Consultation.objects.get(pk=consultation_id).status == "waiting"
    assert consultation_id in queue_ids(scene)
    assert_balanced(Order.objects.get(pk=order["id"]))

    # The doctor accepts, prescribes; the pharmacist approves; the doctor ends.
    assert scene.accept(consultation_id).status_code == 200
    scene.consultation_id = rx_id = consultation_id
    rx = scene
    assert rx_id
    prescription_id = rx.active(lines=[line(quantity=2, frequency="bid")])
    assert (
        scene.doctor_api.post(
            f"{CONSOLE}/consultations/{consultation_id}/end", end_body(fee=FEE), format="json"
        ).status_code
        == 200
    )

    drugs = order_of(scene.patient_api, prescription_id)
    assert drugs["kind"] == "prescription"
    assert drugs["status"] == "unpaid"
    paying = start_paying(scene.patient_api, drugs["id"], "insurance")
    split = paying["insurance"]
    total = drugs["total"]
    assert split["medfee_sumamt"] == total
    assert split["fund_pay_sumamt"] == total * 7 // 10
    assert split["fund_pay_sumamt"] + split["acct_pay"] + split["psn_cash_pay"] == total
    assert paying["amount"] == split["psn_cash_pay"] > 0
    peer.pay(paying["pay_url"])
    wait_for(lambda: paid_order(drugs["id"]), what="the self-pay notification")
    order_row = Order.objects.get(pk=drugs["id"])
    assert (order_row.insurance_fund, order_row.insurance_account, order_row.self_pay) == (
        split["fund_pay_sumamt"],
        split["acct_pay"],
        split["psn_cash_pay"],
    )
    assert_balanced(order_row)
    seen = order_of(scene.patient_api, prescription_id)
    assert (seen["status"], seen["insurance_fund"], seen["self_pay"]) == (
        "paid",
        split["fund_pay_sumamt"],
        split["psn_cash_pay"],
    )

    prescription_id, secret = rx.claimed(prescription_id)
    dispensed = rx.dispense(
        prescription_id, secret, items=[{"line": 1, "quantity": 2, "batch_number": "B1"}]
    )
    assert dispensed.status_code == 200, dispensed.content
    # Paying again is refused; the ledger has exactly one booking of each movement.
    again = scene.patient_api.post(
        f"{MOBILE}/orders/{drugs['id']}/pay", {"channel": "wechat"}, format="json"
    )
    assert again.status_code == 409
    assert again.json()["code"] == "order_not_payable"
    assert LedgerEntry.objects.count() == 4  # fee; fund, account and self-pay of the drugs
    # The regulator's records carry the fee and the order's amounts (DOMAIN.md).
    ended = OutboxRecord.objects.get(aggregate_id=consultation_id, record_type="consultation.ended")
    assert ended.payload["fee"] == FEE
    assert ended.payload["payment"]["status"] == "paid"
    assert ended.payload["payment"]["total"] == FEE
    record = OutboxRecord.objects.get(aggregate_id=prescription_id, record_type="dispense.dispense")
    assert record.payload["payment"] == {
        "order_id": drugs["id"],
        "status": "paid",
        "total": total,
        "channel": "insurance",
        "insurance_fund": split["fund_pay_sumamt"],
        "insurance_account": split["acct_pay"],
        "self_pay": split["psn_cash_pay"],
        "refunded": 0,
    }


# --- Nothing doubled, nothing lost -------------------------------------------------------------


def test_repeated_out_of_order_and_late_notifications_book_each_payment_once(
    peer, priced, settings
):
    peer.faults(duplicate_notifications=3, hold_notifications=True)
    scenes = [Scene(priced) for _ in range(3)]
    orders = []
    for scene in scenes:
        consultation_id = scene.request()
        order = order_of(scene.patient_api, consultation_id)
        peer.pay(start_paying(scene.patient_api, order["id"], "wechat")["pay_url"])
        orders.append(order["id"])
    # Held at the gateway: nothing arrived. The first order is settled by a query.
    assert not Order.objects.filter(status=OrderStatus.PAID).exists()
    counts = sweep(settings)
    assert counts["queried"] == 3
    assert Order.objects.filter(pk__in=orders, status=OrderStatus.PAID).count() == 3
    # Now every notification arrives, newest first, each four times.
    peer.flush()
    wait_for(
        lambda: NotificationLog.objects.filter(outcome="duplicate").count() >= 12,
        what="the held notifications and their copies",
    )
    assert not NotificationLog.objects.filter(outcome="applied").exists()
    for order_id in orders:
        row = Order.objects.get(pk=order_id)
        assert row.status == OrderStatus.PAID
        assert row.events.filter(action="pay").count() == 1
        assert_balanced(row)
    assert LedgerEntry.objects.filter(kind=EntryKind.GATEWAY_CHARGE).count() == 3
    assert Consultation.objects.filter(status="waiting").count() == 3


@pytest.mark.parametrize(
    ("fault", "why"),
    [
        ("bad_signature", "does not verify"),
        ("wrong_key", "does not verify"),
        ("stale_timestamp", "timestamp"),
    ],
)
def test_a_forged_stale_or_wrong_key_notification_changes_nothing(peer, priced, fault, why):
    peer.faults(**{fault: 1})
    scene = Scene(priced)
    consultation_id = scene.request()
    order = order_of(scene.patient_api, consultation_id)
    peer.pay(start_paying(scene.patient_api, order["id"], "wechat")["pay_url"])
    wait_for(
        lambda: NotificationLog.objects.filter(outcome="bad_signature").exists(),
        what="the forged delivery",
    )
    refused = NotificationLog.objects.get(outcome="bad_signature")
    assert why in refused.detail
    # The gateway retries with its true signature: applied once.
    wait_for(
        lambda: NotificationLog.objects.filter(outcome="applied").exists(),
        what="the genuine retry",
    )
    assert paid_order(order["id"])
    assert NotificationLog.objects.filter(outcome="applied").count() == 1

    def success_note() -> dict:
        return next(n for n in peer.notifications() if n["event_type"] == "TRANSACTION.SUCCESS")

    # The peer counts the retry once our answer reaches it, which may be just after the
    # log row above is committed.
    wait_for(lambda: success_note()["attempts"] >= 2, what="the peer to record the retry")
    note = success_note()
    assert note["attempts"] == 2
    assert note["delivered"]
    assert LedgerEntry.objects.count() == 1


def test_a_forged_post_is_refused_401_before_anything_is_read(peer, priced, client):
    scene = Scene(priced)
    consultation_id = scene.request()
    body = json.dumps({"id": "x", "event_type": "TRANSACTION.SUCCESS", "resource": {}}).encode()
    response = client.post(
        "/api/payments/v1/notify/wechat",
        data=body,
        content_type="application/json",
        HTTP_PAY_TIMESTAMP=str(int(timezone.now().timestamp())),
        HTTP_PAY_NONCE="n" * 32,
        HTTP_PAY_SERIAL="0" * 32,
        HTTP_PAY_SIGNATURE="AAAA",
    )
    assert response.status_code == 401
    assert response.json()["code"] == "bad_notification_signature"
    assert response["Content-Type"].startswith("application/problem+json")
    assert Order.objects.get(subject_id=consultation_id).status == OrderStatus.UNPAID


def test_a_notification_for_a_different_amount_is_refused_and_alerts(peer, priced, settings):
    peer.faults(amount_delta=1)
    scene = Scene(priced)
    consultation_id = scene.request()
    order = order_of(scene.patient_api, consultation_id)
    peer.pay(start_paying(scene.patient_api, order["id"], "wechat")["pay_url"])
    wait_for(
        lambda: NotificationLog.objects.filter(outcome="mismatch").exists(),
        what="the tampered notification",
    )
    assert Order.objects.get(pk=order["id"]).status == OrderStatus.UNPAID
    alert = Alert.objects.get(kind=AlertKind.PAYMENT_MISMATCH)
    assert alert.subject_id == order["id"]
    assert "amount" in alert.details["problem"]
    assert not LedgerEntry.objects.exists()
    # The query asks the gateway, which has the true amount: paid once.
    sweep(settings)
    assert Order.objects.get(pk=order["id"]).status == OrderStatus.PAID
    assert LedgerEntry.objects.get().amount == FEE


# --- Refunds ---------------------------------------------------------------------------------


def _paid_consultation(peer: PaymentPeer, department: Any) -> tuple[Scene, str, dict[str, Any]]:
    scene = Scene(department)
    consultation_id = scene.request()
    return scene, consultation_id, pay_fee(peer, scene, consultation_id)


def _refunded(order_id: str) -> Order:
    run_background()
    wait_for(
        lambda: Order.objects.get(pk=order_id).status == OrderStatus.REFUNDED,
        what="the refund's notification",
    )
    return Order.objects.get(pk=order_id)


@pytest.mark.parametrize("trigger", ["expire", "cancel", "refuse_first_visit"])
def test_full_refund_once_for_each_consultation_trigger(peer, priced, trigger):
    scene, consultation_id, order = _paid_consultation(peer, priced)

    def fire() -> Any:
        if trigger == "expire":
            return consultations_expire_due(now=timezone.now() + dt.timedelta(days=1))
        if trigger == "cancel":
            return scene.patient_api.post(f"{MOBILE}/consultations/{consultation_id}/cancel")
        return scene.doctor_api.post(
            f"{CONSOLE}/consultations/{consultation_id}/refuse-first-visit",
            {"reason": "首诊"},
            format="json",
        )

    fire()
    fire()  # the trigger repeats: nothing more happens
    refunded = _refunded(order["id"])
    assert (refunded.refunded, Refund.objects.filter(order=refunded).count()) == (FEE, 1)
    assert ledger_balance(refunded) == {
        EntryKind.GATEWAY_CHARGE: FEE,
        EntryKind.GATEWAY_REFUND: -FEE,
    }
    seen = order_of(scene.patient_api, consultation_id)
    assert seen["status"] == "refunded"
    assert seen["refunds"][0]["amount"] == FEE
    gateway = peer.http.get("/api/transactions").json()
    rows = gateway["results"] if isinstance(gateway, dict) else gateway
    assert [r["trade_state"] for r in rows] == ["REFUND"]


def test_referred_offline_refunds_the_configured_share(peer, priced, settings):
    settings.PAYMENT_REFER_OFFLINE_REFUND_PERCENT = 40
    scene, consultation_id, order = _paid_consultation(peer, priced)
    assert scene.accept(consultation_id).status_code == 200
    url = f"{CONSOLE}/consultations/{consultation_id}/refer-offline"
    assert scene.doctor_api.post(url, {"reason": "需要面诊"}, format="json").status_code == 200
    refunded = _refunded(order["id"])
    assert refunded.refunded == FEE * 40 // 100
    assert ledger_balance(refunded)[EntryKind.GATEWAY_REFUND] == -(FEE * 40 // 100)


@pytest.mark.parametrize("trigger", ["cancel", "expire"])
def test_a_cancelled_or_expired_insured_prescription_is_refunded_whole_insurance_reversed(
    peer, department, trigger
):
    rx = RxScene(department)
    prescription_id = rx.active(lines=[line(quantity=3, frequency="tid")])
    drugs = order_of(rx.patient_api, prescription_id)
    paying = start_paying(rx.patient_api, drugs["id"], "insurance")
    peer.pay(paying["pay_url"])
    wait_for(lambda: paid_order(drugs["id"]), what="the self-pay notification")
    for _ in range(2):  # the trigger repeats: refunded once
        if trigger == "cancel":
            rx.doctor_session.post(
                f"{CONSOLE}/prescriptions/{prescription_id}/cancel",
                {"reason": "停药"},
                format="json",
            )
        else:
            prescriptions_expire_due(now=timezone.now() + dt.timedelta(days=5))
    assert status_of(prescription_id) == {"cancel": "cancelled", "expire": "expired"}[trigger]
    assert Refund.objects.get().reason == f"prescription_{status_of(prescription_id)}"
    refunded = _refunded(drugs["id"])
    assert refunded.refunded == drugs["total"]
    assert sum(ledger_balance(refunded).values()) == 0
    assert set(ledger_balance(refunded)) == {
        EntryKind.GATEWAY_CHARGE,
        EntryKind.INSURANCE_FUND,
        EntryKind.INSURANCE_ACCOUNT,
        EntryKind.GATEWAY_REFUND,
        EntryKind.INSURANCE_FUND_REVERSAL,
        EntryKind.INSURANCE_ACCOUNT_REVERSAL,
    }
    assert refunded.settlements.get().status == "reversed"


def test_an_unpaid_order_closes_when_its_prescription_expires(peer, department):
    rx = RxScene(department)
    prescription_id = rx.active()
    drugs = order_of(rx.patient_api, prescription_id)
    start_paying(rx.patient_api, drugs["id"], "alipay")  # started, never paid
    prescriptions_expire_due(now=timezone.now() + dt.timedelta(days=5))
    run_background()
    order = Order.objects.get(pk=drugs["id"])
    assert order.status == OrderStatus.CLOSED
    assert order.attempts.get().status == "closed"
    late = rx.patient_api.post(
        f"{MOBILE}/orders/{drugs['id']}/pay", {"channel": "wechat"}, format="json"
    )
    assert late.status_code == 409
    assert late.json()["code"] == "order_not_payable"


# --- Rule 6: no order before approval ---------------------------------------------------------


def test_no_order_exists_for_a_prescription_before_the_pharmacists_approval(peer, department):
    rx = RxScene(department)

    def prescription_orders() -> int:
        return Order.objects.filter(kind=OrderKind.PRESCRIPTION).count()

    draft = rx.draft()
    prescription_id = draft.json()["id"]
    assert prescription_orders() == 0  # draft
    assert rx.sign(prescription_id).status_code == 200
    assert status_of(prescription_id) == "under_review"
    assert prescription_orders() == 0
    # The patient chooses delivery before approval: still no order.
    assert (
        rx.patient_api.post(
            f"{MOBILE}/prescriptions/{prescription_id}/fulfilment",
            {
                "method": "delivery",
                "address": {"recipient": "张", "phone": "13800000000", "address": "杭州"},
            },
            format="json",
        ).status_code
        == 200
    )
    assert prescription_orders() == 0
    rejected = rx.pharmacist_session.post(
        f"{CONSOLE}/prescriptions/{prescription_id}/reject", {"reason": "剂量"}, format="json"
    )
    assert rejected.status_code == 200
    assert prescription_orders() == 0
    listed = rx.patient_api.get(f"{MOBILE}/orders", {"kind": "prescription"}).json()
    assert listed["results"] == []
    # Nor can any code open one: the service itself asks the prescription.
    with pytest.raises(DomainError) as refused:
        order_create(
            kind=OrderKind.PRESCRIPTION,
            subject_id=prescription_id,
            hospital=rx.hospital,
            profile=rx.profile,
            account_id=rx.account.pk,
            description="before approval",
            items=[{"code": "X", "name": "x", "unit_price": 100, "quantity": 1}],
        )
    assert refused.value.code == "not_reviewed"
    assert prescription_orders() == 0
    # A second prescription goes through approval: now exactly one order, with delivery.
    approved = rx.active()
    assert prescription_orders() == 1
    assert Order.objects.get(kind=OrderKind.PRESCRIPTION).subject_id.hex == approved.replace(
        "-", ""
    )


def test_switching_to_delivery_reprices_an_unpaid_order_but_not_a_paid_one(peer, department):
    rx = RxScene(department)
    prescription_id = rx.active()
    before = order_of(rx.patient_api, prescription_id)["total"]
    address = ADDRESS
    url = f"{MOBILE}/prescriptions/{prescription_id}/fulfilment"
    assert (
        rx.patient_api.post(
            url, {"method": "delivery", "address": address}, format="json"
        ).status_code
        == 200
    )
    after = order_of(rx.patient_api, prescription_id)
    assert after["total"] == before + 1000
    assert after["items"][-1]["code"] == "DELIVERY"
    peer.pay(start_paying(rx.patient_api, after["id"], "wechat")["pay_url"])
    wait_for(lambda: paid_order(after["id"]), what="payment")
    back = rx.patient_api.post(
        url, {"method": "pickup", "pharmacy": str(rx.pharmacy.pk)}, format="json"
    )
    assert back.status_code == 409
    assert back.json()["code"] == "order_already_paid"


# --- Reconciliation ---------------------------------------------------------------------------


def test_reconciliation_is_clean_then_reports_each_difference_the_peer_introduced(peer, priced):
    paid = [_paid_consultation(peer, priced)[2] for _ in range(3)]
    today = timezone.localdate().isoformat()
    call_command("reconcile_payments", "--date", today, stdout=_Sink())
    clean = Reconciliation.objects.get(channel="wechat")
    assert clean.differences == []
    assert clean.bill_rows == 3

    numbers = [Order.objects.get(pk=o["id"]).attempts.get().out_trade_no for o in paid]
    peer.faults(bill_missing=[numbers[0]], bill_amount_delta={numbers[1]: -100}, bill_extra_rows=1)
    out = _Sink()
    call_command("reconcile_payments", "--date", today, stdout=out)
    latest = Reconciliation.objects.filter(channel="wechat").order_by("-ran_at").first()
    assert latest is not None
    kinds = sorted((d["kind"], d["our_reference"]) for d in latest.differences)
    assert [k for k, _ in kinds] == ["amount_differs", "missing_here", "missing_there"]
    by_kind = {d["kind"]: d for d in latest.differences}
    assert by_kind["missing_there"]["our_reference"] == numbers[0]
    assert by_kind["missing_there"]["order"] == paid[0]["id"]
    assert (
        by_kind["amount_differs"]["bill_amount"],
        by_kind["amount_differs"]["ledger_amount"],
    ) == (
        FEE - 100,
        FEE,
    )
    assert numbers[0] in out.text
    assert "3 difference" in out.text

    # The hospital's administrator sees the same in the console's API, and can run one;
    # another hospital's administrator sees nothing of it.
    admin = client_for(_administrator(priced.hospital))
    listed = admin.get(f"{CONSOLE}/payments/reconciliations", {"date": today})
    assert listed.status_code == 200, listed.content
    latest_runs = listed.json()["results"][:2]  # the second run: one per gateway
    # The extra bill row is there at both gateways; the other two only at WeChat Pay.
    assert {r["channel"]: len(r["differences"]) for r in latest_runs} == {"wechat": 3, "alipay": 1}
    assert not any(r["clean"] for r in latest_runs)
    run = admin.post(f"{CONSOLE}/payments/reconciliations", {"date": today}, format="json")
    assert run.status_code == 201, run.content
    assert [r["channel"] for r in run.json()] == ["wechat", "alipay"]
    stranger = client_for(_administrator(HospitalFactory()))
    assert stranger.get(f"{CONSOLE}/payments/reconciliations").json()["results"] == []
    patient = Scene(priced).patient_api
    assert patient.get(f"{CONSOLE}/payments/reconciliations").status_code == 403


def _administrator(hospital: Any) -> Any:
    user = UserFactory(role=Role.ADMINISTRATOR)
    HospitalAdministrator.objects.create(user=user, hospital=hospital)
    return user


class _Sink:
    def __init__(self) -> None:
        self.text = ""

    def write(self, text: str) -> None:
        self.text += text

    def flush(self) -> None:
        pass


# --- The fee at the end -----------------------------------------------------------------------


def test_a_lower_fee_at_the_end_refunds_the_difference_and_a_higher_one_is_refused(peer, priced):
    scene, consultation_id, order = _paid_consultation(peer, priced)
    assert scene.accept(consultation_id).status_code == 200
    url = f"{CONSOLE}/consultations/{consultation_id}/end"
    higher = scene.doctor_api.post(url, end_body(fee=FEE + 1), format="json")
    assert higher.status_code == 422
    assert higher.json()["code"] == "fee_above_paid"
    assert Consultation.objects.get(pk=consultation_id).status == "in_progress"
    assert scene.doctor_api.post(url, end_body(fee=FEE - 500), format="json").status_code == 200
    refunded = _refunded(order["id"])
    assert refunded.refunded == 500
    assert refunded.refunds.get().reason == "fee_reduced"
    assert sum(ledger_balance(refunded).values()) == FEE - 500


def test_with_no_fee_up_front_the_fee_at_the_end_opens_an_order(peer, department):
    scene = Scene(department)  # no listed fee: queued at once, nothing to pay yet
    consultation_id = scene.request()
    assert Consultation.objects.get(pk=consultation_id).status == "waiting"
    assert not Order.objects.exists()
    assert scene.accept(consultation_id).status_code == 200
    url = f"{CONSOLE}/consultations/{consultation_id}/end"
    assert scene.doctor_api.post(url, end_body(fee=1800), format="json").status_code == 200
    order = order_of(scene.patient_api, consultation_id)
    assert (order["status"], order["total"]) == ("unpaid", 1800)
    peer.pay(start_paying(scene.patient_api, order["id"], "alipay")["pay_url"])
    wait_for(lambda: paid_order(order["id"]), what="payment after the end")
    assert LedgerEntry.objects.get().channel == "alipay"


# --- With a real Celery worker ----------------------------------------------------------------


def test_a_real_worker_carries_out_the_refunds_and_closes_queued_on_commit(peer, priced, tmp_path):
    """No helper runs the background steps here: the worker takes them from the broker."""
    require_postgres("a Celery worker sharing the test database (SQLite's is in memory)")
    require_redis()
    purge_queue()
    with running(tmp_path / "worker.log") as worker:
        scene, consultation_id, order = _paid_consultation(peer, priced)
        assert (
            scene.patient_api.post(f"{MOBILE}/consultations/{consultation_id}/cancel").status_code
            == 200
        )
        # Another patient starts paying, then cancels: the attempt is closed at the gateway.
        other = Scene(priced)
        other_id = other.request()
        unpaid = order_of(other.patient_api, other_id)
        start_paying(other.patient_api, unpaid["id"], "wechat")
        assert (
            other.patient_api.post(f"{MOBILE}/consultations/{other_id}/cancel").status_code == 200
        )
        try:
            wait_for(
                lambda: Order.objects.get(pk=order["id"]).status == OrderStatus.REFUNDED,
                timeout=30,
                what="the worker's refund and the gateway's notification",
            )
            wait_for(
                lambda: Order.objects.get(pk=unpaid["id"]).attempts.get().status == "closed",
                timeout=30,
                what="the worker closing the attempt",
            )
        except AssertionError as exc:
            raise AssertionError(worker.tail()) from exc
    assert Order.objects.get(pk=unpaid["id"]).status == OrderStatus.CLOSED
    assert Refund.objects.get().status == "succeeded"
    closed = peer.http.get("/api/transactions").json()
    rows = closed["results"] if isinstance(closed, dict) else closed
    assert sorted(r["trade_state"] for r in rows) == ["CLOSED", "REFUND"]


# --- Channels ----------------------------------------------------------------------------------


def test_fully_insured_is_paid_at_once_and_an_uninsured_patient_is_refused(peer, priced):
    peer.coverage(fund_ratio=1.0)
    scene = Scene(priced)
    consultation_id = scene.request()
    order = order_of(scene.patient_api, consultation_id)
    paying = start_paying(scene.patient_api, order["id"], "insurance")
    assert paying["paid"] is True
    assert (paying["amount"], paying["pay_url"]) == (0, "")
    assert paying["insurance"]["fund_pay_sumamt"] == FEE
    assert Consultation.objects.get(pk=consultation_id).status == "waiting"
    assert ledger_balance(Order.objects.get(pk=order["id"])) == {EntryKind.INSURANCE_FUND: FEE}

    other = Scene(priced)
    other_id = other.request()
    peer.coverage(uninsured=[other.profile.id_number])
    refused = other.patient_api.post(
        f"{MOBILE}/orders/{order_of(other.patient_api, other_id)['id']}/pay",
        {"channel": "insurance"},
        format="json",
    )
    assert refused.status_code == 422
    assert refused.json()["code"] == "insurance_refused"
    assert "参保" in refused.json()["detail"]


def test_a_hospital_without_that_channel_refuses_it(peer, priced):
    from payments.models import GatewayConnection

    GatewayConnection.objects.filter(channel="alipay").update(enabled=False)
    scene = Scene(priced)
    order = order_of(scene.patient_api, scene.request())
    refused = scene.patient_api.post(
        f"{MOBILE}/orders/{order['id']}/pay", {"channel": "alipay"}, format="json"
    )
    assert refused.status_code == 422
    assert refused.json()["code"] == "channel_unavailable"
    assert not Order.objects.get(pk=order["id"]).attempts.exists()


def test_paying_twice_through_two_channels_refunds_the_second(peer, priced):
    """The patient opens WeChat Pay, switches to Alipay and pays, then pays the WeChat
    page that was still open: the second payment is booked and returned."""
    scene = Scene(priced)
    consultation_id = scene.request()
    order = order_of(scene.patient_api, consultation_id)
    first = start_paying(scene.patient_api, order["id"], "wechat")
    again = start_paying(scene.patient_api, order["id"], "wechat")
    assert again["out_trade_no"] == first["out_trade_no"]  # the same prepay comes back
    second = start_paying(scene.patient_api, order["id"], "alipay")
    peer.pay(second["pay_url"])
    wait_for(lambda: paid_order(order["id"]), what="the Alipay notification")
    peer.pay(first["pay_url"])
    wait_for(
        lambda: Refund.objects.filter(reason="duplicate_payment").exists(),
        what="the duplicate's notification",
    )
    run_background()
    wait_for(
        lambda: Refund.objects.filter(status="succeeded").exists(), what="the duplicate's refund"
    )
    paid = Order.objects.get(pk=order["id"])
    assert paid.status == OrderStatus.PAID  # the first payment stands
    assert paid.refunded == 0
    assert ledger_balance(paid) == {
        EntryKind.GATEWAY_CHARGE: 2 * FEE,
        EntryKind.GATEWAY_REFUND: -FEE,
    }
    assert paid.events.filter(action="pay").count() == 1
