"""Start-up: the roster mirrored, and decisions of an older bundle never served."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from app import bootstrap
from app.auth.service import Principal
from app.config import PROJECT_ROOT
from app.db import transaction
from app.errors import NotFound
from app.members.models import Member
from app.reports import service as reports_service
from tests.conftest import World, drop_database, make_world


def principal(code: str) -> Principal:
    return Principal(client_id=f"{code}.test", member=code, scopes=frozenset(), token_id="t")


@pytest.fixture
def changed_policies(tmp_path: Path) -> Path:
    """The shipped bundle with Germany's clearance lowered."""
    target = tmp_path / "policies"
    shutil.copytree(PROJECT_ROOT / "policies", target)
    roster = target / "roster.yaml"
    text = roster.read_text()
    deu = text.index("- code: DEU")
    clearance = text.index("clearance: SECRET", deu)
    text = text[:clearance] + "clearance: RESTRICTED" + text[clearance + len("clearance: SECRET") :]
    roster.write_text(text)
    return target


class TestPolicyChangeAtStart:
    def test_stale_decisions_are_not_served_and_are_made_again_at_start(
        self, tmp_path: Path, changed_policies: Path
    ) -> None:
        world: World = make_world(tmp_path / "w")
        try:
            created = world.submit("USA", classification="SECRET", releasable_to=["ALL"])
            assert world.get("DEU", created["id"]).json()["access"] == "full"

            settings = world.settings.model_copy(update={"policy_dir": changed_policies})
            state = bootstrap.build_state(settings)
            assert state.policy.bundle.hash != world.state.policy.bundle.hash
            with state.db.read_engine.connect() as conn, pytest.raises(NotFound):
                reports_service.read(
                    conn,
                    state.policy,
                    state.envelope,
                    principal("DEU"),
                    created["id"],
                    [],
                    purpose=None,
                )

            bootstrap.prepare_database(state)
            with state.db.read_engine.connect() as conn:
                view = reports_service.read(
                    conn,
                    state.policy,
                    state.envelope,
                    principal("DEU"),
                    created["id"],
                    [],
                    purpose=None,
                )
            assert view.level == "tearline"
            state.db.dispose()
        finally:
            world.close()
            drop_database(world.settings.resolved_database_url)


class TestRosterSync:
    def test_a_member_suspended_in_the_roster_is_refused_at_once(
        self, tmp_path: Path, changed_policies: Path
    ) -> None:
        world: World = make_world(tmp_path / "w")
        try:
            headers = world.headers("DNK")
            assert world.http.get("/v1/reports", headers=headers).status_code == 200
            roster = changed_policies / "roster.yaml"
            text = roster.read_text()
            start = text.index("  - code: DNK")
            active = text.index("active: true", start)
            roster.write_text(text[:active] + "active: false" + text[active + 12 :])
            settings = world.settings.model_copy(update={"policy_dir": changed_policies})
            state = bootstrap.build_state(settings)
            bootstrap.prepare_database(state)
            with transaction(state.sessionmaker) as session:
                dnk = session.get(Member, "DNK")
                assert dnk is not None
                assert dnk.active is False
            state.db.dispose()
            # Its client is refused at once, also with a token issued before.
            assert world.http.get("/v1/reports", headers=headers).status_code == 401
            assert world.request_token("DNK").status_code == 401
        finally:
            world.close()
            drop_database(world.settings.resolved_database_url)
