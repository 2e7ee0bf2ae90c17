"""Voice profiles: a reference recording's Mimi codes and its transcript, stored in SQLite.

A CSM voice is a prompt, not a speaker id: the codes of someone speaking and what they said
precede the text to synthesize. Profiles live in ``<CSM_DATA_DIR>/voices.sqlite3``; every write is
one transaction, so a profile is stored whole or not at all. No torch here (the edge uses it).
"""

from __future__ import annotations

import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from csm_service.rpc.convert import codes_to_proto
from csm_service.rpc.gen.csm.v1 import tts_pb2 as pb

DEFAULT_VOICE = "default"  # the built-in voice: no prompt, speaker id only
NUM_CODEBOOKS = 32
MIN_PROMPT_RATE, MAX_PROMPT_RATE = 8_000, 48_000  # sample rates EncodePrompt takes

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
    created_at REAL NOT NULL
)
"""


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

    @property
    def num_frames(self) -> int:
        return int(self.codes.shape[1])

    def context_segment(self) -> pb.ContextSegment:
        """The profile as the first context segment of an engine request."""
        return pb.ContextSegment(speaker=self.speaker, text=self.transcript, codes=codes_to_proto(self.codes))

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
        }


BUILTIN_DEFAULT = {
    "voice_id": DEFAULT_VOICE,
    "name": "Default",
    "description": "No voice prompt: the model's voice for the speaker id",
    "builtin": True,
}


class VoiceStore:
    """Thread-safe; one connection per store, serialised by a lock (writes are rare and small)."""

    def __init__(self, data_dir: str | Path) -> None:
        self.path = Path(data_dir) / "voices.sqlite3"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def create(
        self, name: str, transcript: str, codes: np.ndarray, speaker: int, description: str, duration_ms: float
    ) -> Voice:
        codes = np.asarray(codes)
        if codes.ndim != 2 or codes.shape[0] != NUM_CODEBOOKS or codes.shape[1] == 0:
            raise ValueError(f"codes must be [32, frames] with frames > 0, got {codes.shape}")
        if codes.min() < 0 or codes.max() >= 2048:
            raise ValueError("codes must be 0..2047")
        voice = Voice(
            voice_id="voice_" + secrets.token_hex(8),
            name=name,
            description=description,
            speaker=speaker,
            transcript=transcript,
            codes=codes.astype(np.int64),
            duration_ms=duration_ms,
            created_at=round(time.time(), 3),
        )
        blob = np.ascontiguousarray(codes, dtype="<u2").tobytes()
        with self._lock, self._db:  # one transaction: the row is written whole or not at all
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "INSERT INTO voices VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
                ),
            )
        return voice

    def get(self, voice_id: str) -> Voice | None:
        with self._lock:
            row = self._db.execute(
                "SELECT voice_id, name, description, speaker, transcript, codes, num_frames, duration_ms, created_at "
                "FROM voices WHERE voice_id = ?",
                (voice_id,),
            ).fetchone()
        return _voice(row) if row else None

    def list(self) -> list[Voice]:
        with self._lock:
            rows = self._db.execute(
                "SELECT voice_id, name, description, speaker, transcript, codes, num_frames, duration_ms, created_at "
                "FROM voices ORDER BY created_at, voice_id"
            ).fetchall()
        return [_voice(row) for row in rows]

    def ids(self) -> list[str]:
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT voice_id FROM voices ORDER BY created_at, voice_id")]

    def delete(self, voice_id: str) -> bool:
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            return self._db.execute("DELETE FROM voices WHERE voice_id = ?", (voice_id,)).rowcount > 0


def _voice(row: tuple) -> Voice:
    voice_id, name, description, speaker, transcript, blob, num_frames, duration_ms, created_at = row
    codes = np.frombuffer(blob, dtype="<u2").reshape(NUM_CODEBOOKS, num_frames).astype(np.int64)
    return Voice(voice_id, name, description, speaker, transcript, codes, duration_ms, created_at)
