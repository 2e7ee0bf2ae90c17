"""Two processes opening one fresh voice store (two engines on one data directory).

SQLite answers the switch to WAL with BUSY at once, without waiting in its busy handler, when
another connection holds a write lock on a file still in rollback mode: it will not wait where two
connections could deadlock. In CI one of two engine workers started together died on it ("database
is locked", 1 in ~30 pairs of processes locally). Here another connection holds the lock
deterministically; the store must wait for it to let go, not fail.
"""

from __future__ import annotations

import logging
import sqlite3
import threading

from csm_service.voices import VoiceStore


class _RetrySeen(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.seen = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if "busy switching to WAL" in record.getMessage():
            self.seen.set()


def test_store_waits_for_another_connection_instead_of_failing(tmp_path):
    other = sqlite3.connect(tmp_path / "voices.sqlite3", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # a write lock on a fresh file, still in rollback-journal mode
    handler = _RetrySeen()
    logger = logging.getLogger("csm_service.voices")
    logger.addHandler(handler)
    previous_level = logger.level
    logger.setLevel(logging.DEBUG)
    opened: list[VoiceStore] = []
    errors: list[BaseException] = []

    def open_store() -> None:
        try:
            opened.append(VoiceStore(tmp_path))
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            errors.append(exc)

    thread = threading.Thread(target=open_store)
    try:
        thread.start()
        # Once the store has been refused at least once, the other process lets go.
        while not handler.seen.wait(0.05):
            assert thread.is_alive() and not errors, errors  # the old code failed here at once
        other.execute("COMMIT")
        thread.join(30)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous_level)
        other.close()
    assert not errors, errors
    (store,) = opened
    assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    store.close()
