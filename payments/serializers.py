"""How orders look on the wire (the patients' API)."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from payments.models import Channel, Order, OrderKind, OrderStatus, RefundStatus


def order_state(order: Order) -> dict[str, Any]:
    return {
        "id": str(order.pk),
        "kind": order.kind,
        "subject": str(order.subject_id),
        "description": order.description,
        "status": order.status,
        "total": order.total,
        "items": order.items,
        "channel": order.channel or None,
        "insurance_fund": order.insurance_fund,
        "insurance_account": order.insurance_account,
        "self_pay": order.self_pay,
        "refunded": order.refunded,
        "refunds": [
            {
                "id": str(r.pk),
                "reason": r.reason,
                "amount": r.amount,
                "reverse_insurance": r.reverse_insurance,
                "status": r.status,
                "created_at": r.created_at.isoformat(),
                "succeeded_at": r.succeeded_at.isoformat() if r.succeeded_at else None,
            }
            for r in order.refunds.all()
        ],
        "created_at": order.created_at.isoformat(),
        "paid_at": order.paid_at.isoformat() if order.paid_at else None,
        "closed_at": order.closed_at.isoformat() if order.closed_at else None,
    }


class OrderStateSerializer(serializers.BaseSerializer):  # type: ignore[type-arg]
    def to_representation(self, instance: Order) -> dict[str, Any]:
        return order_state(instance)


class RefundOutput(serializers.Serializer):  # type: ignore[type-arg]
    id = serializers.UUIDField()
    reason = serializers.CharField()
    amount = serializers.IntegerField(help_text="fen back to the patient's wallet")
    reverse_insurance = serializers.BooleanField()
    status = serializers.ChoiceField(choices=RefundStatus.values)
    created_at = serializers.DateTimeField()
    succeeded_at = serializers.DateTimeField(allow_null=True)


class OrderItemOutput(serializers.Serializer):  # type: ignore[type-arg]
    code = serializers.CharField()
    name = serializers.CharField()
    unit_price = serializers.IntegerField(help_text="fen")
    quantity = serializers.IntegerField()
    amount = serializers.IntegerField(help_text="fen")


class OrderOutput(serializers.Serializer):  # type: ignore[type-arg]
    """Documents ``order_state`` for the OpenAPI schema. Amounts in fen."""

    id = serializers.UUIDField()
    kind = serializers.ChoiceField(choices=OrderKind.values)
    subject = serializers.UUIDField(help_text="the consultation or prescription")
    description = serializers.CharField()
    status = serializers.ChoiceField(choices=OrderStatus.values)
    total = serializers.IntegerField()
    items = OrderItemOutput(many=True)
    channel = serializers.ChoiceField(choices=Channel.values, allow_null=True)
    insurance_fund = serializers.IntegerField(allow_null=True)
    insurance_account = serializers.IntegerField(allow_null=True)
    self_pay = serializers.IntegerField(allow_null=True)
    refunded = serializers.IntegerField()
    refunds = RefundOutput(many=True)
    created_at = serializers.DateTimeField()
    paid_at = serializers.DateTimeField(allow_null=True)
    closed_at = serializers.DateTimeField(allow_null=True)


class PayInput(serializers.Serializer):  # type: ignore[type-arg]
    channel = serializers.ChoiceField(choices=Channel.values)


class SettlementOutput(serializers.Serializer):  # type: ignore[type-arg]
    setl_id = serializers.CharField()
    medfee_sumamt = serializers.IntegerField()
    fund_pay_sumamt = serializers.IntegerField()
    acct_pay = serializers.IntegerField()
    psn_cash_pay = serializers.IntegerField()


class PayOutput(serializers.Serializer):  # type: ignore[type-arg]
    order = OrderOutput()
    channel = serializers.ChoiceField(choices=Channel.values)
    paid = serializers.BooleanField(help_text="true when nothing is left to pay (fully insured)")
    gateway = serializers.CharField(help_text="the gateway that takes the (self-pay) amount")
    amount = serializers.IntegerField(help_text="fen to pay through the gateway")
    out_trade_no = serializers.CharField()
    prepay_id = serializers.CharField(help_text="hand to the channel's SDK")
    pay_url = serializers.CharField(help_text="the bundled gateway's pay page")
    insurance = SettlementOutput(allow_null=True)
