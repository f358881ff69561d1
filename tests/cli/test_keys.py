"""`tearline keys status|rotate|rewrap|retire` and `tearline members remove`, in-process."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from app.db import utcnow
from app.keys import lifecycle
from app.keys.models import MemberKey
from app.reports.models import ReportKey
from tests.cli.test_search import run
from tests.conftest import World
from tests.members.test_removal import _reload, _set_active


def _versions(world: World, member: str) -> set[int]:
    with world.state.engine.connect() as conn:
        return set(
            conn.scalars(select(ReportKey.key_version).where(ReportKey.key_member == member))
        )


class TestKeysCommands:
    def test_rotate_rewrap_retire_from_the_command_line(
        self, fresh_world: World, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        world = fresh_world
        world.submit("DEU")
        world.submit("DEU")

        code, output = run(world, "keys", "rotate", "--member", "DEU")
        assert code == 0, output
        assert "key version 2" in output
        code, output = run(world, "keys", "status", "--json")
        assert code == 0, output
        status = json.loads(output)
        assert status["stale"]["data_keys"] == 2

        code, output = run(world, "keys", "retire", "--member", "DEU", "--version", "1")
        assert code == 1
        assert "writes may still use it" in output
        # Past the seconds in which API processes may still wrap with the old version.
        later = utcnow() + timedelta(seconds=lifecycle.CURRENT_VERSION_TTL + 10)
        monkeypatch.setattr(lifecycle, "utcnow", lambda: later)
        code, output = run(world, "keys", "retire", "--member", "DEU", "--version", "1")
        assert code == 1
        assert "still wraps 2 data key(s)" in output

        code, output = run(world, "keys", "rewrap", "--batch", "1")
        assert code == 0, output
        assert "2 data key(s)" in output
        assert _versions(world, "DEU") == {2}

        code, output = run(world, "keys", "retire", "--member", "DEU", "--version", "1")
        assert code == 0, output
        with world.state.engine.connect() as conn:
            destroyed = conn.scalar(
                select(MemberKey.wrapped_key).where(
                    MemberKey.member_code == "DEU", MemberKey.version == 1
                )
            )
        assert destroyed is None

    def test_a_master_rotation_then_rewrap_then_retirement(self, fresh_world: World) -> None:
        world = fresh_world
        code, output = run(world, "keys", "rotate", "--master")
        assert code == 0, output
        code, output = run(world, "keys", "retire", "--master", "1")
        assert code == 1
        assert "still wraps" in output
        code, output = run(world, "keys", "rewrap")
        assert code == 0, output
        code, output = run(world, "keys", "retire", "--master", "1")
        assert code == 0, output
        keyring = json.loads((world.settings.data_dir / "keyring.json").read_text())
        assert sorted(keyring["master_keys"]) == ["2"]

    def test_rotate_needs_to_be_told_what(self, world: World) -> None:
        code, output = run(world, "keys", "rotate")
        assert code == 1
        assert "--member" in output

    def test_status_prints_a_table(self, world: World) -> None:
        code, output = run(world, "keys", "status")
        assert code == 0, output
        assert "master versions" in output
        assert "to re-wrap" in output


class TestMembersRemove:
    def test_removal_needs_the_code_twice(self, world: World) -> None:
        code, output = run(world, "members", "remove", "NLD", "--confirm", "NL")
        assert code == 1
        assert "--confirm" in output

    def test_a_member_on_the_roster_is_refused(self, world: World) -> None:
        code, output = run(world, "members", "remove", "NLD", "--confirm", "NLD")
        assert code == 1
        assert "roster" in output

    def test_a_suspended_member_is_removed(self, reloadable: World, policies: Path) -> None:
        world = reloadable
        world.submit("NLD")
        _set_active(policies, "NLD", active=False)
        _reload(world)
        code, output = run(world, "members", "remove", "NLD", "--confirm", "NLD")
        assert code == 0, output
        assert "1 report(s) made tombstones" in output


class TestSigningKeyCommands:
    def test_rotation_publishes_first_and_retirement_waits_for_the_tokens(
        self, fresh_world: World
    ) -> None:
        world = fresh_world
        old = world.state.signing_key.kid
        code, output = run(world, "keys", "rotate", "--signing")
        assert code == 0, output
        assert "published now" in output
        code, output = run(world, "keys", "status", "--json")
        states = {k["kid"]: k["state"] for k in json.loads(output)["signing_keys"]}
        assert states[old] == "active"
        assert sorted(states.values()) == ["active", "pending"]

        # The old key still signs until the new one's time has come.
        code, output = run(world, "keys", "retire", "--signing", old)
        assert code == 1
        assert "still signs" in output

        code, output = run(world, "keys", "rotate", "--signing", "--activate-in", "0")
        assert code == 0, output
        # Tokens the old key signed may be valid for the access-token lifetime.
        code, output = run(world, "keys", "retire", "--signing", old)
        assert code == 1
        assert "may be valid until" in output
