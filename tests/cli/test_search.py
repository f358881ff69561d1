"""`tearline search reindex` and `tearline keys rotate-index`, in-process on a world's data."""

from __future__ import annotations

from sqlalchemy import select

from app.audit.models import AuditEntry
from app.db import transaction
from app.keys.provider import LocalKeyring
from app.search.index import BlindIndex
from app.search.models import EntityIndex
from tests.cli import invoke
from tests.conftest import World
from tests.search.test_index import valid_iban


def run(world: World, *args: str) -> tuple[int, str]:
    result = invoke(world, *args)
    return result.exit_code, result.output


def rows(world: World) -> list[tuple[str, str, bytes]]:
    with transaction(world.state.sessionmaker) as session:
        found = session.execute(
            select(EntityIndex.report_id, EntityIndex.key_id, EntityIndex.digest).order_by(
                EntityIndex.report_id
            )
        ).all()
    return [(r, k, d) for r, k, d in found]


class TestReindex:
    def test_rotation_then_reindex_rebuilds_every_row_with_the_new_key(
        self, fresh_world: World
    ) -> None:
        ibans = [valid_iban(), valid_iban()]
        created = [
            fresh_world.submit("DEU", entities=[{"type": "iban", "value": iban}]) for iban in ibans
        ]
        purged = fresh_world.submit("FRA")
        fresh_world.http.delete(f"/v1/reports/{purged['id']}", headers=fresh_world.headers("FRA"))
        old_key = fresh_world.state.blind_index.key_id

        code, output = run(fresh_world, "keys", "rotate-index")
        assert code == 0, output
        code, output = run(fresh_world, "search", "reindex", "--batch", "1")
        assert code == 0, output
        assert "reindexed 3 reports (2 entities" in output

        keyring = LocalKeyring.load(fresh_world.settings.data_dir, require_strict_permissions=False)
        index = BlindIndex(keyring.index_key())
        assert index.key_id != old_key
        expected = sorted(
            (c["id"], index.key_id, index.entry("iban", iban).digest)
            for c, iban in zip(created, ibans, strict=True)
        )
        assert rows(fresh_world) == expected
        with transaction(fresh_world.state.sessionmaker) as session:
            entry = session.execute(
                select(AuditEntry).where(AuditEntry.action == "search.reindex")
            ).scalar_one()
            rotation = session.execute(
                select(AuditEntry).where(AuditEntry.action == "key.rotate_index")
            ).scalar_one()
        assert entry.client == "operator"
        assert f"key:{index.key_id}" in entry.reasons
        assert "reports:3" in entry.reasons
        assert rotation.client == "operator"
        assert rotation.reasons == [f"old:{old_key}", f"new:{index.key_id}"]

    def test_reindex_is_idempotent(self, fresh_world: World) -> None:
        fresh_world.submit("DEU", entities=[{"type": "iban", "value": valid_iban()}])
        before = rows(fresh_world)
        assert run(fresh_world, "search", "reindex")[0] == 0
        assert run(fresh_world, "search", "reindex")[0] == 0
        assert rows(fresh_world) == before

    def test_reindex_after_an_id_resumes_there(self, fresh_world: World) -> None:
        created = sorted(
            fresh_world.submit("DEU", entities=[{"type": "iban", "value": valid_iban()}])["id"]
            for _ in range(3)
        )
        code, output = run(fresh_world, "search", "reindex", "--after", created[0])
        assert code == 0, output
        assert "reindexed 2 reports (2 entities" in output
