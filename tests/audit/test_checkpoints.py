"""Signed checkpoints: when they are issued, what they sign, and what a verifier refuses."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from app.audit import checkpoints, tree
from app.audit.checkpoints import CheckpointError
from app.db import utcnow
from app.kit import jwt
from app.kit.jwt import SigningKey
from app.webhooks.models import Event
from tests.audit.conftest import maintain, maintain_all
from tests.conftest import World, drop_database, make_world


@pytest.fixture
def every_ten(tmp_path: Path) -> Iterator[World]:
    """A world that issues a checkpoint every 10 entries (or every 60 s)."""
    w = make_world(tmp_path, audit_checkpoint_entries=10, audit_checkpoint_seconds=60)
    yield w
    w.close()
    drop_database(w.settings.resolved_database_url)


def _grow(world: World, count: int) -> None:
    for _ in range(count):
        world.http.get("/v1/reports", headers=world.headers("DEU"))


def _all(world: World) -> list[checkpoints.SignedCheckpoint]:
    with world.state.engine.connect() as conn:
        return checkpoints.page(conn, None, None, 1000)


class TestIssuing:
    def test_the_first_step_with_entries_issues_a_checkpoint_over_all_of_them(
        self, fresh_world: World
    ) -> None:
        progress = maintain_all(fresh_world)
        assert progress is not None
        assert progress.checkpoint is not None
        made = progress.checkpoint
        with fresh_world.state.engine.connect() as conn:
            assert made.tree_size == tree.log_size(conn)
            assert made.root_hash == tree.root(conn, made.tree_size)

    def test_none_is_issued_until_the_tree_grew_by_n_entries(self, every_ten: World) -> None:
        maintain_all(every_ten)
        first = _all(every_ten)[-1]
        _grow(every_ten, 2)  # each request leaves fewer than 10 entries
        assert maintain_all(every_ten).checkpoint is None  # type: ignore[union-attr]
        _grow(every_ten, 10)
        progress = maintain_all(every_ten)
        assert progress is not None
        assert progress.checkpoint is not None
        assert progress.checkpoint.tree_size - first.tree_size >= 10

    def test_after_t_seconds_any_growth_gets_a_checkpoint_and_no_growth_none(
        self, every_ten: World
    ) -> None:
        maintain_all(every_ten)
        later = utcnow() + timedelta(seconds=61)
        assert maintain(every_ten, later).checkpoint is None  # type: ignore[union-attr]
        _grow(every_ten, 1)
        progress = maintain(every_ten, later)
        assert progress is not None
        assert progress.checkpoint is not None

    def test_timestamps_never_go_backwards_when_the_clock_does(self, every_ten: World) -> None:
        maintain_all(every_ten)
        first = _all(every_ten)[-1]
        _grow(every_ten, 12)
        progress = maintain_all(every_ten, first.timestamp - timedelta(hours=1))
        assert progress is not None
        assert progress.checkpoint is not None
        assert progress.checkpoint.timestamp == first.timestamp

    def test_a_checkpoint_must_cover_more_than_the_last(self, fresh_world: World) -> None:
        maintain_all(fresh_world)
        last = _all(fresh_world)[-1]
        with (
            fresh_world.state.engine.begin() as conn,
            pytest.raises(ValueError, match="more entries"),
        ):
            checkpoints.issue(
                conn, fresh_world.state.signing_key, last.tree_size, last.root_hash, utcnow()
            )

    def test_each_checkpoint_goes_out_as_an_audit_checkpoint_event(
        self, fresh_world: World
    ) -> None:
        progress = maintain_all(fresh_world)
        assert progress is not None
        assert progress.checkpoint is not None
        with fresh_world.state.engine.connect() as conn:
            (data,) = conn.execute(
                select(Event.data).where(Event.type == "audit.checkpoint")
            ).scalars()
        assert data == progress.checkpoint.public()


class TestParse:
    @pytest.fixture
    def signed(self, fresh_world: World) -> dict[str, Any]:
        maintain_all(fresh_world)
        return _all(fresh_world)[-1].public()

    def test_a_checkpoint_as_issued_verifies(
        self, fresh_world: World, signed: dict[str, Any]
    ) -> None:
        parsed = checkpoints.parse(signed, fresh_world.state.verification_keys)
        assert parsed.public() == signed

    @pytest.mark.parametrize(
        ("field", "value"),
        [
            ("tree_size", 1),
            ("root_hash", base64.b64encode(b"\x01" * 32).decode()),
            ("timestamp", "2020-01-01T00:00:00.000000Z"),
        ],
    )
    def test_a_field_changed_after_signing_is_refused(
        self, fresh_world: World, signed: dict[str, Any], field: str, value: Any
    ) -> None:
        with pytest.raises(CheckpointError, match="differs"):
            checkpoints.parse({**signed, field: value}, fresh_world.state.verification_keys)

    def test_a_signature_by_another_key_is_refused(
        self, fresh_world: World, signed: dict[str, Any]
    ) -> None:
        stranger = SigningKey.generate(fresh_world.state.signing_key.kid)
        parsed = checkpoints.parse(signed, fresh_world.state.verification_keys)
        forged = checkpoints.sign(stranger, parsed.tree_size, parsed.root_hash, parsed.timestamp)
        with pytest.raises(CheckpointError, match="signature"):
            checkpoints.parse({**signed, "signature": forged}, fresh_world.state.verification_keys)

    def test_a_token_of_another_type_is_refused_as_a_checkpoint(
        self, fresh_world: World, signed: dict[str, Any]
    ) -> None:
        claims = {k: signed[k] for k in ("tree_size", "root_hash", "timestamp")}
        other = jwt.sign(claims, fresh_world.state.signing_key, typ="JWT")
        with pytest.raises(CheckpointError, match="signature"):
            checkpoints.parse({**signed, "signature": other}, fresh_world.state.verification_keys)

    @pytest.mark.parametrize(
        "broken",
        [
            {"tree_size": True},
            {"tree_size": -1},
            {"tree_size": "12"},
            {"root_hash": "not base64!"},
            {"root_hash": base64.b64encode(b"short").decode()},
            {"timestamp": "yesterday"},
            {"timestamp": "2026-01-01T00:00:00"},
            {"signature": None},
        ],
    )
    def test_malformed_checkpoints_are_refused(
        self, fresh_world: World, signed: dict[str, Any], broken: dict[str, Any]
    ) -> None:
        with pytest.raises(CheckpointError):
            checkpoints.parse({**signed, **broken}, fresh_world.state.verification_keys)

    def test_a_missing_field_is_refused(self, fresh_world: World, signed: dict[str, Any]) -> None:
        del signed["root_hash"]
        with pytest.raises(CheckpointError, match="missing"):
            checkpoints.parse(signed, fresh_world.state.verification_keys)
