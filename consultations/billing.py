"""The consultation's fee order (issue 8): how consultations plug into payments.

- Requested with a listed fee (the doctor's own, else the department's): an unpaid order
  is opened with the consultation, which waits in ``requested`` (out of every queue)
  until it is paid. With no listed fee it is queued at once.
- Cancelled, expired or refused as a first visit: the order is closed, or refunded in
  full (insurance reversed). Referred offline: the configured share of the self-pay part.
- Ended: the fee the doctor records may be lower than what was paid (the difference is
  refunded) but not higher (``fee_above_paid``). With nothing paid up front, a fee
  recorded at the end opens an order then (post-paid).
"""

from __future__ import annotations

from django.conf import settings

from backend.api.problems import DomainError
from backend.organisations.models import Department, Practitioner
from consultations.models import Consultation, ConsultationEvent
from payments.models import OrderKind, RefundReason
from payments.selectors import order_of_subject
from payments.services import order_create, order_refund_difference, order_release

KIND = OrderKind.CONSULTATION_FEE

_RELEASES = {
    "cancel": (RefundReason.CONSULTATION_CANCELLED, None),
    "expire": (RefundReason.CONSULTATION_EXPIRED, None),
    "refuse_first_visit": (RefundReason.FIRST_VISIT_REFUSED, None),
    "refer_offline": (RefundReason.REFERRED_OFFLINE, "PAYMENT_REFER_OFFLINE_REFUND_PERCENT"),
}


def listed_fee(*, department: Department, doctor: Practitioner | None) -> int:
    if doctor is not None and doctor.consultation_fee is not None:
        return int(doctor.consultation_fee)
    return int(department.consultation_fee)


def _open_order(consultation: Consultation, amount: int) -> None:
    department = consultation.department
    order_create(
        kind=KIND,
        subject_id=consultation.pk,
        hospital=consultation.hospital,
        profile=consultation.profile,
        account_id=consultation.account_id,
        description=f"{consultation.hospital.name} {department.name} 复诊费",
        items=[
            {
                "code": f"CONSULT-{department.code}",
                "name": "互联网复诊诊查费",
                "unit_price": amount,
                "quantity": 1,
            }
        ],
    )


def order_open_for_request(consultation: Consultation) -> bool:
    """In the request's transaction: True when the consultation must wait for payment."""
    if consultation.fee <= 0:
        return False
    _open_order(consultation, consultation.fee)
    return True


def end_fee_check(consultation: Consultation, fee: int) -> None:
    order = order_of_subject(kind=KIND, subject_id=consultation.pk)
    if order is not None and fee > order.total:
        raise DomainError(
            "fee_above_paid",
            f"The fee ({fee} fen) is more than the patient paid ({order.total} fen).",
            errors={"fee": [f"At most {order.total} fen."]},
        )


def after_transition(consultation: Consultation, event: ConsultationEvent) -> None:
    """Called by ``consultations.services._transition`` in its transaction."""
    release = _RELEASES.get(event.action)
    if release is not None:
        reason, share_setting = release
        share = getattr(settings, share_setting) if share_setting else 100
        order_release(kind=KIND, subject_id=consultation.pk, reason=reason, share_percent=share)
    elif event.action == "end":
        order = order_of_subject(kind=KIND, subject_id=consultation.pk)
        if order is None:
            if consultation.fee > 0:
                _open_order(consultation, consultation.fee)
        elif consultation.fee < order.total:
            order_refund_difference(
                kind=KIND, subject_id=consultation.pk, amount=order.total - consultation.fee
            )
