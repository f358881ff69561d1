"""Engine set-up: SQLite pragmas and the in-process writer turn."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from app import db
from app.db import make_engine


class TestSqlitePragmas:
    def test_sqlite_runs_in_wal_mode_with_foreign_keys(self, tmp_path: Path) -> None:
        engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
        with engine.connect() as conn:
            assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
            assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
        engine.dispose()


class TestSqliteWriterTurn:
    def test_a_second_transaction_on_the_same_thread_fails_instead_of_hanging(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(db, "BUSY_TIMEOUT_SECONDS", 0.2)
        engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
        with engine.begin() as first:
            first.execute(text("SELECT 1"))
            with pytest.raises(OperationalError), engine.begin() as second:
                second.execute(text("SELECT 1"))
        # The turn was handed back: a later transaction proceeds.
        with engine.begin() as third:
            assert third.execute(text("SELECT 1")).scalar() == 1
        engine.dispose()
