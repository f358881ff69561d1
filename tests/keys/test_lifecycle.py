"""Key versions: rotation, re-wrapping in resumable batches, retirement."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, text, update

from app.db import utcnow
from app.keys import lifecycle
from app.keys import service as key_service
from app.keys.models import MemberKey
from app.keys.provider import LocalKeyring
from app.keys.service import Envelope
from app.reports.models import ReportKey
from app.webhooks import delivery
from app.webhooks.models import Subscription
from tests.conftest import World
from tests.webhooks.conftest import subscribe

HOOK = "http://127.0.0.1:9/hook"


def _keys_of(world: World, member: str) -> list[tuple[str, int, int, bytes | None]]:
    with world.state.engine.connect() as conn:
        rows = conn.execute(
            select(
                ReportKey.report_id,
                ReportKey.version,
                ReportKey.key_version,
                ReportKey.wrapped_data_key,
            )
            .where(ReportKey.key_member == member)
            .order_by(ReportKey.report_id)
        )
        return [tuple(r) for r in rows]  # type: ignore[misc]


def _ciphertexts(world: World) -> list[bytes]:
    with world.state.engine.connect() as conn:
        return [
            bytes(r[0])
            for r in conn.execute(text("SELECT body_ct FROM report_versions ORDER BY report_id"))
        ]


def _rotate(world: World, member: str) -> int:
    with world.state.sessionmaker.begin() as session:
        return lifecycle.rotate_member(session, world.state.envelope, member)


def _rewrap_all(world: World, batch: int = 500) -> lifecycle.RewrapTotals:
    """One sweep of what `tearline keys rewrap` runs, on a process of its own (a fresh cache)."""
    totals = lifecycle.RewrapTotals()
    envelope = Envelope(world.state.keys)
    lifecycle.rewrap_pass(world.state.sessionmaker, world.state.keys, envelope, batch, totals)
    return totals


def _status(world: World) -> lifecycle.KeyStatus:
    with world.state.engine.connect() as conn:
        return lifecycle.status(conn, world.state.keys, world.state.keys.held_master_versions())


def _after_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """As if the few seconds a process trusts its key cache were over."""
    later = key_service._monotonic() + key_service.CURRENT_VERSION_TTL + 1
    monkeypatch.setattr(key_service, "_monotonic", lambda: later)


class TestRotation:
    def test_new_writes_use_the_new_member_key_version(
        self, fresh_world: World, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        world = fresh_world
        before = world.submit("DEU")["id"]
        assert _rotate(world, "DEU") == 2
        _after_cache(monkeypatch)
        after = world.submit("DEU")["id"]
        versions = {r[0]: r[2] for r in _keys_of(world, "DEU")}
        assert versions == {before: 1, after: 2}
        # Both readable: the old version stays valid until it is retired.
        assert world.get("ITA", before).status_code == 200
        assert world.get("ITA", after).status_code == 200

    def test_a_rotation_is_audited(self, fresh_world: World) -> None:
        _rotate(fresh_world, "DEU")
        with fresh_world.state.engine.connect() as conn:
            target = conn.scalar(text("SELECT target FROM audit_entries WHERE action='key.rotate'"))
        assert target == "member_key:DEU"


class TestRewrap:
    def test_every_data_key_moves_to_the_current_version_and_no_ciphertext_changes(
        self, fresh_world: World, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        world = fresh_world
        ids = [world.submit("DEU", title=f"r{i}")["id"] for i in range(5)]
        bodies = {i: world.get("ITA", i).json()["body"] for i in ids}
        ciphertexts = _ciphertexts(world)
        _rotate(world, "DEU")
        assert _status(world).stale_data_keys == 5

        totals = _rewrap_all(world, batch=2)

        assert totals.data_keys == 5
        assert not totals.refused
        assert {r[2] for r in _keys_of(world, "DEU")} == {2}
        assert _ciphertexts(world) == ciphertexts
        assert _status(world).stale_data_keys == 0
        _after_cache(monkeypatch)
        assert {i: world.get("ITA", i).json()["body"] for i in ids} == bodies

    def test_an_interrupted_rewrap_resumes_with_what_is_left(self, fresh_world: World) -> None:
        world = fresh_world
        for i in range(4):
            world.submit("DEU", title=f"r{i}")
        _rotate(world, "DEU")
        envelope = Envelope(world.state.keys)
        with world.state.sessionmaker.begin() as session:
            current = lifecycle.current_versions(session.connection())
            moved, _, after = lifecycle.rewrap_data_keys(session, envelope, current, None, 1)
        assert (moved, after is not None) == (1, True)
        # A new run starts from the beginning and finds only what the first one left.
        assert _rewrap_all(world).data_keys == 3

    def test_a_corrupted_wrapped_key_is_left_as_it_is_and_reported(
        self, fresh_world: World
    ) -> None:
        world = fresh_world
        victim = world.submit("DEU")["id"]
        world.submit("DEU")
        _rotate(world, "DEU")
        with world.state.engine.begin() as conn:
            wrapped = conn.scalar(
                select(ReportKey.wrapped_data_key).where(ReportKey.report_id == victim)
            )
            flipped = bytes([wrapped[0] ^ 1]) + wrapped[1:]
            conn.execute(
                update(ReportKey)
                .where(ReportKey.report_id == victim)
                .values(wrapped_data_key=flipped)
            )
        totals = _rewrap_all(world, batch=1)
        assert totals.data_keys == 1
        assert totals.refused == {(victim, 1)}
        assert {r[0]: r[3] for r in _keys_of(world, "DEU")}[victim] == flipped

    def test_webhook_secrets_are_sealed_again_and_still_open(
        self, fresh_world: World, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        world = fresh_world
        created = subscribe(world, "DEU", HOOK)
        # A second secret, so the previous one is sealed too.
        rotated = world.http.post(
            f"/v1/webhooks/{created['id']}/rotate-secret", headers=world.headers("DEU")
        )
        assert rotated.status_code == 200, rotated.text
        _rotate(world, "DEU")

        totals = _rewrap_all(world)

        assert totals.secrets == 1
        with world.state.engine.connect() as conn:
            row = conn.execute(select(Subscription).where(Subscription.id == created["id"])).one()
            _after_cache(monkeypatch)
            secrets = delivery.signing_secrets(conn, Envelope(world.state.keys), row, utcnow())
        mapping: Any = row._mapping
        assert mapping["secret_key_version"] == 2
        assert mapping["previous_key_version"] == 2
        assert len(secrets) == 2

    def test_member_keys_move_to_a_new_master_version(self, fresh_world: World) -> None:
        world = fresh_world
        report = world.submit("DEU")["id"]
        keyring = world.state.keys
        assert isinstance(keyring, LocalKeyring)
        keyring.rotate_master()
        live = _status(world).stale_member_keys
        assert live == len(world.state.policy.bundle.members)

        totals = _rewrap_all(world)

        assert totals.member_keys == live
        assert _status(world).stale_member_keys == 0
        with world.state.engine.connect() as conn:
            masters = set(conn.scalars(select(MemberKey.master_version)))
            assert masters == {2}
            assert lifecycle.master_in_use(conn, 1) == 0
        # The old master key can go; a process starting from the file still reads everything.
        keyring.remove_master(1)
        fresh = LocalKeyring.load(keyring.path.parent, require_strict_permissions=False)
        assert fresh.held_master_versions() == [2]
        with world.state.engine.connect() as conn:
            row = conn.execute(
                select(ReportKey.key_version, ReportKey.wrapped_data_key).where(
                    ReportKey.report_id == report
                )
            ).one()
            key = Envelope(fresh).open_data_key(
                conn,
                report_id=report,
                version=1,
                originator="DEU",
                member_key_version=row.key_version,
                wrapped=row.wrapped_data_key,
            )
        assert len(key.reveal()) == 32


def _past_the_window(monkeypatch: pytest.MonkeyPatch) -> None:
    """As if the seconds in which writes may still use a superseded version were over."""
    later = utcnow() + timedelta(seconds=lifecycle.CURRENT_VERSION_TTL + 10)
    monkeypatch.setattr(lifecycle, "utcnow", lambda: later)


class TestRetirement:
    def test_a_version_just_superseded_is_refused_while_writes_may_still_use_it(
        self, fresh_world: World
    ) -> None:
        world = fresh_world
        _rotate(world, "DEU")
        with (
            pytest.raises(lifecycle.KeyLifecycleError, match="writes may still use it"),
            world.state.sessionmaker.begin() as session,
        ):
            lifecycle.retire_member_version(session, "DEU", 1)

    def test_a_version_still_in_use_is_refused_and_an_unused_one_destroyed(
        self, fresh_world: World, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        world = fresh_world
        world.submit("DEU")
        _rotate(world, "DEU")
        _past_the_window(monkeypatch)
        with (
            pytest.raises(lifecycle.KeyLifecycleError, match="rewrap"),
            world.state.sessionmaker.begin() as session,
        ):
            lifecycle.retire_member_version(session, "DEU", 1)

        _rewrap_all(world)
        with world.state.sessionmaker.begin() as session:
            lifecycle.retire_member_version(session, "DEU", 1)

        [old] = [k for k in _status(world).member_keys if k.member == "DEU" and k.version == 1]
        assert old.destroyed

    def test_the_current_version_cannot_be_retired(self, fresh_world: World) -> None:
        with (
            pytest.raises(lifecycle.KeyLifecycleError, match="current"),
            fresh_world.state.sessionmaker.begin() as session,
        ):
            lifecycle.retire_member_version(session, "DEU", 1)

    def test_the_current_master_version_cannot_be_deleted(self, fresh_world: World) -> None:
        keyring = fresh_world.state.keys
        assert isinstance(keyring, LocalKeyring)
        with pytest.raises(Exception, match="current"):
            keyring.remove_master(keyring.current_master_version())


class TestStatus:
    def test_counts_what_each_version_protects(self, fresh_world: World) -> None:
        world = fresh_world
        for _ in range(3):
            world.submit("DEU")
        subscribe(world, "DEU", HOOK)
        [deu] = [k for k in _status(world).member_keys if k.member == "DEU"]
        assert (deu.version, deu.current, deu.data_keys, deu.secrets) == (1, True, 3, 1)
        assert [m.version for m in _status(world).masters if m.current] == [1]


class TestWritersAndRetirement:
    def test_a_writer_holding_a_retired_version_in_its_cache_wraps_with_the_current_one(
        self, fresh_world: World, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        world = fresh_world
        world.submit("DEU")  # the process now has version 1 cached as current
        _rotate(world, "DEU")
        _rewrap_all(world)
        _past_the_window(monkeypatch)
        with world.state.sessionmaker.begin() as session:
            lifecycle.retire_member_version(session, "DEU", 1)
        # Within the cache's seconds the process still believes version 1 is current.
        report = world.submit("DEU")["id"]
        versions = {r[0]: r[2] for r in _keys_of(world, "DEU")}
        assert versions[report] == 2
        assert world.get("ITA", report).status_code == 200
