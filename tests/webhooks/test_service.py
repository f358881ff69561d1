"""Events: stored with the change that caused them, then put in commit order (`position`).

On SQLite (one writer at a time) the position is taken at insert; on PostgreSQL the sequencer
gives positions to committed events only, under an advisory lock, so a reader past position n
never meets an event that commits later with a smaller number.
"""

from __future__ import annotations

import threading
import time
import uuid
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Connection, func, select

from app.db import utcnow
from app.webhooks import service
from app.webhooks.models import Event
from tests.conftest import BACKEND, World

ON_POSTGRES = BACKEND == "postgres"
postgres_only = pytest.mark.skipif(
    not ON_POSTGRES, reason="PostgreSQL sequences committed events; SQLite positions at insert"
)
sqlite_only = pytest.mark.skipif(
    ON_POSTGRES, reason="SQLite positions events at insert; PostgreSQL leaves that to sequence"
)


def marker() -> str:
    return str(uuid.uuid4())


def emit_for(conn: Connection, member: str, mark: str) -> None:
    """An event meant for `member` alone, told apart from every other by `mark`."""
    service.emit(
        conn, "webhook.disabled", {"webhook_id": mark, "reason": "failing"}, recipient=member
    )


def stored(world: World, mark: str) -> Any:
    """The event whose data carries `mark`, or None."""
    with world.state.engine.connect() as conn:
        rows = conn.execute(
            select(Event).where(Event.type.in_(("webhook.disabled", "report.revoked")))
        ).all()
    found = [r for r in rows if r.data.get("webhook_id") == mark]
    assert len(found) <= 1
    return found[0] if found else None


def hold_the_lock(conn: Connection) -> None:
    """Be the sequencer in `conn`'s transaction: it takes the lock, finds nothing, keeps it."""
    assert service.sequence(conn, wait=True) == 0


def count_events(world: World) -> int:
    with world.state.engine.connect() as conn:
        return int(conn.scalar(select(func.count()).select_from(Event)) or 0)


def last_position(world: World) -> int:
    with world.state.engine.connect() as conn:
        return int(conn.scalar(select(func.coalesce(func.max(Event.position), 0))) or 0)


def sequence_now(world: World, **kwargs: Any) -> int:
    with world.state.engine.begin() as conn:
        return service.sequence(conn, **kwargs)


def feed(world: World, code: str, cursor: str | None = None) -> tuple[list[str], str]:
    """The `webhook_id`s of one page of `code`'s sync feed, and the cursor after it."""
    params: dict[str, Any] = {"limit": 500, **({"cursor": cursor} if cursor else {})}
    response = world.http.get("/v1/sync", params=params, headers=world.headers(code))
    assert response.status_code == 200, response.text
    body = response.json()
    return [e["data"].get("webhook_id") for e in body["events"]], body["next_cursor"]


def feed_end(world: World, code: str) -> str:
    """A cursor past everything `code`'s feed holds now."""
    cursor: str | None = None
    while True:
        marks, cursor = feed(world, code, cursor)
        if not marks:
            return cursor


class TestEmit:
    def test_an_unknown_event_type_is_refused_and_nothing_is_stored(self, world: World) -> None:
        before = count_events(world)

        with world.state.engine.begin() as conn, pytest.raises(ValueError, match="unknown"):
            service.emit(conn, "report.deleted", {"report_id": marker()})

        assert count_events(world) == before

    def test_an_event_is_stored_with_a_public_uid_its_data_and_its_audience(
        self, world: World
    ) -> None:
        mark, report_id = marker(), marker()
        started = utcnow()

        with world.state.engine.begin() as conn:
            service.emit(
                conn,
                "report.revoked",
                {"webhook_id": mark},
                report_id=report_id,
                audience=["USA", "DEU", "USA", "FRA"],
            )

        event = stored(world, mark)
        assert event.type == "report.revoked"
        assert event.report_id == report_id
        assert event.recipient is None
        assert event.data == {"webhook_id": mark}
        # Each member once, in a stable order.
        assert event.audience == ["DEU", "FRA", "USA"]
        # The public id is a random UUID, not the serial id (which would count all events).
        assert uuid.UUID(event.uid).version == 4
        assert event.uid != str(event.id)
        assert started - timedelta(seconds=1) <= event.occurred_at <= utcnow()

    def test_an_event_without_an_audience_stores_none_and_one_for_its_recipient_names_it(
        self, world: World
    ) -> None:
        mark = marker()

        with world.state.engine.begin() as conn:
            emit_for(conn, "NZL", mark)

        event = stored(world, mark)
        assert (event.recipient, event.audience, event.report_id) == ("NZL", None, None)

    def test_every_event_gets_a_uid_of_its_own(self, world: World) -> None:
        marks = [marker() for _ in range(5)]

        with world.state.engine.begin() as conn:
            for mark in marks:
                emit_for(conn, "NZL", mark)

        assert len({stored(world, mark).uid for mark in marks}) == 5

    def test_an_event_rolled_back_with_its_change_is_not_stored(self, world: World) -> None:
        mark = marker()

        with world.state.engine.connect() as conn:
            transaction = conn.begin()
            emit_for(conn, "NZL", mark)
            transaction.rollback()

        assert stored(world, mark) is None

    @sqlite_only
    def test_on_sqlite_each_event_is_positioned_at_insert_in_commit_order(
        self, world: World
    ) -> None:
        first, second, third = marker(), marker(), marker()
        base = last_position(world)

        with world.state.engine.begin() as conn:
            emit_for(conn, "NZL", first)
            emit_for(conn, "NZL", second)
        with world.state.engine.begin() as conn:
            emit_for(conn, "NZL", third)

        positions = [stored(world, m).position for m in (first, second, third)]
        assert positions == [base + 1, base + 2, base + 3]
        # Nothing is left for a sequencer, which does nothing on SQLite.
        assert sequence_now(world) == 0

    @postgres_only
    def test_on_postgresql_an_event_has_no_position_until_sequenced(
        self, fresh_world: World
    ) -> None:
        world = fresh_world
        mark = marker()

        with world.state.engine.begin() as conn:
            emit_for(conn, "NZL", mark)

        assert stored(world, mark).position is None
        assert sequence_now(world) == 1
        assert stored(world, mark).position == 1


@postgres_only
class TestSequence:
    def test_committed_events_are_positioned_in_id_order_a_batch_at_a_time(
        self, fresh_world: World
    ) -> None:
        world = fresh_world
        marks = [marker() for _ in range(5)]
        for mark in marks:
            with world.state.engine.begin() as conn:
                emit_for(conn, "NZL", mark)

        assert sequence_now(world, limit=3) == 3
        assert sequence_now(world, limit=3) == 2
        assert sequence_now(world) == 0

        events = [stored(world, m) for m in marks]
        assert [e.position for e in events] == [1, 2, 3, 4, 5]
        assert [e.id for e in events] == sorted(e.id for e in events)

    def test_a_later_commit_of_a_smaller_id_is_positioned_after_and_never_missed(
        self, fresh_world: World
    ) -> None:
        world = fresh_world
        engine = world.state.engine
        early, late = marker(), marker()
        cursor = feed_end(world, "DEU")

        with engine.connect() as a:
            transaction = a.begin()
            # `early` takes the smaller id but stays uncommitted, invisible to everyone else.
            emit_for(a, "DEU", early)
            with engine.begin() as b:
                emit_for(b, "DEU", late)
            assert sequence_now(world) == 1
            # A reader now sees `late` only, and its cursor passes it.
            marks, cursor = feed(world, "DEU", cursor)
            assert marks == [late]
            transaction.commit()

        # Committed now: it comes after the position the reader passed, so the reader meets it.
        marks, cursor = feed(world, "DEU", cursor)
        assert marks == [early]
        assert feed(world, "DEU", cursor)[0] == []

        a_event, b_event = stored(world, early), stored(world, late)
        assert a_event.id < b_event.id
        assert b_event.position < a_event.position

    def test_the_sequencer_does_not_see_uncommitted_events(self, fresh_world: World) -> None:
        world = fresh_world
        mark = marker()

        with world.state.engine.connect() as conn:
            transaction = conn.begin()
            emit_for(conn, "NZL", mark)
            assert sequence_now(world) == 0
            transaction.commit()

        assert sequence_now(world) == 1
        assert stored(world, mark).position == 1

    def test_a_sequencer_returns_0_at_once_while_another_holds_the_lock(
        self, fresh_world: World
    ) -> None:
        world = fresh_world
        engine = world.state.engine
        mark = marker()

        with engine.connect() as other:
            holding = other.begin()
            hold_the_lock(other)
            with engine.begin() as conn:
                emit_for(conn, "NZL", mark)
            started = time.monotonic()
            assert sequence_now(world) == 0
            assert time.monotonic() - started < 2
            assert stored(world, mark).position is None
            holding.commit()

        assert sequence_now(world) == 1
        assert stored(world, mark).position == 1

    def test_a_waiting_sequencer_proceeds_once_the_lock_is_released(
        self, fresh_world: World
    ) -> None:
        world = fresh_world
        engine = world.state.engine
        mark = marker()
        done: list[int] = []

        with engine.connect() as other:
            holding = other.begin()
            hold_the_lock(other)
            with engine.begin() as conn:
                emit_for(conn, "NZL", mark)
            waiter = threading.Thread(target=lambda: done.append(sequence_now(world, wait=True)))
            waiter.start()
            waiter.join(timeout=0.5)
            assert waiter.is_alive()
            assert done == []
            holding.commit()
        waiter.join(timeout=10)

        assert done == [1]
        assert stored(world, mark).position == 1
