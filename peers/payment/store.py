"""The payment peer's own store: one SQLite file in WAL mode behind one lock.

Every amount is an integer number of fen. A transaction is unique by ``(mchid,
out_trade_no)``, a refund by ``(mchid, out_refund_no)``, a settlement by ``(paasid,
ipt_otp_no)``. Notifications are rows too (their body is built once, when the payment or
refund succeeds, and every delivery re-sends those bytes), so a pending notification
survives a restart of the peer and is picked up where it was; so is a refund still
``PROCESSING``. Nonces seen are kept per merchant or institution until their timestamp has
left the window, so a replay is refused across a restart as well.

A state change and the notification it causes are written in one SQLite transaction.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS transactions (
    seq INTEGER PRIMARY KEY,
    mchid TEXT NOT NULL,
    out_trade_no TEXT NOT NULL,
    appid TEXT NOT NULL,
    description TEXT NOT NULL,
    notify_url TEXT NOT NULL,
    total INTEGER NOT NULL,
    attach TEXT NOT NULL,
    time_expire TEXT,
    expire_epoch REAL,
    prepay_id TEXT NOT NULL UNIQUE,
    transaction_id TEXT UNIQUE,
    trade_state TEXT NOT NULL,
    created_at TEXT NOT NULL,
    success_time TEXT,
    success_epoch REAL,
    closed_at TEXT,
    UNIQUE (mchid, out_trade_no)
);
CREATE TABLE IF NOT EXISTS refunds (
    seq INTEGER PRIMARY KEY,
    mchid TEXT NOT NULL,
    out_refund_no TEXT NOT NULL,
    out_trade_no TEXT NOT NULL,
    transaction_id TEXT NOT NULL,
    refund_id TEXT NOT NULL UNIQUE,
    reason TEXT NOT NULL,
    notify_url TEXT NOT NULL,
    refund INTEGER NOT NULL,
    total INTEGER NOT NULL,
    status TEXT NOT NULL,
    create_time TEXT NOT NULL,
    due_at REAL NOT NULL,
    success_time TEXT,
    success_epoch REAL,
    UNIQUE (mchid, out_refund_no)
);
CREATE INDEX IF NOT EXISTS refunds_trade ON refunds (mchid, out_trade_no);
CREATE INDEX IF NOT EXISTS refunds_due ON refunds (status, due_at);
CREATE TABLE IF NOT EXISTS notifications (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    mchid TEXT NOT NULL,
    event_type TEXT NOT NULL,
    out_trade_no TEXT NOT NULL,
    out_refund_no TEXT NOT NULL,
    notify_url TEXT NOT NULL,
    body TEXT NOT NULL,
    status TEXT NOT NULL,
    next_attempt_at REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_status TEXT NOT NULL DEFAULT '',
    deliveries INTEGER NOT NULL DEFAULT 0,
    duplicates_left INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS notifications_due ON notifications (status, next_attempt_at);
CREATE TABLE IF NOT EXISTS settlements (
    seq INTEGER PRIMARY KEY,
    paasid TEXT NOT NULL,
    ipt_otp_no TEXT NOT NULL,
    setl_id TEXT NOT NULL UNIQUE,
    mdtrt_id TEXT NOT NULL,
    psn_no TEXT NOT NULL,
    psn_name TEXT NOT NULL,
    cert_no TEXT NOT NULL,
    fixmedins_code TEXT NOT NULL,
    medfee INTEGER NOT NULL,
    fund INTEGER NOT NULL,
    acct INTEGER NOT NULL,
    cash INTEGER NOT NULL,
    setl_time TEXT NOT NULL,
    reversal_id TEXT,
    reversal_time TEXT,
    UNIQUE (paasid, ipt_otp_no)
);
CREATE INDEX IF NOT EXISTS settlements_person ON settlements (cert_no);
CREATE TABLE IF NOT EXISTS nonces (
    scope TEXT NOT NULL,
    nonce TEXT NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (scope, nonce)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
"""

TABLES = ("transactions", "refunds", "notifications", "settlements", "nonces", "counters")
NONCE_PRUNE_EVERY_SECONDS = 30.0

# Notification states. ``delivered`` means the first successful delivery happened (more
# sends may still be due when duplicates are injected).
PENDING, HELD, SUPPRESSED, DELIVERED, GIVEN_UP = (
    "pending",
    "held",
    "suppressed",
    "delivered",
    "given_up",
)


@dataclass(frozen=True)
class Transaction:
    seq: int
    mchid: str
    out_trade_no: str
    appid: str
    description: str
    notify_url: str
    total: int
    attach: str
    time_expire: str | None
    expire_epoch: float | None
    prepay_id: str
    transaction_id: str | None
    trade_state: str
    created_at: str
    success_time: str | None
    success_epoch: float | None
    closed_at: str | None


@dataclass(frozen=True)
class Refund:
    seq: int
    mchid: str
    out_refund_no: str
    out_trade_no: str
    transaction_id: str
    refund_id: str
    reason: str
    notify_url: str
    refund: int
    total: int
    status: str
    create_time: str
    due_at: float
    success_time: str | None
    success_epoch: float | None


@dataclass(frozen=True)
class Notification:
    seq: int
    id: str
    mchid: str
    event_type: str
    out_trade_no: str
    out_refund_no: str
    notify_url: str
    body: str
    status: str
    next_attempt_at: float | None
    attempts: int
    last_status: str
    deliveries: int
    duplicates_left: int
    created_at: str


@dataclass(frozen=True)
class NewNotification:
    """A notification to insert together with the change that causes it."""

    id: str
    mchid: str
    event_type: str
    out_trade_no: str
    out_refund_no: str
    notify_url: str
    body: str
    status: str
    next_attempt_at: float | None
    duplicates_left: int
    created_at: str


@dataclass(frozen=True)
class Settlement:
    seq: int
    paasid: str
    ipt_otp_no: str
    setl_id: str
    mdtrt_id: str
    psn_no: str
    psn_name: str
    cert_no: str
    fixmedins_code: str
    medfee: int
    fund: int
    acct: int
    cash: int
    setl_time: str
    reversal_id: str | None
    reversal_time: str | None


@dataclass(frozen=True)
class NewSettlement:
    paasid: str
    ipt_otp_no: str
    setl_id: str
    mdtrt_id: str
    psn_no: str
    psn_name: str
    cert_no: str
    fixmedins_code: str
    medfee: int
    setl_time: str


@dataclass(frozen=True)
class BillRow:
    epoch: float
    trade_time: str
    out_trade_no: str
    transaction_id: str
    type: str
    amount: int
    out_refund_no: str
    refund_id: str


#: (total fen, the person's account balance in fen) -> (fund, account, cash)
Split = Callable[[int, int], tuple[int, int, int]]


def _columns(cls: type[Any]) -> str:
    return ", ".join(cls.__dataclass_fields__)


class Store:
    def __init__(self, path: str) -> None:
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(SCHEMA)
        self._last_prune = 0.0

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _one(self, cls: type[Any], sql: str, params: Iterable[Any] = ()) -> Any:
        row = self._db.execute(sql, tuple(params)).fetchone()
        return cls(**dict(row)) if row is not None else None

    def _all(self, cls: type[Any], sql: str, params: Iterable[Any] = ()) -> list[Any]:
        return [cls(**dict(row)) for row in self._db.execute(sql, tuple(params)).fetchall()]

    def _insert_row(
        self, table: str, cls: type[Any], names: Iterable[str], values: dict[str, Any]
    ) -> Any:
        """Insert ``values`` (the ``names`` columns) into ``table``; the stored row back."""
        columns = list(names)
        cursor = self._db.execute(
            f"INSERT INTO {table} ({', '.join(columns)}) "  # noqa: S608 - our own names
            f"VALUES ({', '.join('?' for _ in columns)})",
            tuple(values.get(name) for name in columns),
        )
        return self._one(
            cls,
            f"SELECT {_columns(cls)} FROM {table} WHERE seq = ?",  # noqa: S608
            (cursor.lastrowid,),
        )

    def _insert_notification(self, note: NewNotification) -> None:
        self._db.execute(
            "INSERT INTO notifications (id, mchid, event_type, out_trade_no, out_refund_no, "
            "notify_url, body, status, next_attempt_at, duplicates_left, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                note.id,
                note.mchid,
                note.event_type,
                note.out_trade_no,
                note.out_refund_no,
                note.notify_url,
                note.body,
                note.status,
                note.next_attempt_at,
                note.duplicates_left,
                note.created_at,
            ),
        )

    # -- transactions ----------------------------------------------------------------

    def transaction(self, mchid: str, out_trade_no: str) -> Transaction | None:
        with self._lock:
            found: Transaction | None = self._one(
                Transaction,
                f"SELECT {_columns(Transaction)} FROM transactions "  # noqa: S608
                "WHERE mchid = ? AND out_trade_no = ?",
                (mchid, out_trade_no),
            )
        return found

    def transaction_by_prepay(self, prepay_id: str) -> Transaction | None:
        with self._lock:
            found: Transaction | None = self._one(
                Transaction,
                f"SELECT {_columns(Transaction)} FROM transactions WHERE prepay_id = ?",  # noqa: S608
                (prepay_id,),
            )
        return found

    def create_transaction(self, **values: Any) -> tuple[Transaction, bool]:
        """Insert a NOTPAY transaction unless ``(mchid, out_trade_no)`` is there; answers
        the row and whether it was created."""
        names = [name for name in Transaction.__dataclass_fields__ if name != "seq"]
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                existing: Transaction | None = self._one(
                    Transaction,
                    f"SELECT {_columns(Transaction)} FROM transactions "  # noqa: S608
                    "WHERE mchid = ? AND out_trade_no = ?",
                    (values["mchid"], values["out_trade_no"]),
                )
                if existing is not None:
                    db.execute("ROLLBACK")
                    return existing, False
                created: Transaction = self._insert_row("transactions", Transaction, names, values)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return created, True

    def close_transaction(self, seq: int, closed_at: str) -> Transaction:
        """Close it if it is still NOTPAY; answers the row as it is now."""
        with self._lock:
            self._db.execute(
                "UPDATE transactions SET trade_state = 'CLOSED', closed_at = ? "
                "WHERE seq = ? AND trade_state = 'NOTPAY'",
                (closed_at, seq),
            )
            row: Transaction = self._one(
                Transaction,
                f"SELECT {_columns(Transaction)} FROM transactions WHERE seq = ?",  # noqa: S608
                (seq,),
            )
        return row

    def pay(
        self,
        seq: int,
        *,
        transaction_id: str,
        success_time: str,
        success_epoch: float,
        notification: NewNotification | None,
    ) -> tuple[Transaction, bool]:
        """Mark a NOTPAY transaction paid and queue its notification, atomically. Answers
        the row as it is now and whether this call paid it."""
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                cursor = db.execute(
                    "UPDATE transactions SET trade_state = 'SUCCESS', transaction_id = ?, "
                    "success_time = ?, success_epoch = ? WHERE seq = ? AND trade_state = 'NOTPAY'",
                    (transaction_id, success_time, success_epoch, seq),
                )
                paid = cursor.rowcount == 1
                if paid and notification is not None:
                    self._insert_notification(notification)
                row: Transaction = self._one(
                    Transaction,
                    f"SELECT {_columns(Transaction)} FROM transactions WHERE seq = ?",  # noqa: S608
                    (seq,),
                )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return row, paid

    def latest_transactions(self, limit: int) -> list[Transaction]:
        with self._lock:
            rows: list[Transaction] = self._all(
                Transaction,
                f"SELECT {_columns(Transaction)} FROM transactions "  # noqa: S608
                "ORDER BY seq DESC LIMIT ?",
                (limit,),
            )
        return rows

    # -- refunds ---------------------------------------------------------------------

    def refund(self, mchid: str, out_refund_no: str) -> Refund | None:
        with self._lock:
            found: Refund | None = self._one(
                Refund,
                f"SELECT {_columns(Refund)} FROM refunds "  # noqa: S608
                "WHERE mchid = ? AND out_refund_no = ?",
                (mchid, out_refund_no),
            )
        return found

    def create_refund(self, **values: Any) -> tuple[Refund | None, bool]:
        """Insert a PROCESSING refund unless ``(mchid, out_refund_no)`` is there. Answers
        ``(existing, False)``, ``(new, True)``, or ``(None, False)`` when the refunds of
        the transaction would exceed its total (NOT_ENOUGH)."""
        names = [name for name in Refund.__dataclass_fields__ if name != "seq"]
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                existing: Refund | None = self._one(
                    Refund,
                    f"SELECT {_columns(Refund)} FROM refunds "  # noqa: S608
                    "WHERE mchid = ? AND out_refund_no = ?",
                    (values["mchid"], values["out_refund_no"]),
                )
                if existing is not None:
                    db.execute("ROLLBACK")
                    return existing, False
                refunded = int(
                    db.execute(
                        "SELECT COALESCE(SUM(refund), 0) FROM refunds "
                        "WHERE mchid = ? AND out_trade_no = ?",
                        (values["mchid"], values["out_trade_no"]),
                    ).fetchone()[0]
                )
                if refunded + int(values["refund"]) > int(values["total"]):
                    db.execute("ROLLBACK")
                    return None, False
                created: Refund = self._insert_row("refunds", Refund, names, values)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return created, True

    def due_refunds(self, now: float) -> list[Refund]:
        with self._lock:
            rows: list[Refund] = self._all(
                Refund,
                f"SELECT {_columns(Refund)} FROM refunds "  # noqa: S608
                "WHERE status = 'PROCESSING' AND due_at <= ? ORDER BY due_at, seq",
                (now,),
            )
        return rows

    def complete_refund(
        self,
        seq: int,
        *,
        success_time: str,
        success_epoch: float,
        notification: NewNotification | None,
    ) -> bool:
        """PROCESSING -> SUCCESS; the transaction becomes REFUND once its successful
        refunds add up to its total; the notification is queued in the same transaction."""
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                cursor = db.execute(
                    "UPDATE refunds SET status = 'SUCCESS', success_time = ?, success_epoch = ? "
                    "WHERE seq = ? AND status = 'PROCESSING'",
                    (success_time, success_epoch, seq),
                )
                if cursor.rowcount != 1:
                    db.execute("ROLLBACK")
                    return False
                mchid, out_trade_no, total = db.execute(
                    "SELECT mchid, out_trade_no, total FROM refunds WHERE seq = ?", (seq,)
                ).fetchone()
                refunded = int(
                    db.execute(
                        "SELECT COALESCE(SUM(refund), 0) FROM refunds "
                        "WHERE mchid = ? AND out_trade_no = ? AND status = 'SUCCESS'",
                        (mchid, out_trade_no),
                    ).fetchone()[0]
                )
                if refunded >= int(total):
                    db.execute(
                        "UPDATE transactions SET trade_state = 'REFUND' "
                        "WHERE mchid = ? AND out_trade_no = ?",
                        (mchid, out_trade_no),
                    )
                if notification is not None:
                    self._insert_notification(notification)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return True

    def latest_refunds(self, limit: int) -> list[Refund]:
        with self._lock:
            rows: list[Refund] = self._all(
                Refund,
                f"SELECT {_columns(Refund)} FROM refunds ORDER BY seq DESC LIMIT ?",  # noqa: S608
                (limit,),
            )
        return rows

    # -- the daily bill --------------------------------------------------------------

    def bill_rows(self, mchid: str, day: str) -> list[BillRow]:
        """Payments and successful refunds whose success time (RFC 3339, +08:00) falls
        on ``day`` (YYYY-MM-DD), oldest first."""
        with self._lock:
            payments = self._db.execute(
                "SELECT success_epoch, success_time, out_trade_no, transaction_id, total "
                "FROM transactions WHERE mchid = ? AND success_time IS NOT NULL "
                "AND substr(success_time, 1, 10) = ?",
                (mchid, day),
            ).fetchall()
            refunds = self._db.execute(
                "SELECT success_epoch, success_time, out_trade_no, transaction_id, refund, "
                "out_refund_no, refund_id FROM refunds WHERE mchid = ? AND status = 'SUCCESS' "
                "AND substr(success_time, 1, 10) = ?",
                (mchid, day),
            ).fetchall()
        rows = [BillRow(float(r[0]), r[1], r[2], r[3], "PAY", int(r[4]), "", "") for r in payments]
        rows += [
            BillRow(float(r[0]), r[1], r[2], r[3], "REFUND", int(r[4]), r[5], r[6]) for r in refunds
        ]
        rows.sort(key=lambda row: (row.epoch, row.type != "PAY", row.out_refund_no))
        return rows

    # -- notifications ---------------------------------------------------------------

    def due_notifications(self, now: float, limit: int = 100) -> list[Notification]:
        with self._lock:
            rows: list[Notification] = self._all(
                Notification,
                f"SELECT {_columns(Notification)} FROM notifications "  # noqa: S608
                "WHERE (status = 'pending' OR (status = 'delivered' AND duplicates_left > 0)) "
                "AND next_attempt_at <= ? ORDER BY next_attempt_at, seq LIMIT ?",
                (now, limit),
            )
        return rows

    def next_wakeup(self, exclude: Iterable[int]) -> float | None:
        """The earliest time something is due: a notification (not in ``exclude``) or a
        refund still processing."""
        skip = sorted(set(exclude))
        marks = ", ".join("?" for _ in skip)
        not_in = f"AND seq NOT IN ({marks})" if skip else ""
        with self._lock:
            note = self._db.execute(
                "SELECT MIN(next_attempt_at) FROM notifications "  # noqa: S608
                "WHERE (status = 'pending' OR (status = 'delivered' AND duplicates_left > 0)) "
                f"{not_in}",
                skip,
            ).fetchone()[0]
            refund = self._db.execute(
                "SELECT MIN(due_at) FROM refunds WHERE status = 'PROCESSING'"
            ).fetchone()[0]
        times = [float(value) for value in (note, refund) if value is not None]
        return min(times) if times else None

    def record_attempt(
        self, seq: int, *, ok: bool, outcome: str, now: float, delays: list[float]
    ) -> None:
        """One delivery happened. Before the first success a failure is retried after
        ``delays[failures - 1]`` seconds, and given up after the last one; after the first
        success each injected duplicate is sent once, right away."""
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                row = db.execute(
                    "SELECT status, attempts, deliveries, duplicates_left "
                    "FROM notifications WHERE seq = ?",
                    (seq,),
                ).fetchone()
                if row is None:  # reset while it was in flight
                    db.execute("ROLLBACK")
                    return
                status, attempts = str(row["status"]), int(row["attempts"]) + 1
                deliveries, duplicates = int(row["deliveries"]), int(row["duplicates_left"])
                next_at: float | None = None
                if status == DELIVERED:
                    duplicates = max(0, duplicates - 1)
                    deliveries += int(ok)
                    next_at = now if duplicates > 0 else None
                elif ok:
                    status, deliveries = DELIVERED, deliveries + 1
                    next_at = now if duplicates > 0 else None
                elif attempts <= len(delays):
                    status, next_at = PENDING, now + delays[attempts - 1]
                else:
                    status = GIVEN_UP
                db.execute(
                    "UPDATE notifications SET status = ?, attempts = ?, deliveries = ?, "
                    "duplicates_left = ?, next_attempt_at = ?, last_status = ? WHERE seq = ?",
                    (status, attempts, deliveries, duplicates, next_at, outcome, seq),
                )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def release_held(self, now: float) -> list[Notification]:
        """Every held notification becomes pending (due now); answers them newest first."""
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                rows: list[Notification] = self._all(
                    Notification,
                    f"SELECT {_columns(Notification)} FROM notifications "  # noqa: S608
                    "WHERE status = 'held' ORDER BY seq DESC",
                )
                db.execute(
                    "UPDATE notifications SET status = 'pending', next_attempt_at = ? "
                    "WHERE status = 'held'",
                    (now,),
                )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return rows

    def notification(self, seq: int) -> Notification | None:
        with self._lock:
            found: Notification | None = self._one(
                Notification,
                f"SELECT {_columns(Notification)} FROM notifications WHERE seq = ?",  # noqa: S608
                (seq,),
            )
        return found

    def latest_notifications(self, limit: int) -> list[Notification]:
        with self._lock:
            rows: list[Notification] = self._all(
                Notification,
                f"SELECT {_columns(Notification)} FROM notifications "  # noqa: S608
                "ORDER BY seq DESC LIMIT ?",
                (limit,),
            )
        return rows

    # -- settlements -----------------------------------------------------------------

    def settlement(
        self, paasid: str, *, ipt_otp_no: str = "", setl_id: str = ""
    ) -> Settlement | None:
        key, value = ("ipt_otp_no", ipt_otp_no) if ipt_otp_no else ("setl_id", setl_id)
        with self._lock:
            found: Settlement | None = self._one(
                Settlement,
                f"SELECT {_columns(Settlement)} FROM settlements "  # noqa: S608
                f"WHERE paasid = ? AND {key} = ?",
                (paasid, value),
            )
        return found

    def settle(
        self, new: NewSettlement, *, account_balance: int, split: Split
    ) -> tuple[Settlement, bool]:
        """Settle unless ``(paasid, ipt_otp_no)`` is settled already (then that one, not
        created). The person's balance is ``account_balance`` less the account payments of
        their settlements not reversed."""
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                existing: Settlement | None = self._one(
                    Settlement,
                    f"SELECT {_columns(Settlement)} FROM settlements "  # noqa: S608
                    "WHERE paasid = ? AND ipt_otp_no = ?",
                    (new.paasid, new.ipt_otp_no),
                )
                if existing is not None:
                    db.execute("ROLLBACK")
                    return existing, False
                spent = int(
                    db.execute(
                        "SELECT COALESCE(SUM(acct), 0) FROM settlements "
                        "WHERE cert_no = ? AND reversal_id IS NULL",
                        (new.cert_no,),
                    ).fetchone()[0]
                )
                fund, acct, cash = split(new.medfee, max(0, account_balance - spent))
                cursor = db.execute(
                    "INSERT INTO settlements (paasid, ipt_otp_no, setl_id, mdtrt_id, psn_no, "
                    "psn_name, cert_no, fixmedins_code, medfee, fund, acct, cash, setl_time) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        new.paasid,
                        new.ipt_otp_no,
                        new.setl_id,
                        new.mdtrt_id,
                        new.psn_no,
                        new.psn_name,
                        new.cert_no,
                        new.fixmedins_code,
                        new.medfee,
                        fund,
                        acct,
                        cash,
                        new.setl_time,
                    ),
                )
                created: Settlement = self._one(
                    Settlement,
                    f"SELECT {_columns(Settlement)} FROM settlements WHERE seq = ?",  # noqa: S608
                    (cursor.lastrowid,),
                )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return created, True

    def reverse(self, seq: int, *, reversal_id: str, reversal_time: str) -> Settlement:
        """Reverse it unless it is reversed already; answers the row as it is now."""
        with self._lock:
            self._db.execute(
                "UPDATE settlements SET reversal_id = ?, reversal_time = ? "
                "WHERE seq = ? AND reversal_id IS NULL",
                (reversal_id, reversal_time, seq),
            )
            row: Settlement = self._one(
                Settlement,
                f"SELECT {_columns(Settlement)} FROM settlements WHERE seq = ?",  # noqa: S608
                (seq,),
            )
        return row

    def account_spent(self, cert_no: str) -> int:
        with self._lock:
            return int(
                self._db.execute(
                    "SELECT COALESCE(SUM(acct), 0) FROM settlements "
                    "WHERE cert_no = ? AND reversal_id IS NULL",
                    (cert_no,),
                ).fetchone()[0]
            )

    def latest_settlements(self, limit: int) -> list[Settlement]:
        with self._lock:
            rows: list[Settlement] = self._all(
                Settlement,
                f"SELECT {_columns(Settlement)} FROM settlements "  # noqa: S608
                "ORDER BY seq DESC LIMIT ?",
                (limit,),
            )
        return rows

    # -- nonces ----------------------------------------------------------------------

    def use_nonce(self, scope: str, nonce: str, expires_at: float) -> bool:
        """Record a nonce; false if ``scope`` used it before and it has not expired."""
        now = time.time()
        with self._lock:
            cursor = self._db.execute(
                "INSERT INTO nonces (scope, nonce, expires_at) VALUES (?, ?, ?) "
                "ON CONFLICT (scope, nonce) DO UPDATE SET expires_at = excluded.expires_at "
                "WHERE nonces.expires_at < ?",
                (scope, nonce, expires_at, now),
            )
            fresh = cursor.rowcount == 1
            if now - self._last_prune > NONCE_PRUNE_EVERY_SECONDS:
                self._last_prune = now
                self._db.execute("DELETE FROM nonces WHERE expires_at < ?", (now,))
        return fresh

    # -- counters and summaries ------------------------------------------------------

    def bump(self, name: str, by: int = 1) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO counters (name, value) VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
                (name, by),
            )

    def counters(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT name, value FROM counters ORDER BY name").fetchall()
        return {str(name): int(value) for name, value in rows}

    def count_by(self, table: str, column: str) -> dict[str, int]:
        if table not in TABLES or not column.isidentifier():
            raise ValueError(f"no such table or column: {table}.{column}")
        with self._lock:
            rows = self._db.execute(
                f"SELECT {column}, COUNT(*) FROM {table} GROUP BY 1 ORDER BY 1"  # noqa: S608
            ).fetchall()
        return {str(name): int(count) for name, count in rows}

    # -- tests -----------------------------------------------------------------------

    def reset(self) -> None:
        """Empty every table."""
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                for table in TABLES:
                    db.execute(f"DELETE FROM {table}")  # noqa: S608
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
