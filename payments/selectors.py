"""Reads of the payments context."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from payments.models import Order


def order_amounts(*, kind: str, subject_id: UUID | str) -> dict[str, Any] | None:
    """What the regulator's records carry about an order (DOMAIN.md, "What the regulator
    receives"): its status, total and insurance split, in fen; None without an order."""
    order = Order.objects.filter(kind=kind, subject_id=subject_id).first()
    if order is None:
        return None
    return {
        "order_id": str(order.pk),
        "status": order.status,
        "total": order.total,
        "channel": order.channel,
        "insurance_fund": order.insurance_fund or 0,
        "insurance_account": order.insurance_account or 0,
        "self_pay": order.self_pay if order.self_pay is not None else order.total,
        "refunded": order.refunded,
    }
