"""Writes of the payments context: orders and their lifecycle, paying through a gateway
or through insurance plus self-pay, gateway notifications, refunds, the sweep that
queries what was never notified, and reconciliation against the channels' bills.

Rules kept here (CONTRACT section 8, DOMAIN.md "Payment"):

- Every order change goes through ``_transition``: row lock, the table in
  ``payments.lifecycle``, an ``OrderEvent`` and an audit event.
- Nothing leaves the building inside a transaction: calls to a gateway or the insurance
  platform happen before or after one, and what they answer is applied under a row lock.
- A notification is verified on its raw bytes, then decrypted, then checked against the
  attempt (merchant, amount, currency), then applied once: the ledger's unique
  ``(kind, reference)`` makes a repeated booking impossible, and the status checks make
  a late or repeated notification a no-op.
- Apps plug their order kinds in with ``order_kind_register``: payments never imports
  consultations or prescriptions. Once an order is paid its subject is told in a
  transaction of its own (so the lock order is always subject → order); a subject that
  no longer wants the money gets it refunded.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from backend.api.problems import DomainError
from backend.audit.services import RequestMeta, audit_record
from backend.identity.models import User
from backend.organisations.models import Hospital
from backend.patients.models import PatientProfile
from payments.channels import (
    SHANGHAI,
    BadSignature,
    ChannelError,
    Gateway,
    GatewayConfig,
    Insurance,
    InsuranceConfig,
    Settlement,
    decrypt_resource,
    verify_signed,
)
from payments.lifecycle import TRANSITIONS
from payments.models import (
    GATEWAYS,
    AttemptStatus,
    Channel,
    EntryKind,
    GatewayConnection,
    InsuranceConnection,
    InsuranceSettlement,
    LedgerEntry,
    NotificationLog,
    Order,
    OrderEvent,
    OrderStatus,
    PaymentAttempt,
    Reconciliation,
    Refund,
    RefundReason,
    RefundStatus,
    SettlementStatus,
)
from payments.selectors import order_of_subject

logger = logging.getLogger(__name__)

NOTIFY_PATH = "/api/payments/v1/notify/{channel}"


# --- Order kinds (plugged in by the apps) ----------------------------------------------------


@dataclass(frozen=True)
class OrderKindHooks:
    #: Told once the order is paid, in a transaction of its own; answers whether the
    #: subject still takes the money (False: it is refunded at once).
    on_paid: Callable[[Order], bool]
    #: Whether the subject may be paid for now (checked before a payment starts); a kind
    #: may raise its own ``DomainError`` instead where a more specific code says why.
    payable: Callable[[Order], bool] = field(default=lambda order: True)


_KINDS: dict[str, OrderKindHooks] = {}


def order_kind_register(kind: str, hooks: OrderKindHooks) -> None:
    _KINDS[kind] = hooks


# --- Lifecycle --------------------------------------------------------------------------------


def _locked(order_id: UUID | str) -> Order:
    found = Order.objects.select_for_update().filter(pk=order_id).first()
    if found is None:
        raise DomainError("not_found", "No such order.")
    return found


def _transition(
    order: Order,
    action: str,
    *,
    actor: User | None = None,
    reason: str = "",
    data: dict[str, Any] | None = None,
    meta: RequestMeta | None = None,
) -> OrderEvent:
    """The one place an order changes status. Call with the row locked."""
    transition = TRANSITIONS[action]
    source = order.status
    if source not in transition.sources:
        raise DomainError(
            "order_not_payable" if action == "pay" else "order_state_conflict",
            f"Cannot {action.replace('_', ' ')} an order that is {source}.",
            extra={"order_status": source},
        )
    now = timezone.now()
    order.status = transition.target
    if action == "pay":
        order.paid_at = now
    if action == "close":
        order.closed_at = now
    order.save()
    event = OrderEvent.objects.create(
        order=order,
        action=action,
        from_status=source,
        to_status=transition.target,
        actor=actor,
        reason=reason,
        data=data or {},
        created_at=now,
    )
    audit_record(
        action=f"order.{action}",
        actor=actor,
        object_type="order",
        object_id=order.pk,
        before={"status": source},
        after={"status": transition.target, "reason": reason, **(data or {})},
        meta=meta,
    )
    return event


def _checked_items(items: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    cleaned: list[dict[str, Any]] = []
    for item in items:
        unit_price, quantity = int(item["unit_price"]), int(item["quantity"])
        if unit_price < 0 or quantity <= 0:
            raise ValueError(f"bad order item {item!r}")
        cleaned.append(
            {
                "code": str(item["code"]),
                "name": str(item["name"]),
                "unit_price": unit_price,
                "quantity": quantity,
                "amount": unit_price * quantity,
            }
        )
    return cleaned, sum(int(i["amount"]) for i in cleaned)


def order_create(
    *,
    kind: str,
    subject_id: UUID | str,
    hospital: Hospital,
    profile: PatientProfile,
    account_id: UUID | str,
    description: str,
    items: list[dict[str, Any]],
) -> Order:
    """An unpaid order, in the caller's transaction (with the subject's row locked)."""
    if kind not in _KINDS:
        raise ValueError(f"order kind {kind!r} is not registered")
    cleaned, total = _checked_items(items)
    if total <= 0:
        raise ValueError("an order needs a positive total")
    order = Order(
        kind=kind,
        subject_id=subject_id,
        hospital=hospital,
        profile=profile,
        account_id=account_id,
        description=description[:120],
        items=cleaned,
        total=total,
    )
    # The kind decides whether its subject may be paid for now: a prescription only
    # after the pharmacist's approval (DOMAIN rule 6), whoever calls.
    if not _KINDS[kind].payable(order):
        raise DomainError(
            "order_not_payable", f"What this {kind} order would pay for cannot be paid now."
        )
    order.save()
    OrderEvent.objects.create(
        order=order,
        action="create",
        from_status="",
        to_status=order.status,
        data={"total": total},
        created_at=timezone.now(),
    )
    audit_record(
        action="order.create",
        actor=None,
        object_type="order",
        object_id=order.pk,
        after={"kind": kind, "subject": str(subject_id), "total": total},
    )
    return order


def order_items_replace(*, order_id: UUID | str, items: list[dict[str, Any]]) -> Order:
    """Change an unpaid order's items (a prescription's delivery fee when the patient
    switches between pick-up and delivery); refused once anything was paid."""
    cleaned, total = _checked_items(items)
    order = _locked(order_id)
    if order.status != OrderStatus.UNPAID or order.settlements.exists():
        raise DomainError(
            "order_already_paid", "The order is paid (or being paid): it cannot change now."
        )
    if total <= 0:
        raise ValueError("an order needs a positive total")
    before = order.total
    order.items, order.total = cleaned, total
    order.save(update_fields=["items", "total", "updated_at"])
    OrderEvent.objects.create(
        order=order,
        action="reprice",
        from_status=order.status,
        to_status=order.status,
        data={"total_before": before, "total": total},
        created_at=timezone.now(),
    )
    return order


# --- Connections ------------------------------------------------------------------------------


def _gateway_connection(hospital_id: Any, channel: str) -> GatewayConnection:
    connection = GatewayConnection.objects.filter(
        hospital_id=hospital_id, channel=channel, enabled=True
    ).first()
    if connection is None:
        raise DomainError(
            "channel_unavailable", f"This hospital takes no payments through {channel}."
        )
    return connection


def gateway_of(connection: GatewayConnection) -> Gateway:
    return Gateway(
        GatewayConfig(
            base_url=connection.base_url,
            mchid=connection.mchid,
            appid=connection.appid,
            signing_secret=connection.signing_secret,
            api_v3_key=connection.api_v3_key,
            public_key_pem=connection.gateway_public_key_pem,
            timeout=connection.timeout_seconds,
        )
    )


def _notify_url(connection: GatewayConnection) -> str:
    return connection.notify_base_url.rstrip("/") + NOTIFY_PATH.format(channel=connection.channel)


def _insurance_of(hospital: Hospital) -> tuple[InsuranceConnection, Insurance]:
    connection = InsuranceConnection.objects.filter(hospital=hospital, enabled=True).first()
    if connection is None:
        raise DomainError(
            "channel_unavailable", "This hospital has no medical-insurance settlement."
        )
    return connection, Insurance(
        InsuranceConfig(
            base_url=connection.base_url,
            paasid=connection.paasid,
            secret=connection.secret,
            fixmedins_code=connection.fixmedins_code,
            fixmedins_name=hospital.name,
            timeout=connection.timeout_seconds,
        )
    )


# --- Paying -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PayParameters:
    """What the app hands to the channel's SDK (for the bundled gateway: ``pay_url``)."""

    order: Order
    channel: str
    paid: bool
    gateway: str = ""
    out_trade_no: str = ""
    prepay_id: str = ""
    pay_url: str = ""
    amount: int = 0
    settlement: InsuranceSettlement | None = None


def _payable_order(order_id: UUID | str, account: User) -> Order:
    order = Order.objects.select_related("hospital", "profile").filter(pk=order_id).first()
    if order is None or order.account_id != account.pk:
        raise DomainError("not_found", "No such order.")
    if order.status != OrderStatus.UNPAID:
        raise DomainError(
            "order_not_payable",
            f"The order is {order.status}: only an unpaid order can be paid.",
            extra={"order_status": order.status},
        )
    if not _KINDS[order.kind].payable(order):
        raise DomainError("order_not_payable", "What this order pays for is no longer open.")
    return order


def order_pay(
    *, order_id: UUID | str, account: User, channel: str, meta: RequestMeta | None = None
) -> PayParameters:
    """Start paying: through a gateway, or insurance first and the self-pay part
    through the hospital's self-pay gateway. Safe to repeat (the same prepay comes back)."""
    if channel not in Channel.values:
        raise DomainError(
            "validation_error",
            "Unknown channel.",
            errors={"channel": [f"One of {', '.join(Channel.values)}."]},
        )
    order = _payable_order(order_id, account)
    settlement: InsuranceSettlement | None = None
    if channel == Channel.INSURANCE:
        settlement = _insurance_settle(order)
        order.refresh_from_db()
        if settlement.psn_cash_pay == 0:
            _apply_paid(order_id=order.pk, attempt=None, transaction_id="", paid_at=None)
            order_subject_tell(order_id=order.pk)
            order.refresh_from_db()
            return PayParameters(order=order, channel=channel, paid=True, settlement=settlement)
        gateway_channel, amount = order_insurance_self_pay_channel(order), settlement.psn_cash_pay
    else:
        if order.settlements.filter(status=SettlementStatus.SETTLED).exists():
            raise DomainError(
                "order_not_payable",
                "This order was settled with insurance: pay its self-pay part with the "
                "insurance channel.",
            )
        gateway_channel, amount = channel, order.total
    connection = _gateway_connection(order.hospital_id, gateway_channel)
    attempt, stale = _attempt_for(order, gateway_channel, amount)
    for other in stale:
        _enqueue("close_attempt", other)
    try:
        prepay = gateway_of(connection).prepay(
            out_trade_no=attempt.out_trade_no,
            amount=amount,
            description=order.description,
            notify_url=_notify_url(connection),
        )
    except ChannelError as exc:
        if exc.code == "ORDERPAID":  # paid a moment ago: book it from the gateway's word
            attempt_query(attempt_id=attempt.pk)
            order.refresh_from_db()
            return PayParameters(order=order, channel=channel, paid=True, settlement=settlement)
        raise DomainError(
            "channel_unavailable", f"The payment channel did not answer: {exc}", status=503
        ) from exc
    PaymentAttempt.objects.filter(pk=attempt.pk).update(
        prepay_id=prepay.prepay_id, pay_url=prepay.pay_url
    )
    audit_record(
        action="order.pay_started",
        actor=account,
        object_type="order",
        object_id=order.pk,
        after={"channel": channel, "gateway": gateway_channel, "amount": amount},
        meta=meta,
    )
    return PayParameters(
        order=order,
        channel=channel,
        paid=False,
        gateway=gateway_channel,
        out_trade_no=attempt.out_trade_no,
        prepay_id=prepay.prepay_id,
        pay_url=prepay.pay_url,
        amount=amount,
        settlement=settlement,
    )


def order_insurance_self_pay_channel(order: Order) -> str:
    connection = InsuranceConnection.objects.filter(hospital_id=order.hospital_id).first()
    return connection.self_pay_channel if connection else Channel.WECHAT


def _attempt_for(order: Order, channel: str, amount: int) -> tuple[PaymentAttempt, list[Any]]:
    """The open attempt for this channel and amount, or a new one; other open attempts
    are returned to be closed at their gateway (a patient who switches channel)."""
    with transaction.atomic():
        locked = _locked(order.pk)
        if locked.status != OrderStatus.UNPAID:
            raise DomainError("order_not_payable", f"The order is {locked.status}.")
        open_attempts = list(locked.attempts.filter(status=AttemptStatus.CREATED))
        for attempt in open_attempts:
            if attempt.channel == channel and attempt.amount == amount:
                return attempt, [a.pk for a in open_attempts if a.pk != attempt.pk]
        attempt = PaymentAttempt.objects.create(
            order=locked,
            channel=channel,
            out_trade_no=secrets.token_hex(16),
            amount=amount,
        )
        return attempt, [a.pk for a in open_attempts]


def _insurance_settle(order: Order) -> InsuranceSettlement:
    existing = order.settlements.filter(status=SettlementStatus.SETTLED).first()
    if existing is not None:
        return existing
    _connection, insurance = _insurance_of(order.hospital)
    ipt_otp_no = f"IH{order.pk.hex[:24]}{order.settlements.count():02d}"
    profile = order.profile
    try:
        result = insurance.settle(
            ipt_otp_no=ipt_otp_no,
            cert_no=profile.id_number,
            name=profile.real_name,
            items=order.items,
        )
    except ChannelError as exc:
        if not exc.retryable:
            raise DomainError(
                "insurance_refused", f"The insurance platform refused: {exc}"
            ) from exc
        raise DomainError(
            "channel_unavailable", f"The insurance platform did not answer: {exc}", status=503
        ) from exc
    with transaction.atomic():
        locked = _locked(order.pk)
        changed = locked.status != OrderStatus.UNPAID or locked.total != result.medfee_sumamt
        if not changed:
            settlement = _settlement_store(locked, ipt_otp_no, result)
    if changed:
        # The order changed while the platform settled it: give the settlement back.
        try:
            insurance.reverse(
                setl_id=result.setl_id, mdtrt_id=result.mdtrt_id, psn_no=result.psn_no
            )
        except ChannelError:
            logger.exception("could not reverse settlement %s of a changed order", result.setl_id)
        raise DomainError("order_not_payable", "The order changed while it was settled.")
    return settlement


def _settlement_store(locked: Order, ipt_otp_no: str, result: Settlement) -> InsuranceSettlement:
    """With the order locked: the settlement row and the split on the order."""
    settlement, _ = InsuranceSettlement.objects.get_or_create(
        ipt_otp_no=ipt_otp_no,
        defaults={
            "order": locked,
            "setl_id": result.setl_id,
            "mdtrt_id": result.mdtrt_id,
            "psn_no": result.psn_no,
            "medfee_sumamt": result.medfee_sumamt,
            "fund_pay_sumamt": result.fund_pay_sumamt,
            "acct_pay": result.acct_pay,
            "psn_cash_pay": result.psn_cash_pay,
            "settled_at": timezone.now(),
        },
    )
    locked.channel = Channel.INSURANCE
    locked.insurance_fund = settlement.fund_pay_sumamt
    locked.insurance_account = settlement.acct_pay
    locked.self_pay = settlement.psn_cash_pay
    locked.save(
        update_fields=[
            "channel",
            "insurance_fund",
            "insurance_account",
            "self_pay",
            "updated_at",
        ]
    )
    OrderEvent.objects.create(
        order=locked,
        action="insurance_settled",
        from_status=locked.status,
        to_status=locked.status,
        data={
            "setl_id": settlement.setl_id,
            "fund": settlement.fund_pay_sumamt,
            "account": settlement.acct_pay,
            "cash": settlement.psn_cash_pay,
        },
        created_at=timezone.now(),
    )
    return settlement


def _book(
    order: Order,
    kind: str,
    channel: str,
    amount: int,
    reference: str,
    our_reference: str,
    when: dt.datetime,
) -> bool:
    """Book one movement; False when it was booked before (a repeated notification)."""
    if amount == 0:
        return False
    try:
        with transaction.atomic():
            LedgerEntry.objects.create(
                order=order,
                kind=kind,
                channel=channel,
                amount=amount,
                reference=reference,
                our_reference=our_reference,
                occurred_at=when,
            )
    except IntegrityError:
        return False
    return True


def _apply_paid(
    *,
    order_id: UUID,
    attempt: PaymentAttempt | None,
    transaction_id: str,
    paid_at: dt.datetime | None,
) -> bool:
    """Book a gateway payment (or a fully insured settlement) once. Returns whether it
    changed anything. The subject is told afterwards, in a transaction of its own."""
    when = paid_at or timezone.now()
    with transaction.atomic():
        order = _locked(order_id)
        if attempt is not None:
            attempt = PaymentAttempt.objects.select_for_update().get(pk=attempt.pk)
            if attempt.status == AttemptStatus.PAID:
                return False  # late or repeated: already booked
            attempt.status = AttemptStatus.PAID
            attempt.transaction_id = transaction_id
            attempt.paid_at = when
            attempt.save(update_fields=["status", "transaction_id", "paid_at"])
        if attempt is not None:  # money received is booked, whatever happens next
            _book(
                order,
                EntryKind.GATEWAY_CHARGE,
                attempt.channel,
                attempt.amount,
                transaction_id,
                attempt.out_trade_no,
                when,
            )
        if order.status not in (OrderStatus.UNPAID, OrderStatus.CLOSED):
            # Paid already by another attempt: this money is a duplicate and goes back.
            if attempt is not None:
                _refund_request(order, RefundReason.DUPLICATE_PAYMENT, attempt=attempt)
            return True
        settlement = order.settlements.filter(status=SettlementStatus.SETTLED).first()
        if settlement is not None:
            for kind, amount in (
                (EntryKind.INSURANCE_FUND, settlement.fund_pay_sumamt),
                (EntryKind.INSURANCE_ACCOUNT, settlement.acct_pay),
            ):
                _book(
                    order,
                    kind,
                    Channel.INSURANCE,
                    amount,
                    settlement.setl_id,
                    settlement.ipt_otp_no,
                    when,
                )
        else:
            order.channel = attempt.channel if attempt else order.channel
            order.self_pay = attempt.amount if attempt else 0
            order.insurance_fund = order.insurance_account = 0
        was_closed = order.status == OrderStatus.CLOSED
        _transition(
            order,
            "pay",
            data={
                "channel": order.channel,
                "transaction_id": transaction_id,
                "self_pay": order.self_pay,
                "insurance_fund": order.insurance_fund,
                "insurance_account": order.insurance_account,
            },
        )
        if was_closed:
            _refund_request(order, RefundReason.PAID_AFTER_CLOSE)
        return True


def order_subject_tell(*, order_id: UUID | str) -> None:
    """Tell the consultation or prescription that its order is paid; refund it if the
    subject no longer wants it. Idempotent (``subject_told_at``)."""
    order = Order.objects.filter(pk=order_id).first()
    if order is None or order.subject_told_at is not None or order.status != OrderStatus.PAID:
        return
    with transaction.atomic():
        wanted = _KINDS[order.kind].on_paid(order)  # locks the subject first
        order = _locked(order_id)
        if order.subject_told_at is not None:
            return
        order.subject_told_at = timezone.now()
        order.save(update_fields=["subject_told_at", "updated_at"])
        if not wanted and order.status == OrderStatus.PAID:
            _refund_request(order, RefundReason.PAID_AFTER_CLOSE)


# --- Closing and refunding (triggered by the subject's lifecycle) ----------------------------


def order_release(
    *, kind: str, subject_id: UUID | str, reason: str, share_percent: int = 100
) -> Order | None:
    """The subject ended without needing (all) the money: close an unpaid order, refund
    a paid one (the configured share of the self-pay part; a full share also reverses
    the insurance settlement). Call in the subject's transaction. Idempotent."""
    order = order_of_subject(kind=kind, subject_id=subject_id)
    if order is None:
        return None
    order = _locked(order.pk)
    if order.status == OrderStatus.UNPAID:
        _transition(order, "close", reason=reason)
        transaction.on_commit(lambda: _enqueue("close_order", order.pk))
    elif order.status == OrderStatus.PAID:
        _refund_request(order, reason, share_percent=share_percent)
    return order


def order_refund_difference(*, kind: str, subject_id: UUID | str, amount: int) -> Order | None:
    """Give back part of the self-pay (the doctor lowered the fee at the end)."""
    order = order_of_subject(kind=kind, subject_id=subject_id)
    if order is None or amount <= 0:
        return order
    order = _locked(order.pk)
    if order.status == OrderStatus.PAID:
        _refund_request(order, RefundReason.FEE_REDUCED, amount=min(amount, order.self_pay or 0))
    return order


def _out_refund_no(order: Order, reason: str, attempt: PaymentAttempt | None) -> str:
    digest = hashlib.sha256(f"{order.pk}:{reason}:{attempt.pk if attempt else ''}".encode())
    return "RF" + digest.hexdigest()[:30]


def _refund_request(
    order: Order,
    reason: str,
    *,
    share_percent: int = 100,
    amount: int | None = None,
    attempt: PaymentAttempt | None = None,
) -> Refund | None:
    """With the order locked: one refund per (order, reason, attempt)."""
    number = _out_refund_no(order, reason, attempt)
    existing = Refund.objects.filter(out_refund_no=number).first()
    if existing is not None:
        return existing
    duplicate = reason == RefundReason.DUPLICATE_PAYMENT
    reverse = False
    if duplicate:
        if attempt is None:
            raise ValueError("a duplicate payment is refunded through its own attempt")
        amount = attempt.amount
    else:
        attempt = order.attempts.filter(status=AttemptStatus.PAID).order_by("paid_at").first()
        if amount is None:  # a share of what was paid; all of it reverses insurance too
            amount = (order.self_pay or 0) * share_percent // 100
            reverse = share_percent == 100 and (
                order.settlements.filter(status=SettlementStatus.SETTLED).exists()
            )
    if amount == 0 and not reverse:
        return None
    refund = Refund.objects.create(
        order=order,
        reason=reason,
        attempt=attempt if amount else None,
        amount=amount,
        reverse_insurance=reverse,
        out_refund_no=number,
    )
    if order.status == OrderStatus.PAID and not duplicate:
        _transition(
            order,
            "refund",
            reason=reason,
            data={"refund": str(refund.pk), "amount": amount, "reverse_insurance": reverse},
        )
    transaction.on_commit(lambda: _enqueue("execute_refund", refund.pk))
    return refund


def refund_execute(*, refund_id: UUID | str) -> str:
    """Carry a refund out at the insurance platform and the gateway (network first, then
    the booking under the order's lock). Retried by the sweep until it succeeds."""
    refund = (
        Refund.objects.select_related("order__hospital", "attempt").filter(pk=refund_id).first()
    )
    if refund is None or refund.status == RefundStatus.SUCCEEDED:
        return "done"
    order = refund.order
    try:
        if refund.reverse_insurance:
            _reverse_settlements(order)
        if refund.amount and refund.attempt is not None:
            connection = _gateway_connection(order.hospital_id, refund.attempt.channel)
            answer = gateway_of(connection).refund(
                out_trade_no=refund.attempt.out_trade_no,
                out_refund_no=refund.out_refund_no,
                amount=refund.amount,
                total=refund.attempt.amount,
                reason=refund.get_reason_display(),
                notify_url=_notify_url(connection),
            )
            Refund.objects.filter(pk=refund.pk, status__in=_OPEN_REFUND).update(
                status=RefundStatus.PROCESSING,
                refund_id=str(answer.get("refund_id", "")),
                attempts=refund.attempts + 1,
                last_error="",
            )
            if answer.get("status") == "SUCCESS":
                _refund_complete(refund.pk, answer)
            return "processing"
        _refund_complete(refund.pk, None)
        return "done"
    except (ChannelError, DomainError) as exc:
        Refund.objects.filter(pk=refund.pk).update(
            status=RefundStatus.FAILED, attempts=refund.attempts + 1, last_error=str(exc)[:300]
        )
        logger.warning("refund %s failed: %s", refund.pk, exc)
        return "failed"


_OPEN_REFUND = (RefundStatus.REQUESTED, RefundStatus.FAILED, RefundStatus.PROCESSING)


def _reverse_settlements(order: Order) -> None:
    for settlement in order.settlements.filter(status=SettlementStatus.SETTLED):
        _connection, insurance = _insurance_of(order.hospital)
        reversal = insurance.reverse(
            setl_id=settlement.setl_id, mdtrt_id=settlement.mdtrt_id, psn_no=settlement.psn_no
        )
        with transaction.atomic():
            locked = _locked(order.pk)
            row = InsuranceSettlement.objects.select_for_update().get(pk=settlement.pk)
            if row.status != SettlementStatus.SETTLED:
                continue
            row.status = SettlementStatus.REVERSED
            row.reversal_setl_id = reversal
            row.reversed_at = timezone.now()
            row.save(update_fields=["status", "reversal_setl_id", "reversed_at"])
            if locked.paid_at is not None:  # only what was booked is reversed in the ledger
                for kind, amount in (
                    (EntryKind.INSURANCE_FUND_REVERSAL, -row.fund_pay_sumamt),
                    (EntryKind.INSURANCE_ACCOUNT_REVERSAL, -row.acct_pay),
                ):
                    _book(
                        locked,
                        kind,
                        Channel.INSURANCE,
                        amount,
                        reversal or f"rev-{row.setl_id}",
                        row.ipt_otp_no,
                        row.reversed_at,
                    )
                locked.refunded += row.fund_pay_sumamt + row.acct_pay
                locked.save(update_fields=["refunded", "updated_at"])


def _refund_complete(refund_pk: UUID, answer: dict[str, Any] | None) -> bool:
    with transaction.atomic():
        refund = Refund.objects.select_related("attempt").get(pk=refund_pk)
        order = _locked(refund.order_id)
        refund = (
            Refund.objects.select_for_update(of=("self",))
            .select_related("attempt")
            .get(pk=refund_pk)
        )
        if refund.status == RefundStatus.SUCCEEDED:
            return False
        now = timezone.now()
        if refund.amount and refund.attempt is not None:
            _book(
                order,
                EntryKind.GATEWAY_REFUND,
                refund.attempt.channel,
                -refund.amount,
                str((answer or {}).get("refund_id") or refund.refund_id or refund.out_refund_no),
                refund.out_refund_no,
                now,
            )
            if refund.reason != RefundReason.DUPLICATE_PAYMENT:
                order.refunded += refund.amount
                order.save(update_fields=["refunded", "updated_at"])
        refund.status = RefundStatus.SUCCEEDED
        refund.succeeded_at = now
        if answer and answer.get("refund_id"):
            refund.refund_id = str(answer["refund_id"])
        refund.save(update_fields=["status", "succeeded_at", "refund_id"])
        open_refunds = order.refunds.exclude(status=RefundStatus.SUCCEEDED).exists()
        if order.status == OrderStatus.REFUNDING and not open_refunds:
            _transition(order, "refund_done", data={"refunded": order.refunded})
        return True


def close_order_execute(*, order_id: UUID | str) -> None:
    """After an unpaid order closed: close its open gateway attempts (a payment that won
    the race is booked and refunded) and give back an insurance settlement."""
    order = Order.objects.select_related("hospital").get(pk=order_id)
    for attempt in order.attempts.filter(status=AttemptStatus.CREATED):
        attempt_close(attempt_id=attempt.pk)
    order.refresh_from_db()
    if order.status == OrderStatus.CLOSED:
        _reverse_settlements(order)


def attempt_close(*, attempt_id: UUID | str) -> None:
    attempt = PaymentAttempt.objects.select_related("order").get(pk=attempt_id)
    if attempt.status != AttemptStatus.CREATED:
        return
    gateway = gateway_of(_gateway_connection(attempt.order.hospital_id, attempt.channel))
    try:
        gateway.close(out_trade_no=attempt.out_trade_no)
    except ChannelError as exc:
        if exc.code != "ORDERPAID":
            raise
        attempt_query(attempt_id=attempt.pk)
        return
    PaymentAttempt.objects.filter(pk=attempt.pk, status=AttemptStatus.CREATED).update(
        status=AttemptStatus.CLOSED
    )


def attempt_query(*, attempt_id: UUID | str) -> str:
    """Ask the gateway about an attempt we heard nothing of; book it if it was paid."""
    attempt = PaymentAttempt.objects.select_related("order").get(pk=attempt_id)
    connection = _gateway_connection(attempt.order.hospital_id, attempt.channel)
    data = gateway_of(connection).query(out_trade_no=attempt.out_trade_no)
    if data is None:
        return "unknown"
    state = str(data.get("trade_state", ""))
    if state in ("SUCCESS", "REFUND"):
        problem = _transaction_mismatch(connection, attempt, data)
        if problem:
            _mismatch_alert(attempt.order, problem, data, source="query")
            return "mismatch"
        _apply_paid(
            order_id=attempt.order_id,
            attempt=attempt,
            transaction_id=str(data.get("transaction_id", "")),
            paid_at=_parse_time(data.get("success_time")),
        )
        order_subject_tell(order_id=attempt.order_id)
        return "paid"
    return state.lower() or "unknown"


def _parse_time(value: Any) -> dt.datetime | None:
    try:
        return dt.datetime.fromisoformat(str(value))
    except ValueError:
        return None


# --- Notifications ---------------------------------------------------------------------------


@dataclass(frozen=True)
class NotificationAnswer:
    status: int
    outcome: str


def _transaction_mismatch(
    connection: GatewayConnection, attempt: PaymentAttempt, data: dict[str, Any]
) -> str:
    amount = data.get("amount") or {}
    if data.get("mchid") != connection.mchid:
        return "merchant differs"
    if amount.get("currency", "CNY") != "CNY":
        return "currency differs"
    if amount.get("total") != attempt.amount:
        return f"amount {amount.get('total')} differs from {attempt.amount}"
    return ""


def _mismatch_alert(order: Order, problem: str, data: dict[str, Any], *, source: str) -> None:
    from regulators.models import AlertKind
    from regulators.services import alert_raise

    with transaction.atomic():
        alert_raise(
            hospital=order.hospital,
            kind=AlertKind.PAYMENT_MISMATCH,
            rule="CONTRACT §8: a payment result must match its order (merchant, amount, currency)",
            subject_type="order",
            subject_id=order.pk,
            details={
                "problem": problem,
                "source": source,
                "out_trade_no": str(data.get("out_trade_no", "")),
                "out_refund_no": str(data.get("out_refund_no", "")),
                "amount": data.get("amount"),
            },
            report=False,
        )


def _log(
    channel: str, outcome: str, detail: str = "", envelope: dict[str, Any] | None = None
) -> None:
    NotificationLog.objects.create(
        channel=channel[:10],
        notification_id=str((envelope or {}).get("id", ""))[:64],
        event_type=str((envelope or {}).get("event_type", ""))[:40],
        outcome=outcome,
        detail=detail[:300],
        received_at=timezone.now(),
    )


def notification_receive(
    *, channel: str, headers: dict[str, str], body: bytes
) -> NotificationAnswer:
    """A gateway's asynchronous result (CONTRACT section 8): verify on the raw bytes,
    decrypt, check against the attempt or refund, apply once."""
    if channel not in GATEWAYS:
        raise DomainError("not_found", f"No payment channel {channel!r}.")
    lowered = {k.lower(): v for k, v in headers.items()}
    connection = None
    failure = "no gateway connection for this channel"
    for candidate in GatewayConnection.objects.filter(channel=channel, enabled=True):
        try:
            verify_signed(public_key=gateway_of(candidate).public_key, headers=lowered, body=body)
        except BadSignature as exc:
            failure = str(exc)
            continue
        connection = candidate
        break
    if connection is None:
        _log(channel, "bad_signature", failure)
        raise DomainError("bad_notification_signature", f"Refused: {failure}.")
    try:
        envelope = json.loads(body)
        data = decrypt_resource(api_v3_key=connection.api_v3_key, resource=envelope["resource"])
    except (ValueError, KeyError, TypeError) as exc:
        _log(channel, "bad_resource", str(exc))
        raise DomainError("bad_notification", f"The notification cannot be read: {exc}") from exc
    event_type = str(envelope.get("event_type", ""))
    if event_type == "TRANSACTION.SUCCESS":
        outcome = _transaction_notified(connection, data)
    elif event_type == "REFUND.SUCCESS":
        outcome = _refund_notified(connection, data)
    else:
        outcome = "ignored"
    _log(channel, outcome, envelope=envelope)
    if outcome in ("mismatch", "unknown_order"):
        raise DomainError(
            "notification_mismatch", "The notification does not match any order of ours."
        )
    return NotificationAnswer(204, outcome)


def _transaction_notified(connection: GatewayConnection, data: dict[str, Any]) -> str:
    attempt = (
        PaymentAttempt.objects.select_related("order__hospital")
        .filter(out_trade_no=str(data.get("out_trade_no", "")), channel=connection.channel)
        .first()
    )
    if attempt is None or attempt.order.hospital_id != connection.hospital_id:
        logger.warning("notification for an unknown order %r", data.get("out_trade_no"))
        return "unknown_order"
    problem = _transaction_mismatch(connection, attempt, data)
    if problem:
        _mismatch_alert(attempt.order, problem, data, source="notification")
        return "mismatch"
    if data.get("trade_state") not in ("SUCCESS", "REFUND"):
        return "ignored"
    changed = _apply_paid(
        order_id=attempt.order_id,
        attempt=attempt,
        transaction_id=str(data.get("transaction_id", "")),
        paid_at=_parse_time(data.get("success_time")),
    )
    order_subject_tell(order_id=attempt.order_id)
    return "applied" if changed else "duplicate"


def _refund_notified(connection: GatewayConnection, data: dict[str, Any]) -> str:
    refund = (
        Refund.objects.select_related("order__hospital", "attempt")
        .filter(out_refund_no=str(data.get("out_refund_no", "")))
        .first()
    )
    if refund is None or refund.order.hospital_id != connection.hospital_id:
        return "unknown_order"
    amount = data.get("amount") or {}
    if data.get("mchid") != connection.mchid or amount.get("refund") != refund.amount:
        _mismatch_alert(
            refund.order, "refund amount or merchant differs", data, source="notification"
        )
        return "mismatch"
    if data.get("refund_status") != "SUCCESS":
        return "ignored"
    return "applied" if _refund_complete(refund.pk, data) else "duplicate"


# --- Sweep ------------------------------------------------------------------------------------


def payments_sweep(*, now: dt.datetime | None = None) -> dict[str, int]:
    """What beat runs: query attempts we heard nothing of, retry refunds, tell subjects
    of payments a crashed worker left untold. Each step is idempotent."""
    now = now or timezone.now()
    counts = {"queried": 0, "refunds": 0, "told": 0}
    quiet = now - dt.timedelta(seconds=settings.PAYMENT_QUERY_AFTER_SECONDS)
    for pk in (
        PaymentAttempt.objects.filter(
            status=AttemptStatus.CREATED,
            created_at__lte=quiet,
            created_at__gte=now - dt.timedelta(days=2),
            order__status__in=(OrderStatus.UNPAID, OrderStatus.CLOSED),
        )
        .exclude(prepay_id="")
        .values_list("pk", flat=True)[:200]
    ):
        try:
            attempt_query(attempt_id=pk)
        except (ChannelError, DomainError) as exc:
            logger.warning("query of attempt %s failed: %s", pk, exc)
        counts["queried"] += 1
    for refund in Refund.objects.filter(status__in=_OPEN_REFUND, created_at__lte=quiet)[:200]:
        if refund.status == RefundStatus.PROCESSING and refund.attempt_id is not None:
            _refund_poll(refund)
        else:
            refund_execute(refund_id=refund.pk)
        counts["refunds"] += 1
    for pk in Order.objects.filter(
        status=OrderStatus.PAID, subject_told_at__isnull=True, paid_at__lte=quiet
    ).values_list("pk", flat=True)[:200]:
        order_subject_tell(order_id=pk)
        counts["told"] += 1
    for pk in (
        Order.objects.filter(status=OrderStatus.CLOSED, attempts__status=AttemptStatus.CREATED)
        .values_list("pk", flat=True)
        .distinct()[:100]
    ):
        try:
            close_order_execute(order_id=pk)
        except (ChannelError, DomainError) as exc:
            logger.warning("closing order %s failed: %s", pk, exc)
    return counts


def _refund_poll(refund: Refund) -> None:
    if refund.attempt is None:
        return
    connection = _gateway_connection(refund.order.hospital_id, refund.attempt.channel)
    try:
        answer = gateway_of(connection).refund_query(out_refund_no=refund.out_refund_no)
    except ChannelError as exc:
        logger.warning("refund query %s failed: %s", refund.pk, exc)
        return
    if answer.get("status") == "SUCCESS":
        _refund_complete(refund.pk, answer)


# --- Reconciliation ---------------------------------------------------------------------------


_BILL_KIND = {"PAY": EntryKind.GATEWAY_CHARGE, "REFUND": EntryKind.GATEWAY_REFUND}


def reconcile(*, day: dt.date, hospital: Hospital | None = None) -> list[Reconciliation]:
    """Compare each gateway's bill for ``day`` (Asia/Shanghai) with our ledger and store
    every difference: missing here, missing there, amount differs."""
    start = dt.datetime.combine(day, dt.time.min, tzinfo=SHANGHAI)
    end = start + dt.timedelta(days=1)
    runs = []
    connections = GatewayConnection.objects.filter(enabled=True)
    if hospital is not None:
        connections = connections.filter(hospital=hospital)
    for connection in connections.select_related("hospital"):
        rows = gateway_of(connection).bill(day=day)
        bill: dict[tuple[str, str], int] = {}
        for row in rows:
            found = _BILL_KIND.get(row.get("type", ""))
            if found is None:
                continue
            kind = str(found)
            reference = (
                row["out_refund_no"] if kind == EntryKind.GATEWAY_REFUND else row["out_trade_no"]
            )
            sign = -1 if kind == EntryKind.GATEWAY_REFUND else 1
            bill[(kind, reference)] = bill.get((kind, reference), 0) + sign * int(row["amount"])
        ours: dict[tuple[str, str], tuple[int, str]] = {}
        for entry in LedgerEntry.objects.filter(
            order__hospital=connection.hospital,
            channel=connection.channel,
            kind__in=_BILL_KIND.values(),
            occurred_at__gte=start,
            occurred_at__lt=end,
        ):
            key = (entry.kind, entry.our_reference)
            amount, _ = ours.get(key, (0, ""))
            ours[key] = (amount + entry.amount, str(entry.order_id))
        differences = []
        for key in sorted(set(bill) | set(ours)):
            entry_kind, reference = key
            bill_amount = bill.get(key)
            ledger_amount, order_id = ours.get(key, (None, ""))
            if bill_amount == ledger_amount:
                continue
            if ledger_amount is None:
                order_id = _order_of_reference(entry_kind, reference)
            differences.append(
                {
                    "kind": (
                        "missing_here"
                        if ledger_amount is None
                        else "missing_there"
                        if bill_amount is None
                        else "amount_differs"
                    ),
                    "type": "PAY" if entry_kind == EntryKind.GATEWAY_CHARGE else "REFUND",
                    "our_reference": reference,
                    "order": order_id,
                    "bill_amount": bill_amount,
                    "ledger_amount": ledger_amount,
                }
            )
        runs.append(
            Reconciliation.objects.create(
                hospital=connection.hospital,
                channel=connection.channel,
                bill_date=day,
                ran_at=timezone.now(),
                bill_rows=len(rows),
                ledger_rows=len(ours),
                differences=differences,
            )
        )
    return runs


def _order_of_reference(kind: str, reference: str) -> str:
    if kind == EntryKind.GATEWAY_CHARGE:
        attempt = PaymentAttempt.objects.filter(out_trade_no=reference).first()
        return str(attempt.order_id) if attempt else ""
    refund = Refund.objects.filter(out_refund_no=reference).first()
    return str(refund.order_id) if refund else ""


# --- Queueing ---------------------------------------------------------------------------------


def _enqueue(what: str, pk: Any) -> None:
    """Start a background step after commit; if the broker is down the sweep catches up."""
    from payments import tasks

    task: Any = {
        "close_order": tasks.close_order,
        "close_attempt": tasks.close_attempt,
        "execute_refund": tasks.execute_refund,
    }[what]
    try:
        task.delay(str(pk))
    except Exception:
        logger.warning("could not queue %s for %s; the sweep will", what, pk, exc_info=True)
