"""The order state machine: one table of every allowed move (CONTRACT section 8)."""

from __future__ import annotations

from dataclasses import dataclass

from payments.models import OrderStatus as S


@dataclass(frozen=True)
class Transition:
    action: str
    sources: frozenset[str]
    target: str


TRANSITIONS: dict[str, Transition] = {
    t.action: t
    for t in (
        # A notification (or a query) that arrives after we closed the order still books
        # the money: the order is paid, then refunded at once (paid_after_close).
        Transition("pay", frozenset({S.UNPAID, S.CLOSED}), S.PAID),
        Transition("close", frozenset({S.UNPAID}), S.CLOSED),
        Transition("refund", frozenset({S.PAID}), S.REFUNDING),
        Transition("refund_done", frozenset({S.REFUNDING}), S.REFUNDED),
    )
}

#: Statuses in which money is held for the order.
HOLDING = frozenset({S.PAID, S.REFUNDING})
