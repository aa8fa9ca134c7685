"""The consultation state machine (DOMAIN.md, "Consultation lifecycle"): one table of
every allowed move, who may make it, and the error code for an illegal one."""

from __future__ import annotations

from dataclasses import dataclass

from consultations.models import ConsultationStatus as S


@dataclass(frozen=True)
class Transition:
    action: str
    sources: frozenset[str]
    target: str
    actor: str  # "patient", "doctor" or "system"


TRANSITIONS: dict[str, Transition] = {
    t.action: t
    for t in (
        Transition("enqueue", frozenset({S.REQUESTED}), S.WAITING, "system"),
        Transition("accept", frozenset({S.WAITING}), S.IN_PROGRESS, "doctor"),
        Transition("end", frozenset({S.IN_PROGRESS}), S.ENDED, "doctor"),
        Transition("refer_offline", frozenset({S.IN_PROGRESS}), S.REFERRED_OFFLINE, "doctor"),
        Transition(
            "refuse_first_visit",
            frozenset({S.WAITING, S.IN_PROGRESS}),
            S.FIRST_VISIT_REFUSED,
            "doctor",
        ),
        Transition("cancel", frozenset({S.REQUESTED, S.WAITING}), S.CANCELLED, "patient"),
        Transition("expire", frozenset({S.REQUESTED, S.WAITING}), S.EXPIRED, "system"),
    )
}

#: Statuses in which chat messages are accepted. A patient may describe the problem
#: while waiting; the doctor writes once they have accepted.
OPEN_FOR_MESSAGES = frozenset({S.WAITING, S.IN_PROGRESS})
#: Final statuses: nothing changes after them.
CLOSED = frozenset({S.ENDED, S.REFERRED_OFFLINE, S.FIRST_VISIT_REFUSED, S.CANCELLED, S.EXPIRED})
#: Statuses in a department's queue.
QUEUED = frozenset({S.WAITING})
