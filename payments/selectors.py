"""Reads of the payments context."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from backend.compiled_queries import CompiledQuery
from payments.models import Order

_OF_SUBJECT = CompiledQuery(
    lambda p: Order.objects.filter(kind=p.kind, subject_id=p.subject)[:1],  # one per subject
    kind=Order._meta.get_field("kind"),
    subject=Order._meta.get_field("subject_id"),
)


def order_of_subject(*, kind: str, subject_id: UUID | str) -> Order | None:
    """The order of a consultation or a prescription, if it has one."""
    return _OF_SUBJECT.first(kind=kind, subject=subject_id)


def order_amounts(*, kind: str, subject_id: UUID | str) -> dict[str, Any] | None:
    """What the regulator's records carry about an order (DOMAIN.md, "What the regulator
    receives"): its status, total and insurance split, in fen; None without an order."""
    order = order_of_subject(kind=kind, subject_id=subject_id)
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
