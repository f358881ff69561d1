"""The schema is made by Alembic alone, and it is exactly what the models declare."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import MetaData, inspect, text

from app import bootstrap
from app.db import make_engine
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
