"""The prescription state machine (DOMAIN.md, "Prescription lifecycle"): one table of
every allowed move and who may make it."""

from __future__ import annotations

from dataclasses import dataclass

from prescriptions.models import PrescriptionStatus as S


@dataclass(frozen=True)
class Transition:
    action: str
    sources: frozenset[str]
    target: str
    actor: str  # "doctor", "pharmacist", "pharmacy", "patient" or "system"


TRANSITIONS: dict[str, Transition] = {
    t.action: t
    for t in (
        Transition("sign", frozenset({S.DRAFT}), S.SIGNED, "doctor"),
        Transition("submit", frozenset({S.SIGNED}), S.UNDER_REVIEW, "system"),
        Transition("approve", frozenset({S.UNDER_REVIEW}), S.ACTIVE, "pharmacist"),
        Transition("reject", frozenset({S.UNDER_REVIEW}), S.REVIEW_REJECTED, "pharmacist"),
        Transition("revise", frozenset({S.REVIEW_REJECTED}), S.DRAFT, "doctor"),
        Transition("claim", frozenset({S.ACTIVE}), S.CLAIMED, "pharmacy"),
        Transition("release", frozenset({S.CLAIMED}), S.ACTIVE, "pharmacy"),
        Transition("dispense", frozenset({S.CLAIMED}), S.DISPENSED, "pharmacy"),
        Transition("ship", frozenset({S.DISPENSED}), S.SHIPPED, "pharmacy"),
        Transition("deliver", frozenset({S.SHIPPED}), S.DELIVERED, "pharmacy"),
        Transition(
            "cancel",
            frozenset({S.DRAFT, S.SIGNED, S.UNDER_REVIEW, S.REVIEW_REJECTED, S.ACTIVE}),
            S.CANCELLED,
            "doctor",
        ),
        Transition(
            "expire",
            frozenset({S.SIGNED, S.UNDER_REVIEW, S.REVIEW_REJECTED, S.ACTIVE}),
            S.EXPIRED,
            "system",
        ),
    )
}

#: Final statuses: nothing changes after them.
CLOSED = frozenset({S.DELIVERED, S.CANCELLED, S.EXPIRED})
#: Statuses in which the patient may see the access code and the pharmacy may claim.
CLAIMABLE = frozenset({S.ACTIVE})
#: Statuses before the pharmacist's approval (nothing claimable or payable).
BEFORE_REVIEW = frozenset({S.DRAFT, S.SIGNED, S.UNDER_REVIEW, S.REVIEW_REJECTED})
