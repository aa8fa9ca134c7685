"""Writing and verifying the audit chain."""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder
from django.db import connection, transaction
from django.utils import timezone

from backend import canonical_json
from backend.audit.models import GENESIS_HASH, AuditChainHead, AuditEvent

CHAIN = "main"


@dataclass(frozen=True)
class RequestMeta:
    """Where an action came from: filled in by the edge (view or consumer)."""

    ip: str | None = None
    user_agent: str = ""

    @classmethod
    def from_request(cls, request: Any) -> RequestMeta:
        meta = getattr(request, "META", {})
        return cls(
            ip=meta.get("REMOTE_ADDR") or None, user_agent=meta.get("HTTP_USER_AGENT", "")[:300]
        )

    @classmethod
    def from_scope(cls, scope: dict[str, Any]) -> RequestMeta:
        """A WebSocket's (Channels scope): the client's address and user agent."""
        client = scope.get("client") or (None,)
        headers = dict(scope.get("headers") or [])
        agent = headers.get(b"user-agent", b"").decode("latin-1")[:300]
        return cls(ip=client[0] or None, user_agent=agent)


def _jsonable(value: Any) -> Any:
    """Round-trip through Django's encoder so UUIDs, dates and Decimals hash stably."""
    if value is None:
        return None
    return json.loads(json.dumps(value, cls=DjangoJSONEncoder))


def _canonical_time(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).isoformat(timespec="microseconds")


def event_hash(event: AuditEvent) -> str:
    body = {
        "seq": event.seq,
        "prev_hash": event.prev_hash,
        "occurred_at": _canonical_time(event.occurred_at),
        "actor_id": event.actor_id,
        "actor_repr": event.actor_repr,
        "actor_role": event.actor_role,
        "action": event.action,
        "object_type": event.object_type,
        "object_id": event.object_id,
        "before": event.before,
        "after": event.after,
        "ip": event.ip,
        "user_agent": event.user_agent,
    }
    return hashlib.sha256(event.prev_hash.encode() + canonical_json.dumps(body)).hexdigest()


@functools.cache
def _append_statements(vendor: str, count: int) -> tuple[str, str]:
    """The SQL to append ``count`` events, built once per process and count: the ORM
    would compile the same INSERT of fourteen columns for every event, which cost more
    than running it."""
    qn = connection.ops.quote_name
    events, head = qn(AuditEvent._meta.db_table), qn(AuditChainHead._meta.db_table)
    columns = ", ".join(qn(f.column) for f in _EVENT_FIELDS)
    row = "(" + ", ".join(["%s"] * len(_EVENT_FIELDS)) + ")"
    values = ", ".join([row] * count)
    # Locks the head row and takes the next seqs in one statement; a writer that waited
    # for the lock re-reads the committed head (READ COMMITTED), so seqs stay gap-free.
    # Names come from model metadata, values are parameters.
    claim = (
        f"UPDATE {head} SET last_seq = last_seq + %s WHERE name = %s "  # noqa: S608
        "RETURNING last_seq, last_hash"
    )
    if vendor == "postgresql":  # the inserts and the head's new hash in one round trip
        write = (
            f"WITH e AS (INSERT INTO {events} ({columns}) VALUES {values}) "  # noqa: S608
            f"UPDATE {head} SET last_hash = %s WHERE name = %s"
        )
    else:
        write = f"INSERT INTO {events} ({columns}) VALUES {values}"  # noqa: S608
    return claim, write


_EVENT_FIELDS = tuple(AuditEvent._meta.concrete_fields)


@dataclass(frozen=True)
class AuditEntry:
    """One event to append (``audit_records``); ``actor`` is an account or None;
    ``meta``: where it came from, if not the ``meta`` given to ``audit_records``."""

    action: str
    actor: Any = None
    object_type: str = ""
    object_id: Any = ""
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None
    meta: RequestMeta | None = None


_held = threading.local()


@contextmanager
def audit_together() -> Iterator[None]:
    """Events recorded inside the block, by any service, are appended together when it
    ends: one lock of the chain head and one write instead of one per event (approving
    a prescription also opens its order). Use it inside the transaction of the change;
    if the block raises nothing is appended (the transaction rolls back anyway). Nested
    blocks append with the outermost."""
    if getattr(_held, "entries", None) is not None:
        yield
        return
    entries: list[AuditEntry] = []
    _held.entries = entries
    try:
        yield
    finally:
        _held.entries = None
    audit_records(entries)


def audit_record(
    *,
    action: str,
    actor: Any = None,
    object_type: str = "",
    object_id: Any = "",
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
    meta: RequestMeta | None = None,
) -> AuditEvent | None:
    """Append one event to the chain, inside the caller's transaction; the event, or
    None when it waits for the end of an ``audit_together`` block.

    ``actor`` is an account (or None for the system). Call it last in a service, so that
    the chain head's row lock is held for as short a time as possible.
    """
    entry = AuditEntry(action, actor, object_type, object_id, before, after, meta)
    appended = audit_records([entry])
    return appended[0] if appended else None


#: Accounts whose reads of a patient's medical data are recorded (DOMAIN rule 12: every
#: access): hospital and pharmacy staff, officials, administrators. A patient (or the
#: guardian) reading their own records is the data subject, and is not recorded.
READ_AUDITED_ROLES = frozenset(
    {"doctor", "pharmacist", "pharmacy_staff", "regulator", "administrator"}
)


def audit_access(
    *,
    actor: Any,
    object_type: str,
    object_id: Any,
    what: str = "viewed",
    after: dict[str, Any] | None = None,
    meta: RequestMeta | None = None,
) -> AuditEvent | None:
    """Record that ``actor`` read medical data of this object (action
    ``<object_type>.<what>``), when the actor is staff (``READ_AUDITED_ROLES``). Called by
    the edge once the read was allowed, in its own short transaction."""
    if getattr(actor, "role", None) not in READ_AUDITED_ROLES:
        return None
    return audit_record(
        action=f"{object_type}.{what}",
        actor=actor,
        object_type=object_type,
        object_id=object_id,
        after=after,
        meta=meta,
    )


def audit_records(
    entries: list[AuditEntry], *, meta: RequestMeta | None = None
) -> list[AuditEvent]:
    """Append several events in order, in the caller's transaction, with one lock of the
    chain head and one write (a change made of two steps, such as signing and submitting
    for review, is two events). Inside ``audit_together`` they wait for its end (and
    the list returned is empty)."""
    held: list[AuditEntry] | None = getattr(_held, "entries", None)
    if held is not None:
        held.extend(e if e.meta or not meta else replace(e, meta=meta) for e in entries)
        return []
    if not entries:
        return []
    default_meta = meta or RequestMeta()
    claim, write = _append_statements(connection.vendor, len(entries))
    # No savepoint of its own: an append that fails fails the caller's transaction.
    with transaction.atomic(savepoint=False), connection.cursor() as cursor:
        cursor.execute(claim, [len(entries), CHAIN])
        head = cursor.fetchone()
        if head is None:  # the first event ever: make the head, then claim from it
            AuditChainHead.objects.get_or_create(name=CHAIN)
            cursor.execute(claim, [len(entries), CHAIN])
            head = cursor.fetchone()
        last_seq, prev_hash = head
        now = timezone.now()
        events: list[AuditEvent] = []
        values: list[Any] = []
        for seq, entry in enumerate(entries, start=last_seq - len(entries) + 1):
            actor = entry.actor
            where = entry.meta or default_meta
            event = AuditEvent(
                seq=seq,
                occurred_at=now,
                actor_id=str(actor.pk) if actor is not None else "",
                actor_repr=(str(actor)[:200] if actor is not None else "system"),
                actor_role=getattr(actor, "role", "") if actor is not None else "system",
                action=entry.action,
                object_type=entry.object_type,
                object_id=str(entry.object_id),
                before=_jsonable(entry.before),
                after=_jsonable(entry.after),
                ip=where.ip,
                user_agent=where.user_agent[:300],
                prev_hash=prev_hash,
            )
            event.hash = prev_hash = event_hash(event)
            values += [
                f.get_db_prep_save(getattr(event, f.attname), connection) for f in _EVENT_FIELDS
            ]
            events.append(event)
        if connection.vendor == "postgresql":
            cursor.execute(write, [*values, prev_hash, CHAIN])
        else:
            cursor.execute(write, values)
            AuditChainHead.objects.filter(name=CHAIN).update(last_hash=prev_hash)
    for event in events:
        event._state.adding = False
    return events


@dataclass(frozen=True)
class ChainBreak:
    seq: int
    reason: str


@dataclass(frozen=True)
class ChainReport:
    checked: int
    last_seq: int
    first_break: ChainBreak | None

    @property
    def ok(self) -> bool:
        return self.first_break is None


def _events() -> Iterator[AuditEvent]:
    return AuditEvent.objects.order_by("seq").iterator(chunk_size=2000)


def audit_chain_verify() -> ChainReport:
    """Recompute every hash in order; report the first row that does not fit."""
    expected_prev = GENESIS_HASH
    expected_seq = 1
    checked = 0
    for event in _events():
        if event.seq != expected_seq:
            return ChainReport(
                checked,
                expected_seq - 1,
                ChainBreak(
                    expected_seq, f"row {expected_seq} is missing (next row is {event.seq})"
                ),
            )
        if event.prev_hash != expected_prev:
            return ChainReport(
                checked,
                event.seq,
                ChainBreak(event.seq, "prev_hash does not match the hash of the row before"),
            )
        if event_hash(event) != event.hash:
            return ChainReport(
                checked,
                event.seq,
                ChainBreak(event.seq, "content does not match its hash (row was altered)"),
            )
        expected_prev = event.hash
        expected_seq += 1
        checked += 1
    head = AuditChainHead.objects.filter(name=CHAIN).first()
    last = expected_seq - 1
    if head is not None and (head.last_seq != last or head.last_hash != expected_prev):
        return ChainReport(
            checked,
            last,
            ChainBreak(
                last + 1,
                f"chain head says {head.last_seq} rows but {last} are present "
                "(rows were removed from the end)",
            ),
        )
    return ChainReport(checked, last, None)
