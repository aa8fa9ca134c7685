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
    #: Who may make the move: "doctor", "pharmacist", "pharmacy" (its staff), "patient" or
    #: "system" (a periodic job, or a move that follows another in the same transaction).
    actors: frozenset[str]


_DOCTOR = frozenset({"doctor"})
_PHARMACIST = frozenset({"pharmacist"})
_PHARMACY = frozenset({"pharmacy"})
_PATIENT = frozenset({"patient"})
_SYSTEM = frozenset({"system"})

TRANSITIONS: dict[str, Transition] = {
    t.action: t
    for t in (
        Transition("sign", frozenset({S.DRAFT}), S.SIGNED, _DOCTOR),
        Transition("submit", frozenset({S.SIGNED}), S.UNDER_REVIEW, _SYSTEM),
        Transition("approve", frozenset({S.UNDER_REVIEW}), S.ACTIVE, _PHARMACIST),
        Transition("reject", frozenset({S.UNDER_REVIEW}), S.REVIEW_REJECTED, _PHARMACIST),
        Transition("revise", frozenset({S.REVIEW_REJECTED}), S.DRAFT, _DOCTOR),
        Transition("claim", frozenset({S.ACTIVE}), S.CLAIMED, _PHARMACY),
        Transition("release", frozenset({S.CLAIMED}), S.ACTIVE, _PHARMACY | _SYSTEM),
        Transition("dispense", frozenset({S.CLAIMED}), S.DISPENSED, _PHARMACY),
        Transition("ship", frozenset({S.DISPENSED}), S.SHIPPED, _PHARMACY),
        Transition("deliver", frozenset({S.SHIPPED}), S.DELIVERED, _PHARMACY),
        Transition(
            "cancel",
            frozenset({S.DRAFT, S.SIGNED, S.UNDER_REVIEW, S.REVIEW_REJECTED, S.ACTIVE}),
            S.CANCELLED,
            # The doctor or the patient; the system when a cancel pending while a pharmacy
            # held the claim takes effect on its release.
            _DOCTOR | _PATIENT | _SYSTEM,
        ),
        Transition(
            "expire",
            frozenset({S.SIGNED, S.UNDER_REVIEW, S.REVIEW_REJECTED, S.ACTIVE}),
            S.EXPIRED,
            _SYSTEM,
        ),
    )
}

#: Final statuses: nothing changes after them.
CLOSED = frozenset({S.DELIVERED, S.CANCELLED, S.EXPIRED})
#: Statuses in which the patient may see the access code and the pharmacy may claim.
CLAIMABLE = frozenset({S.ACTIVE})
#: Statuses before the pharmacist's approval (nothing claimable or payable).
BEFORE_REVIEW = frozenset({S.DRAFT, S.SIGNED, S.UNDER_REVIEW, S.REVIEW_REJECTED})
