"""The prescription's order (issue 8): how prescriptions plug into payments.

DOMAIN rule 6: an order exists only once a pharmacist approved the prescription (the
``approve`` transition opens it; nothing else does). Its items are the lines at their
catalogue prices, plus the delivery fee when the patient chose home delivery (switching
re-prices the order while it is unpaid). Cancelled or expired: the order is closed, or
refunded whole with the insurance settlement reversed.
"""

from __future__ import annotations

from django.conf import settings

from backend.api.problems import DomainError
from payments.models import Order, OrderKind, RefundReason
from payments.selectors import order_of_subject
from payments.services import order_create, order_items_replace, order_release
from prescriptions.lifecycle import BEFORE_REVIEW
from prescriptions.models import Fulfilment, Prescription, PrescriptionEvent
from prescriptions.models import PrescriptionStatus as S
from prescriptions.selectors import prescription_status

KIND = OrderKind.PRESCRIPTION

#: After the pharmacist's approval and not cancelled or expired (DOMAIN rule 6).
APPROVED = frozenset({S.ACTIVE, S.CLAIMED, S.DISPENSED, S.SHIPPED, S.DELIVERED})

_RELEASES = {
    "cancel": RefundReason.PRESCRIPTION_CANCELLED,
    "expire": RefundReason.PRESCRIPTION_EXPIRED,
}


def order_items(prescription: Prescription) -> list[dict[str, object]]:
    items: list[dict[str, object]] = [
        {
            "code": line.drug_code,
            "name": f"{line.drug_name} {line.specification}".strip(),
            "unit_price": line.unit_price,
            "quantity": line.quantity,
        }
        for line in sorted(prescription.lines.all(), key=lambda line: line.position)
    ]
    if prescription.fulfilment == Fulfilment.DELIVERY and settings.PRESCRIPTION_DELIVERY_FEE > 0:
        items.append(
            {
                "code": "DELIVERY",
                "name": "药品配送费",
                "unit_price": settings.PRESCRIPTION_DELIVERY_FEE,
                "quantity": 1,
            }
        )
    return items


def order_paid(order: Order) -> bool:
    """The order was paid: whether the prescription still takes the money."""
    return prescription_status(prescription_id=order.subject_id) in APPROVED


def order_payable(order: Order) -> bool:
    """Whether the prescription may be paid for now; before the pharmacist's approval
    the refusal says so (``not_reviewed``, DOMAIN rule 6)."""
    status = prescription_status(prescription_id=order.subject_id)
    if status in BEFORE_REVIEW:
        raise DomainError(
            "not_reviewed", "A prescription is paid for after a pharmacist approved it."
        )
    return status in APPROVED


def after_transition(prescription: Prescription, event: PrescriptionEvent) -> None:
    """Called by ``prescriptions.services._transition`` in its transaction."""
    if event.action == "approve":
        items = order_items(prescription)
        if sum(int(str(i["unit_price"])) * int(str(i["quantity"])) for i in items) > 0:
            order_create(
                kind=KIND,
                subject_id=prescription.pk,
                hospital=prescription.hospital,
                profile=prescription.profile,
                account_id=prescription.profile.account_id,
                description=f"{prescription.hospital.name} 处方药品",
                items=items,
            )
    elif event.action in _RELEASES:
        order_release(kind=KIND, subject_id=prescription.pk, reason=_RELEASES[event.action])


def after_fulfilment(prescription: Prescription) -> None:
    """The patient chose pick-up or delivery: re-price an unpaid order."""
    order = order_of_subject(kind=KIND, subject_id=prescription.pk)
    if order is not None:
        items = order_items(prescription)
        if items != [
            {k: i[k] for k in ("code", "name", "unit_price", "quantity")} for i in order.items
        ]:
            order_items_replace(order_id=order.pk, items=items)
