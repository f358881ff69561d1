"""A changed bundle in force without a restart: refused if bad, never a read under the old one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from app.audit.models import AuditEntry
from app.db import transaction
from app.policy import reload as reload_module
from app.reports.models import ReportAccess
from tests.conftest import World


def lower_clearance(policies: Path, code: str, to: str) -> None:
    roster = policies / "roster.yaml"
    text = roster.read_text()
    start = text.index(f"- code: {code}")
    at = text.index("clearance: ", start)
    end = text.index("\n", at)
    roster.write_text(text[:at] + f"clearance: {to}" + text[end:])


def suspend(policies: Path, code: str) -> None:
    roster = policies / "roster.yaml"
    text = roster.read_text()
    start = text.index(f"- code: {code}")
    at = text.index("active: true", start)
    roster.write_text(text[:at] + "active: false" + text[at + len("active: true") :])


def reload(world: World, code: str = "ITA") -> Any:
    return world.http.post("/v1/policy/reload", headers=world.headers(code))


def settle(world: World) -> None:
    """Wait for the background re-decision in the app's own event loop."""
    world.http.portal.call(world.state.redecider.wait)  # type: ignore[union-attr]


def reload_entries(world: World) -> list[tuple[str, list[str]]]:
    with transaction(world.state.sessionmaker) as session:
        rows = session.execute(
            select(AuditEntry.decision, AuditEntry.reasons)
            .where(AuditEntry.action == "policy.reload")
            .order_by(AuditEntry.id)
        ).all()
    return [(d, list(r)) for d, r in rows]


class TestReload:
    def test_a_changed_bundle_is_in_force_at_once_and_every_decision_is_made_again(
        self, reloadable: World, policies: Path
    ) -> None:
        world = reloadable
        created = world.submit("USA", classification="SECRET", releasable_to=["ALL"])
        assert world.get("NLD", created["id"]).json()["access"] == "full"
        old_hash = world.state.policy.bundle.hash
        lower_clearance(policies, "NLD", "RESTRICTED")

        response = reload(world)

        assert response.status_code == 200, response.text
        body = response.json()
        assert body["changed"] is True
        assert body["previous_hash"] == old_hash
        assert body["hash"] != old_hash
        # Never the old decision: hidden while stale, then the new level.
        first = world.get("NLD", created["id"])
        assert first.status_code == 404 or first.json()["access"] == "tearline"
        settle(world)
        assert world.get("NLD", created["id"]).json()["access"] == "tearline"
        with transaction(world.state.sessionmaker) as session:
            hashes = set(session.scalars(select(ReportAccess.policy_hash)))
        assert hashes == {body["hash"]}
        assert reload_entries(world)[-1][0] == "allow"

    def test_no_read_between_the_swap_and_the_re_decision_uses_the_old_decision(
        self, reloadable: World, policies: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        world = reloadable
        created = world.submit("USA", classification="SECRET", releasable_to=["ALL"])
        assert world.get("NLD", created["id"]).json()["access"] == "full"
        lower_clearance(policies, "NLD", "RESTRICTED")
        # Hold the re-decision back, so every read below happens while decisions are stale.
        monkeypatch.setattr(world.state.redecider, "kick", lambda: None)

        assert reload(world).status_code == 200

        assert world.get("NLD", created["id"]).status_code == 404
        listed = world.http.get("/v1/reports?limit=100", headers=world.headers("NLD"))
        assert created["id"] not in {i["id"] for i in listed.json()["items"]}

    def test_a_bundle_that_fails_validation_is_refused_and_the_old_one_stays(
        self, reloadable: World, policies: Path
    ) -> None:
        world = reloadable
        before = world.state.policy.bundle.hash
        (policies / "base.cedar").write_text("permit (principal, action, resource) when {")

        response = reload(world)

        assert response.status_code == 422
        assert "base.cedar" in response.text
        assert world.state.policy.bundle.hash == before
        assert reload_entries(world)[-1][0] == "deny"

    def test_a_bundle_failing_its_own_decision_cases_is_refused(
        self, reloadable: World, policies: Path
    ) -> None:
        world = reloadable
        before = world.state.policy.bundle.hash
        # A valid bundle with a case its own policies contradict.
        (policies / "tests" / "wrong.yaml").write_text(
            "cases:\n"
            "  - name: outsider-reads-chairs-report\n"
            "    member: NZL\n"
            "    report: {originator: QAT, classification: SECRET, topics: [REV.KFR],"
            " releasable_to: [CHAIRS]}\n"
            "    expect: full\n"
        )

        response = reload(world)

        assert response.status_code == 422, response.text
        assert "decision case failed" in response.text
        assert world.state.policy.bundle.hash == before

    def test_an_unchanged_bundle_changes_nothing(self, reloadable: World) -> None:
        response = reload(reloadable)

        assert response.status_code == 200
        assert response.json()["changed"] is False
        assert "unchanged" in reload_entries(reloadable)[-1][1]

    def test_only_the_chairs_may_reload(self, reloadable: World, policies: Path) -> None:
        lower_clearance(policies, "NLD", "RESTRICTED")
        before = reloadable.state.policy.bundle.hash

        assert reload(reloadable, "DEU").status_code == 403
        assert reloadable.state.policy.bundle.hash == before

    def test_a_member_suspended_by_a_reload_is_refused_at_once_tokens_included(
        self, reloadable: World, policies: Path
    ) -> None:
        world = reloadable
        headers = world.headers("POL")
        assert world.http.get("/v1/reports", headers=headers).status_code == 200
        suspend(policies, "POL")

        assert reload(world).status_code == 200

        assert world.http.get("/v1/reports", headers=headers).status_code == 401
        assert world.request_token("POL").status_code == 401

    def test_a_failed_batch_is_tried_again_until_every_report_is_decided(
        self, reloadable: World, policies: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        world = reloadable
        created = world.submit("USA", classification="SECRET", releasable_to=["ALL"])
        original = reload_module.redecide_batch
        calls = {"n": 0}

        def flaky(*args: Any, **kwargs: Any) -> Any:
            calls["n"] += 1
            if calls["n"] == 1:
                raise OperationalError("SELECT", None, RuntimeError("database is locked"))
            return original(*args, **kwargs)

        monkeypatch.setattr(reload_module, "redecide_batch", flaky)
        monkeypatch.setattr(reload_module, "RETRY_CAP_SECONDS", 0.01)
        lower_clearance(policies, "NLD", "RESTRICTED")

        assert reload(world).status_code == 200
        settle(world)

        assert calls["n"] >= 2
        assert world.get("NLD", created["id"]).json()["access"] == "tearline"
        assert world.get("USA", created["id"]).json()["access"] == "full"
