"""Voice profiles: a reference recording's Mimi codes and its transcript, stored in SQLite.

A CSM voice is a prompt, not a speaker id: the codes of someone speaking and what they said
precede the text to synthesize. Profiles live in ``<CSM_DATA_DIR>/voices.sqlite3``; every write is
one transaction, so a profile is stored whole or not at all. No torch here (the edge uses it).

Each profile has an owner, the tenant whose key created it (:mod:`csm_service.tenants`). A
``scope`` argument of None means every profile (admins; keys off); a tenant name means that
tenant's profiles plus the shared ones: profiles with no owner, which are those created with keys
off and those stored before owners existed (a database from before is migrated in place, its
rows left without an owner). Everyone may use a shared profile; only a scope of None may delete it.
"""

from __future__ import annotations

import logging
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from csm_service.core.constants import DEFAULT_VOICE, NUM_CODEBOOKS, NUM_MIMI_CODES
from csm_service.core.request import Segment

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS voices (
    voice_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    speaker INTEGER NOT NULL,
    transcript TEXT NOT NULL,
    codes BLOB NOT NULL,          -- uint16 [32, num_frames], C order
    num_frames INTEGER NOT NULL,
    duration_ms REAL NOT NULL,
    created_at REAL NOT NULL,
    owner TEXT,                   -- the tenant; NULL: shared (keys off, or stored before owners)
    name_key TEXT                 -- lower(name) in Python's sense, for the by-name lookup
)
"""
# Added since the first schema: (column, its definition), added to an older table by ALTER TABLE.
MIGRATIONS = (("owner", "owner TEXT"), ("name_key", "name_key TEXT"))
INDEXES = (
    "CREATE INDEX IF NOT EXISTS voices_by_owner ON voices (owner, created_at, voice_id)",
    "CREATE INDEX IF NOT EXISTS voices_by_time ON voices (created_at, voice_id)",
    "CREATE INDEX IF NOT EXISTS voices_by_name ON voices (name_key, owner)",
)
COLUMNS = "voice_id, name, description, speaker, transcript, codes, num_frames, duration_ms, created_at, owner"


class VoiceLimitReached(Exception):
    """The owner already has as many profiles as it may."""


def _scope_sql(scope: str | None) -> tuple[str, tuple[str, ...]]:
    """A WHERE clause part for what ``scope`` may see: all (None), or its own and the shared."""
    return ("1", ()) if scope is None else ("(owner = ? OR owner IS NULL)", (scope,))


@dataclass(frozen=True)
class Voice:
    voice_id: str
    name: str
    description: str
    speaker: int
    transcript: str
    codes: np.ndarray  # [32, num_frames] int64
    duration_ms: float
    created_at: float
    owner: str | None = None  # the tenant; None: shared

    @property
    def num_frames(self) -> int:
        return int(self.codes.shape[1])

    def context_segment(self) -> Segment:
        """The profile as the first context segment of a speech request (its prompt)."""
        return Segment(self.speaker, self.transcript, self.codes)

    def summary(self) -> dict[str, object]:
        """The JSON the API returns (codes only on request)."""
        return {
            "voice_id": self.voice_id,
            "name": self.name,
            "description": self.description,
            "speaker": self.speaker,
            "transcript": self.transcript,
            "num_frames": self.num_frames,
            "duration_ms": round(self.duration_ms, 1),
            "created_at": self.created_at,
            "builtin": False,
            "shared": self.owner is None,
        }


BUILTIN_DEFAULT = {
    "voice_id": DEFAULT_VOICE,
    "name": "Default",
    "description": "No voice prompt: the model's voice for the speaker id",
    "builtin": True,
}


WAL_SWITCH_TIMEOUT_S = 10.0  # how long opening a store waits for another process to let go of a fresh file


class VoiceStore:
    """Thread-safe; one connection per store, serialised by a lock (writes are rare and small)."""

    def __init__(self, data_dir: str | Path) -> None:
        self.path = Path(data_dir) / "voices.sqlite3"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._use_wal()
        self._db.execute("PRAGMA synchronous=FULL")
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")  # one migration at a time, whole or not at all
            self._db.execute(SCHEMA)
            self._migrate()
            for index in INDEXES:
                self._db.execute(index)

    def _use_wal(self) -> None:
        """Switch the file to WAL (it stays so). Two processes opening a fresh store at once (two
        engines on one data directory) can make SQLite refuse one with BUSY at once, without waiting
        in its busy handler: it will not wait where the two could deadlock. That was a worker dying
        at start-up; the switch is tried again until WAL_SWITCH_TIMEOUT_S has passed."""
        deadline = time.monotonic() + WAL_SWITCH_TIMEOUT_S
        delay = 0.005
        while True:
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                busy = exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY
                if not busy or time.monotonic() >= deadline:
                    raise
                log.debug("voice store %s: busy switching to WAL, trying again", self.path)
            time.sleep(delay)  # another process holds the file for a moment: back off, then retry
            delay = min(2 * delay, 0.2)

    def _migrate(self) -> None:
        """A table from before owners and the name index: add the columns; old rows stay shared."""
        have = {row[1] for row in self._db.execute("PRAGMA table_info(voices)")}
        for column, definition in MIGRATIONS:
            if column not in have:
                self._db.execute(f"ALTER TABLE voices ADD COLUMN {definition}")
        rows = self._db.execute("SELECT voice_id, name FROM voices WHERE name_key IS NULL").fetchall()
        self._db.executemany("UPDATE voices SET name_key = ? WHERE voice_id = ?", [(n.lower(), v) for v, n in rows])

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def create(
        self,
        name: str,
        transcript: str,
        codes: np.ndarray,
        speaker: int,
        description: str,
        duration_ms: float,
        owner: str | None = None,
        max_per_owner: int = 0,
    ) -> Voice:
        """Store a profile owned by ``owner`` (None: shared). VoiceLimitReached when the owner
        already has ``max_per_owner`` (0: no limit); the count and the insert are one transaction."""
        codes = np.asarray(codes)
        if codes.ndim != 2 or codes.shape[0] != NUM_CODEBOOKS or codes.shape[1] == 0:
            raise ValueError(f"codes must be [32, frames] with frames > 0, got {codes.shape}")
        if codes.min() < 0 or codes.max() >= NUM_MIMI_CODES:
            raise ValueError(f"codes must be 0..{NUM_MIMI_CODES - 1}")
        voice = Voice(
            voice_id="voice_" + secrets.token_hex(8),
            name=name,
            description=description,
            speaker=speaker,
            transcript=transcript,
            codes=codes.astype(np.int64),
            duration_ms=duration_ms,
            created_at=round(time.time(), 3),
            owner=owner,
        )
        blob = np.ascontiguousarray(codes, dtype="<u2").tobytes()
        with self._lock, self._db:  # one transaction: the row is written whole or not at all
            self._db.execute("BEGIN IMMEDIATE")
            if max_per_owner and self._count(owner) >= max_per_owner:
                raise VoiceLimitReached(f"at most {max_per_owner} voice profiles; delete one first")
            self._db.execute(
                f"INSERT INTO voices ({COLUMNS}, name_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    voice.voice_id,
                    name,
                    description,
                    speaker,
                    transcript,
                    blob,
                    voice.num_frames,
                    duration_ms,
                    voice.created_at,
                    owner,
                    name.lower(),
                ),
            )
        return voice

    def _count(self, owner: str | None) -> int:
        return self._db.execute("SELECT COUNT(*) FROM voices WHERE owner IS ?", (owner,)).fetchone()[0]

    def count(self, owner: str | None) -> int:
        """Profiles owned by ``owner`` (None: the shared ones)."""
        with self._lock:
            return self._count(owner)

    def get(self, voice_id: str, scope: str | None = None) -> Voice | None:
        """The profile, if ``scope`` may see it (None: any)."""
        where, args = _scope_sql(scope)
        with self._lock:
            row = self._db.execute(
                f"SELECT {COLUMNS} FROM voices WHERE voice_id = ? AND {where}", (voice_id, *args)
            ).fetchone()
        return _voice(row) if row else None

    def list(self, scope: str | None = None) -> list[Voice]:
        """Every profile ``scope`` may see, oldest first (unbounded: prefer :meth:`page`)."""
        return self.page(scope, limit=-1)

    def page(self, scope: str | None = None, limit: int = 100, after: tuple[float, str] | None = None) -> list[Voice]:
        """Up to ``limit`` (-1: all) profiles ``scope`` may see, oldest first, starting after the
        ``(created_at, voice_id)`` of the previous page's last one (keyset pagination: a profile
        deleted in between moves nothing)."""
        where, args = _scope_sql(scope)
        if after is not None:
            where += " AND (created_at, voice_id) > (?, ?)"
            args = (*args, *after)
        with self._lock:
            rows = self._db.execute(
                f"SELECT {COLUMNS} FROM voices WHERE {where} ORDER BY created_at, voice_id LIMIT ?", (*args, limit)
            ).fetchall()
        return [_voice(row) for row in rows]

    def ids(self) -> list[str]:
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT voice_id FROM voices ORDER BY created_at, voice_id")]

    def find_by_name(self, name: str, scope: str | None = None, limit: int = 2) -> list[str]:
        """Ids of the profiles named ``name`` (case-insensitive) that ``scope`` may see, from the
        name index (at most ``limit``: 2 tells one from several)."""
        where, args = _scope_sql(scope)
        with self._lock:
            rows = self._db.execute(
                f"SELECT voice_id FROM voices WHERE name_key = ? AND {where} ORDER BY created_at, voice_id LIMIT ?",
                (name.lower(), *args, limit),
            ).fetchall()
        return [r[0] for r in rows]

    def resolve_name(self, name: str, scope: str | None = None) -> list[str]:
        """The profile with id ``name``, else those named ``name`` (at most 2), that ``scope`` may
        see: two indexed queries."""
        if self.get(name, scope) is not None:
            return [name]
        return self.find_by_name(name, scope, limit=2)

    def delete(self, voice_id: str, scope: str | None = None) -> bool:
        """Delete the profile if ``scope`` owns it (None: any, shared ones included)."""
        owner_clause, args = ("", ()) if scope is None else (" AND owner = ?", (scope,))
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            return (
                self._db.execute(f"DELETE FROM voices WHERE voice_id = ?{owner_clause}", (voice_id, *args)).rowcount > 0
            )


def _voice(row: tuple) -> Voice:
    voice_id, name, description, speaker, transcript, blob, num_frames, duration_ms, created_at, owner = row
    codes = np.frombuffer(blob, dtype="<u2").reshape(NUM_CODEBOOKS, num_frames).astype(np.int64)
    return Voice(voice_id, name, description, speaker, transcript, codes, duration_ms, created_at, owner)
