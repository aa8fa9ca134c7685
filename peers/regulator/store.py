"""The platform's own store: one SQLite file in WAL mode behind one lock.

``seq`` is the record's place in the store, gap-free (1, 2, 3, …): it is taken as
``MAX(seq) + 1`` inside the same write transaction that inserts the row, so a refused,
failed or duplicate submission never consumes a number. ``record_id`` is UNIQUE: a
second submission of the same id gets the first one's ``ack_id`` back and adds no row.

Nonces seen are kept here too (per app, until their timestamp has left the window), so a
replay is refused even across a restart of the peer.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY,
    record_id TEXT NOT NULL UNIQUE,
    app_id TEXT NOT NULL,
    protocol TEXT NOT NULL,
    record_type TEXT NOT NULL,
    hospital_code TEXT NOT NULL,
    occurred_at TEXT NOT NULL,
    received_at TEXT NOT NULL,
    body TEXT NOT NULL,
    ack_id TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS records_type ON records (record_type);
CREATE TABLE IF NOT EXISTS certificates (
    cert_sha256 TEXT PRIMARY KEY,
    hospital_code TEXT NOT NULL,
    pem TEXT NOT NULL,
    record_id TEXT NOT NULL,
    stored_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS nonces (
    app_id TEXT NOT NULL,
    nonce TEXT NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (app_id, nonce)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
"""

NONCE_PRUNE_EVERY_SECONDS = 30.0


@dataclass(frozen=True)
class StoredRecord:
    seq: int
    record_id: str
    app_id: str
    protocol: str
    record_type: str
    hospital_code: str
    occurred_at: str
    received_at: str
    body: dict[str, Any]
    ack_id: str

    def as_listing(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "record_id": self.record_id,
            "app_id": self.app_id,
            "protocol": self.protocol,
            "record_type": self.record_type,
            "hospital_code": self.hospital_code,
            "occurred_at": self.occurred_at,
            "received_at": self.received_at,
            "ack_id": self.ack_id,
            "payload": self.body.get("payload"),
        }


@dataclass(frozen=True)
class StoredCertificate:
    cert_sha256: str
    hospital_code: str
    pem: str


@dataclass(frozen=True)
class Insertion:
    """What became of one insert: ``created`` is false when ``record_id`` was there."""

    created: bool
    seq: int
    ack_id: str


_COLUMNS = (
    "seq, record_id, app_id, protocol, record_type, hospital_code, occurred_at, "
    "received_at, body, ack_id"
)


def _row(row: tuple[Any, ...]) -> StoredRecord:
    return StoredRecord(
        seq=int(row[0]),
        record_id=row[1],
        app_id=row[2],
        protocol=row[3],
        record_type=row[4],
        hospital_code=row[5],
        occurred_at=row[6],
        received_at=row[7],
        body=json.loads(row[8]),
        ack_id=row[9],
    )


class Store:
    def __init__(self, path: str) -> None:
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(SCHEMA)
        self._last_prune = 0.0

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- records ---------------------------------------------------------------------

    def find(self, record_id: str) -> StoredRecord | None:
        with self._lock:
            row = self._db.execute(
                f"SELECT {_COLUMNS} FROM records WHERE record_id = ?",  # noqa: S608
                (record_id,),
            ).fetchone()
        return _row(row) if row else None

    def insert(
        self,
        *,
        record_id: str,
        app_id: str,
        protocol: str,
        record_type: str,
        hospital_code: str,
        occurred_at: str,
        received_at: str,
        body: dict[str, Any],
        certificate: StoredCertificate | None = None,
    ) -> Insertion:
        """Store one record (and the seal certificate it files, if any) atomically."""
        text = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                existing = db.execute(
                    "SELECT seq, ack_id FROM records WHERE record_id = ?", (record_id,)
                ).fetchone()
                if existing is not None:
                    db.execute("ROLLBACK")
                    return Insertion(False, int(existing[0]), existing[1])
                seq = int(db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM records").fetchone()[0])
                ack_id = f"ACK-{seq:08d}"
                db.execute(
                    f"INSERT INTO records ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",  # noqa: S608
                    (
                        seq,
                        record_id,
                        app_id,
                        protocol,
                        record_type,
                        hospital_code,
                        occurred_at,
                        received_at,
                        text,
                        ack_id,
                    ),
                )
                if certificate is not None:
                    db.execute(
                        "INSERT OR IGNORE INTO certificates "
                        "(cert_sha256, hospital_code, pem, record_id, stored_at) "
                        "VALUES (?, ?, ?, ?, ?)",
                        (
                            certificate.cert_sha256,
                            certificate.hospital_code,
                            certificate.pem,
                            record_id,
                            received_at,
                        ),
                    )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return Insertion(True, seq, ack_id)

    def after(self, after: int, limit: int) -> list[StoredRecord]:
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM records WHERE seq > ? ORDER BY seq LIMIT ?",  # noqa: S608
                (after, limit),
            ).fetchall()
        return [_row(row) for row in rows]

    def latest(self, limit: int) -> list[StoredRecord]:
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM records ORDER BY seq DESC LIMIT ?",  # noqa: S608
                (limit,),
            ).fetchall()
        return [_row(row) for row in rows]

    def counts_by_type(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute(
                "SELECT record_type, COUNT(*) FROM records GROUP BY record_type ORDER BY 1"
            ).fetchall()
        return {str(name): int(count) for name, count in rows}

    # -- certificates ----------------------------------------------------------------

    def certificate(self, cert_sha256: str) -> StoredCertificate | None:
        with self._lock:
            row = self._db.execute(
                "SELECT cert_sha256, hospital_code, pem FROM certificates WHERE cert_sha256 = ?",
                (cert_sha256,),
            ).fetchone()
        return StoredCertificate(row[0], row[1], row[2]) if row else None

    def certificate_count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM certificates").fetchone()[0])

    # -- nonces ----------------------------------------------------------------------

    def use_nonce(self, app_id: str, nonce: str, expires_at: float) -> bool:
        """Record a nonce; false if this app used it before and it has not expired."""
        now = time.time()
        with self._lock:
            cursor = self._db.execute(
                "INSERT INTO nonces (app_id, nonce, expires_at) VALUES (?, ?, ?) "
                "ON CONFLICT (app_id, nonce) DO UPDATE SET expires_at = excluded.expires_at "
                "WHERE nonces.expires_at < ?",
                (app_id, nonce, expires_at, now),
            )
            fresh = cursor.rowcount == 1
            if now - self._last_prune > NONCE_PRUNE_EVERY_SECONDS:
                self._last_prune = now
                self._db.execute("DELETE FROM nonces WHERE expires_at < ?", (now,))
        return fresh

    # -- counters --------------------------------------------------------------------

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

    # -- tests -----------------------------------------------------------------------

    def reset(self) -> None:
        """Empty every table (records, certificates, nonces, counters)."""
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                for table in ("records", "certificates", "nonces", "counters"):
                    db.execute(f"DELETE FROM {table}")  # noqa: S608
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
