"""The default response cache: one SQLite file, least recently used rows evicted past a cap.

It survives restarts and can be shared by several chatd processes on one machine (WAL mode lets
readers run beside a writer). The cap is re-read from the table on every write, not kept in
memory, so that processes sharing the file agree on it.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL,
    size INTEGER NOT NULL,
    used REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS responses_used ON responses (used);
"""

# Calls come from the event loop: waiting long for another process' write lock would stall
# every request, and a miss is cheap. SafeCache turns "database is locked" into a miss.
_BUSY_TIMEOUT_S = 1.0
# What SQLite answers when the file cannot take writes but can still be read.
_CANNOT_WRITE = ("SQLITE_FULL", "SQLITE_READONLY", "SQLITE_IOERR")


class SQLiteCache:
    """Responses in one SQLite table, capped at `max_bytes` of values (LRU eviction)."""

    def __init__(self, path: Path, max_bytes: int):
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # One connection shared by the event loop and any worker thread, serialised by a lock;
        # isolation_level=None: autocommit, with explicit transactions where several
        # statements must apply together.
        self._db = sqlite3.connect(
            self.path,
            timeout=_BUSY_TIMEOUT_S,
            check_same_thread=False,
            isolation_level=None,
        )
        self._lock = threading.Lock()
        self._last_used = 0.0
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            # A cache may lose its last writes in a power cut; it must not slow every put.
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)

    @property
    def size(self) -> int:
        """Bytes of values stored now."""
        with self._lock:
            return self._db.execute("SELECT COALESCE(SUM(size), 0) FROM responses").fetchone()[0]

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    def get(self, key: str) -> bytes | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM responses WHERE key = ?", (key,)).fetchone()
            if row is None:
                return None
            # A read makes the row the most recently used: eviction follows use, not writes.
            try:
                self._db.execute("UPDATE responses SET used = ? WHERE key = ?", (self._now(), key))
            except sqlite3.OperationalError as exc:
                if not exc.sqlite_errorname.startswith(_CANNOT_WRITE):
                    raise
                # A full disk or a read-only file: the hit still counts, only its LRU place
                # is not recorded (puts fail meanwhile, and SafeCache says so).
            return bytes(row[0])

    def put(self, key: str, value: bytes) -> None:
        with self._lock:
            if len(value) > self.max_bytes:
                # Storing it would evict everything and still not fit; drop any stale copy.
                self._db.execute("DELETE FROM responses WHERE key = ?", (key,))
                return
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    "INSERT OR REPLACE INTO responses (key, value, size, used) VALUES (?, ?, ?, ?)",
                    (key, value, len(value), self._now()),
                )
                self._evict()
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _evict(self) -> None:
        """Deletes the least recently used rows until the values fit in max_bytes."""
        total = self._db.execute("SELECT COALESCE(SUM(size), 0) FROM responses").fetchone()[0]
        if total <= self.max_bytes:
            return
        doomed = []
        for key, size in self._db.execute("SELECT key, size FROM responses ORDER BY used"):
            if total <= self.max_bytes:
                break
            doomed.append((key,))
            total -= size
        self._db.executemany("DELETE FROM responses WHERE key = ?", doomed)

    def _now(self) -> float:
        # Wall time, so that order survives a restart; nudged forward so that two touches
        # within the clock's resolution still have an order.
        self._last_used = max(time.time(), self._last_used + 1e-6)
        return self._last_used
