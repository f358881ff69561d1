"""Removing a member destroys its member keys: everything it originated is unrecoverable."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text

from app.audit import service as audit
from app.keys import service as key_service
from app.keys.models import MemberKey
from app.keys.service import Envelope, KeyDestroyed
from app.kit import crypto
from app.members import removal
from app.members.models import Member
from app.reports import service as reports
from app.reports.models import ReportKey
from tests.conftest import World, report_body

GONE = "NLD"


def _set_active(policies: Path, code: str, active: bool) -> None:
    roster = policies / "roster.yaml"
    text_ = roster.read_text()
    start = text_.index(f"- code: {code}")
    at = text_.index("active: ", start)
    value = "true" if active else "false"
    roster.write_text(text_[:at] + f"active: {value}" + text_[text_.index("\n", at) :])


def _reload(world: World) -> None:
    """Put the bundle on disk in force, in the app's own event loop, and wait for re-decision."""
    portal = world.http.portal
    assert portal is not None
    outcome = portal.call(world.state.reloader.reload, audit.OPERATOR)
    assert outcome.changed
    portal.call(world.state.redecider.wait)


def _copies(world: World, code: str) -> list[dict[str, Any]]:
    """Every stored version of the member's reports, as a backup taken now would hold them."""
    with world.state.engine.connect() as conn:
        rows = conn.execute(
            select(
                ReportKey.report_id,
                ReportKey.version,
                ReportKey.key_version,
                ReportKey.wrapped_data_key,
                text("report_versions.body_ct"),
            )
            .join_from(
                ReportKey,
                reports._versions,
                (reports._versions.c.report_id == ReportKey.report_id)
                & (reports._versions.c.version == ReportKey.version),
            )
            .where(ReportKey.key_member == code)
        )
        return [dict(r._mapping) for r in rows]


def _remove(world: World, code: str) -> removal.Removal:
    with world.state.sessionmaker.begin() as session:
        done = removal.remove(session, world.state.policy.bundle, code)
    while True:
        with world.state.sessionmaker.begin() as session:
            made = removal.shred_originated(session, world.state.policy, code, 1)
        if not made:
            return done


def _open(envelope: Envelope, world: World, copy: dict[str, Any]) -> bytes:
    with world.state.engine.connect() as conn:
        key = envelope.open_data_key(
            conn,
            report_id=copy["report_id"],
            version=copy["version"],
            originator=GONE,
            member_key_version=copy["key_version"],
            wrapped=copy["wrapped_data_key"],
        )
    aad = key_service.field_aad(copy["report_id"], copy["version"], GONE, "body")
    return crypto.aead_decrypt(key, copy["body_ct"], aad)


class TestRemoval:
    def test_every_report_the_member_originated_becomes_unrecoverable(
        self, reloadable: World, policies: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        world = reloadable
        own = [world.submit(GONE, title=f"report {i}")["id"] for i in range(3)]
        other = world.submit("ITA")["id"]
        before = _copies(world, GONE)
        assert {c["report_id"] for c in before} == set(own)
        # The copies open while the member exists (the test would prove nothing otherwise).
        assert all(_open(Envelope(world.state.keys), world, c) for c in before)

        _set_active(policies, GONE, active=False)
        _reload(world)
        done = _remove(world, GONE)

        assert done.keys_destroyed >= 1
        assert done.clients_revoked >= 1
        with world.state.engine.connect() as conn:
            keys = conn.execute(
                select(MemberKey.wrapped_key).where(MemberKey.member_code == GONE)
            ).all()
        assert keys
        assert all(wrapped is None for (wrapped,) in keys)
        # The stored versions as they were before the removal (wrapped data keys, ciphertexts)
        # cannot be opened any more with the member keys the service holds: not by a new
        # process, and not by a running one once its few seconds of key cache are over. (A
        # backup also holds the old member key rows: docs/operations.md, "Backups".)
        fresh = Envelope(world.state.keys)
        for copy in before:
            with pytest.raises(KeyDestroyed):
                _open(fresh, world, copy)
        later = key_service._monotonic() + key_service.CURRENT_VERSION_TTL + 1
        monkeypatch.setattr(key_service, "_monotonic", lambda: later)
        for copy in before:
            with pytest.raises(KeyDestroyed):
                _open(world.state.envelope, world, copy)

        # Through the API: the reports are gone for everyone, the member's clients are revoked
        # (its token is refused), the rest of the service is untouched.
        for report_id in own:
            assert world.get("ITA", report_id).status_code == 404
        assert world.http.get("/v1/reports", headers=world.headers("USA")).status_code == 200
        assert world.get("USA", other).status_code == 200
        refused = world.http.post("/v1/reports", json=report_body(), headers=world.headers(GONE))
        assert refused.status_code == 401

    def test_tombstones_keep_no_ciphertext_and_no_index_entry(
        self, reloadable: World, policies: Path
    ) -> None:
        world = reloadable
        report_id = world.submit(GONE)["id"]
        _set_active(policies, GONE, active=False)
        _reload(world)
        _remove(world, GONE)
        with world.state.engine.connect() as conn:
            status = conn.scalar(
                text("SELECT status FROM reports WHERE id = :id"), {"id": report_id}
            )
            body = conn.scalar(
                text("SELECT body_ct FROM report_versions WHERE report_id = :id"), {"id": report_id}
            )
            index = conn.scalar(
                text("SELECT count(*) FROM entity_index WHERE report_id = :id"), {"id": report_id}
            )
            purged = conn.scalar(text("SELECT count(*) FROM events WHERE type = 'report.purged'"))
        assert status == "purged"
        assert body is None
        assert index == 0
        assert purged >= 1

    def test_an_active_member_of_the_roster_cannot_be_removed(self, world: World) -> None:
        with (
            pytest.raises(removal.RemovalError, match="roster"),
            world.state.sessionmaker.begin() as session,
        ):
            removal.remove(session, world.state.policy.bundle, "ITA")
        with world.state.engine.connect() as conn:
            live = conn.scalar(
                select(MemberKey.wrapped_key).where(MemberKey.member_code == "ITA").limit(1)
            )
        assert live is not None

    def test_a_removed_member_stays_removed_when_the_roster_names_it_again(
        self, reloadable: World, policies: Path
    ) -> None:
        world = reloadable
        _set_active(policies, GONE, active=False)
        _reload(world)
        _remove(world, GONE)
        _set_active(policies, GONE, active=True)
        _reload(world)
        with world.state.engine.connect() as conn:
            active = conn.scalar(select(Member.active).where(Member.code == GONE))
        assert active is False

    def test_removing_twice_changes_nothing_more(self, reloadable: World, policies: Path) -> None:
        world = reloadable
        _set_active(policies, GONE, active=False)
        _reload(world)
        first = _remove(world, GONE)
        again = _remove(world, GONE)
        assert not first.already_removed
        assert again.already_removed
        assert again.keys_destroyed == 0

    def test_the_removal_is_audited(self, reloadable: World, policies: Path) -> None:
        world = reloadable
        _set_active(policies, GONE, active=False)
        _reload(world)
        _remove(world, GONE)
        with world.state.engine.connect() as conn:
            reasons = conn.scalar(
                text("SELECT reasons FROM audit_entries WHERE action = 'member.remove'")
            )
        assert "keys_destroyed" in str(reasons)

    def test_an_unknown_member_is_refused(self, world: World) -> None:
        with (
            pytest.raises(removal.RemovalError, match="no member"),
            world.state.sessionmaker.begin() as session,
        ):
            removal.remove(session, world.state.policy.bundle, "XXX")
