"""The schema is made by Alembic alone, and it is exactly what the models declare."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

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
