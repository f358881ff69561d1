"""The schema is made by Alembic alone, and it is exactly what the models declare."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, MetaData, inspect, select, text
from sqlalchemy.exc import DBAPIError

from app import bootstrap
from app.audit import canonical
from app.audit import service as audit
from app.audit.models import AuditEntry
from app.db import make_engine, make_sessionmaker, transaction
from app.models import Base
from tests.conftest import drop_database, new_database_url


class TestMigrations:
    def test_upgrade_builds_the_schema_the_models_declare(self, tmp_path: Path) -> None:
        url = new_database_url(tmp_path)
        try:
            bootstrap.upgrade_database(url)
            engine = make_engine(url)
            with engine.connect() as conn:
                diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
            engine.dispose()
            assert diff == []
        finally:
            drop_database(url)

    def test_upgrade_is_idempotent_and_downgrade_removes_everything(self, tmp_path: Path) -> None:
        url = new_database_url(tmp_path)
        try:
            bootstrap.upgrade_database(url)
            bootstrap.upgrade_database(url)
            command.downgrade(bootstrap.alembic_config(url), "base")
            engine = make_engine(url)
            assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
            engine.dispose()
        finally:
            drop_database(url)

    def test_0002_moves_data_keys_apart_and_gives_versions_their_markings(
        self, tmp_path: Path
    ) -> None:
        url = new_database_url(tmp_path)
        now = datetime.now(UTC)
        wrapped = b"\x01" * 60
        try:
            command.upgrade(bootstrap.alembic_config(url), "0001")
            engine = make_engine(url)
            meta = MetaData()
            meta.reflect(engine)
            t = meta.tables
            with engine.begin() as conn:
                conn.execute(
                    t["members"].insert(),
                    [
                        {
                            "code": "ITA",
                            "name": "Italy",
                            "kind": "state",
                            "active": True,
                            "updated_at": now,
                        }
                    ],
                )
                conn.execute(
                    t["member_keys"].insert(),
                    [
                        {
                            "member_code": "ITA",
                            "version": 1,
                            "master_version": 1,
                            "wrapped_key": b"k",
                            "created_at": now,
                        }
                    ],
                )
                conn.execute(
                    t["reports"].insert(),
                    [
                        {
                            "id": "r1",
                            "originator": "ITA",
                            "version": 1,
                            "status": "active",
                            "created_at": now,
                            "updated_at": now,
                            "classification": "SECRET",
                            "tlp": "AMBER",
                            "orcon": False,
                            "topics": ["MOV.HAW"],
                            "grading": None,
                            "releasable_to": ["ALL"],
                            "tearline_to": ["ALL"],
                            "tearline_classification": "UNCLASSIFIED",
                            "has_summary": True,
                        }
                    ],
                )
                conn.execute(
                    t["report_versions"].insert(),
                    [
                        {
                            "report_id": "r1",
                            "version": 1,
                            "created_at": now,
                            "key_member": "ITA",
                            "key_version": 1,
                            "wrapped_data_key": wrapped,
                            "title_ct": b"t",
                        }
                    ],
                )
            engine.dispose()

            bootstrap.upgrade_database(url)

            engine = make_engine(url)
            with engine.connect() as conn:
                key = conn.execute(text("SELECT * FROM report_keys")).mappings().one()
                version = conn.execute(text("SELECT * FROM report_versions")).mappings().one()
            engine.dispose()
            assert (key["report_id"], key["version"], key["key_member"]) == ("r1", 1, "ITA")
            assert bytes(key["wrapped_data_key"]) == wrapped
            assert "wrapped_data_key" not in version
            markings = version["markings"]
            markings = json.loads(markings) if isinstance(markings, str) else markings
            assert markings["classification"] == "SECRET"
            assert markings["topics"] == ["MOV.HAW"]
        finally:
            drop_database(url)


def _old_entry(old_id: int, n: int) -> dict[str, Any]:
    """An audit entry as revision 0007 stored it: a sequence's id, no leaf hash."""
    return {
        "id": old_id,
        "time": datetime(2026, 11, 1, 9, 30, tzinfo=UTC) + timedelta(microseconds=1_000_003 * n),
        "actor": "ITA" if n % 2 else None,
        "client": "ITA.test" if n % 2 else "operator",
        "action": "report.read",
        "target": f"report:old-{n}",
        "decision": "allow" if n % 3 else "deny",
        "reasons": ["level:full", f"n:{n}"],
        "policy_hash": "ab" * 32,
        "purpose": "café \\u0007 review" if n == 1 else None,
        "request_id": f"req-{n}",
    }


def _insert_old(engine: Engine, rows: list[dict[str, Any]]) -> None:
    meta = MetaData()
    meta.reflect(engine)
    with engine.begin() as conn:
        conn.execute(meta.tables["audit_entries"].insert(), rows)


def _migrated(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(select(AuditEntry.__table__).order_by(AuditEntry.id)))


class TestMerkleAuditLogMigration:
    """0008: old entries numbered 0, 1, 2, ... in their order and hashed; the log append-only."""

    def test_old_entries_are_numbered_densely_in_their_order_and_get_their_leaf_hashes(
        self, tmp_path: Path
    ) -> None:
        url = new_database_url(tmp_path)
        old = [_old_entry(8, 2), _old_entry(3, 0), _old_entry(7, 1)]  # ids as a sequence left them
        try:
            command.upgrade(bootstrap.alembic_config(url), "0007")
            engine = make_engine(url)
            _insert_old(engine, old)
            engine.dispose()

            bootstrap.upgrade_database(url)

            engine = make_engine(url)
            rows = _migrated(engine)
            engine.dispose()
            assert [(r.id, r.target) for r in rows] == [
                (0, "report:old-0"),
                (1, "report:old-1"),
                (2, "report:old-2"),
            ]
            by_target = {e["target"]: e for e in old}
            for row in rows:
                # The hash of the entry as it was sent, at its new index: nothing else changed.
                expected = canonical.leaf_hash({**by_target[row.target], "id": row.id})
                assert bytes(row.leaf_hash) == expected, row.id
                assert canonical.public(row._mapping) == canonical.public(
                    {**by_target[row.target], "id": row.id}
                )
        finally:
            drop_database(url)

    def test_old_entries_beyond_one_batch_keep_their_order(self, tmp_path: Path) -> None:
        url = new_database_url(tmp_path)
        count = 2345  # more than the migration's batches of 1000
        try:
            command.upgrade(bootstrap.alembic_config(url), "0007")
            engine = make_engine(url)
            _insert_old(engine, [_old_entry(10 * n + 5, n) for n in range(count)])
            engine.dispose()

            bootstrap.upgrade_database(url)

            engine = make_engine(url)
            rows = _migrated(engine)
            engine.dispose()
            assert [(r.id, r.target) for r in rows] == [
                (n, f"report:old-{n}") for n in range(count)
            ]
            assert all(bytes(r.leaf_hash) == canonical.leaf_hash(r._mapping) for r in rows)
        finally:
            drop_database(url)

    def test_after_the_upgrade_entries_continue_densely_and_refuse_change(
        self, tmp_path: Path
    ) -> None:
        url = new_database_url(tmp_path)
        try:
            command.upgrade(bootstrap.alembic_config(url), "0007")
            engine = make_engine(url)
            _insert_old(engine, [_old_entry(3, 0), _old_entry(7, 1), _old_entry(8, 2)])
            engine.dispose()
            bootstrap.upgrade_database(url)
            engine = make_engine(url)

            with transaction(make_sessionmaker(engine)) as session:
                audit.record(session, audit.OPERATOR, audit.Entry("test.migrated", "allow"))
            for statement in (
                "UPDATE audit_entries SET decision = 'deny' WHERE id = 1",
                "DELETE FROM audit_entries WHERE id = 1",
            ):
                with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
                    conn.execute(text(statement))

            rows = _migrated(engine)
            engine.dispose()
            assert [(r.id, r.action, r.decision) for r in rows] == [
                (0, "report.read", "deny"),
                (1, "report.read", "allow"),
                (2, "report.read", "allow"),
                (3, "test.migrated", "allow"),
            ]
        finally:
            drop_database(url)

    def test_downgrade_to_0007_restores_the_old_log(self, tmp_path: Path) -> None:
        url = new_database_url(tmp_path)
        try:
            command.upgrade(bootstrap.alembic_config(url), "0007")
            engine = make_engine(url)
            _insert_old(engine, [_old_entry(3, 0), _old_entry(7, 1), _old_entry(8, 2)])
            engine.dispose()
            bootstrap.upgrade_database(url)

            command.downgrade(bootstrap.alembic_config(url), "0007")

            engine = make_engine(url)
            tables = set(inspect(engine).get_table_names())
            assert not tables & {"audit_nodes", "audit_tree", "audit_checkpoints"}
            columns = {c["name"] for c in inspect(engine).get_columns("audit_entries")}
            assert "leaf_hash" not in columns
            new = {k: v for k, v in _old_entry(0, 3).items() if k != "id"}
            with engine.begin() as conn:
                # The triggers are gone, and ids come from the database again.
                conn.execute(text("UPDATE audit_entries SET decision = 'deny' WHERE id = 1"))
                meta = MetaData()
                meta.reflect(conn)
                conn.execute(meta.tables["audit_entries"].insert(), [new])
                ids = conn.execute(text("SELECT id, decision FROM audit_entries ORDER BY id"))
                found = [tuple(r) for r in ids]
            engine.dispose()
            assert found == [(0, "deny"), (1, "deny"), (2, "allow"), (3, "deny")]
            # And up again: the log entries written meanwhile are hashed like the others.
            bootstrap.upgrade_database(url)
            engine = make_engine(url)
            rows = _migrated(engine)
            engine.dispose()
            assert [r.id for r in rows] == [0, 1, 2, 3]
            assert all(bytes(r.leaf_hash) == canonical.leaf_hash(r._mapping) for r in rows)
        finally:
            drop_database(url)
