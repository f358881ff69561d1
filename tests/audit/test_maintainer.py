"""The maintainer in the background of `serve`, on demand for proofs, one at a time."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from app.audit import checkpoints, maintainer, tree
from tests.audit.conftest import maintain
from tests.conftest import BACKEND, World, drop_database, make_world


class TestInServe:
    def test_serve_keeps_the_tree_and_issues_checkpoints_by_itself(self, tmp_path: Path) -> None:
        world = make_world(tmp_path, audit_tree_in_serve=True, audit_tree_poll_seconds=0.05)
        try:
            world.http.get("/v1/reports", headers=world.headers("DEU"))
            deadline = time.monotonic() + 10
            latest = None
            while time.monotonic() < deadline:
                with world.state.engine.connect() as conn:
                    latest = checkpoints.latest(conn)
                if latest is not None:
                    break
                time.sleep(0.05)
            assert latest is not None
            assert latest.tree_size > 0
        finally:
            world.close()
            drop_database(world.settings.resolved_database_url)

    def test_a_stopped_maintainer_ends_its_task(self, fresh_world: World) -> None:
        async def start_and_stop() -> bool:
            running = maintainer.start(fresh_world.state)
            await asyncio.sleep(0.05)
            await running.stop()
            return running.task.done()

        assert asyncio.run(start_and_stop())


class TestCover:
    def test_cover_integrates_up_to_the_size_asked(self, fresh_world: World) -> None:
        with fresh_world.state.engine.connect() as conn:
            size = tree.log_size(conn)
            assert tree.tree_size(conn) == 0
        asyncio.run(maintainer.cover(fresh_world.state, size))
        with fresh_world.state.engine.connect() as conn:
            assert tree.tree_size(conn) >= size

    def test_cover_beyond_the_log_is_refused(self, fresh_world: World) -> None:
        with fresh_world.state.engine.connect() as conn:
            size = tree.log_size(conn)
        with pytest.raises(ValueError, match="only"):
            asyncio.run(maintainer.cover(fresh_world.state, size + 5))


@pytest.mark.skipif(BACKEND != "postgres", reason="SQLite's one writer serialises maintainers")
class TestOneAtATime:
    def test_a_maintainer_skips_its_turn_while_another_holds_the_tree(
        self, fresh_world: World
    ) -> None:
        with fresh_world.state.engine.begin() as holder:
            holder.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": tree._TREE_LOCK})
            assert maintain(fresh_world) is None
        assert maintain(fresh_world) is not None
