"""`tearline worker`: webhook dispatch in a process of its own, run in-process here on a world's
database and data directory, delivering to a real receiver on loopback."""

from __future__ import annotations

import re
from typing import Any

import pytest
from sqlalchemy import select
from standardwebhooks.webhooks import Webhook
from typer.testing import CliRunner

from app.audit import checkpoints, tree
from app.cli.main import app as cli
from app.db import utcnow
from app.webhooks.models import Delivery
from tests.cli import invoke
from tests.conftest import World
from tests.search.test_access_requests import own_entities
from tests.webhooks.conftest import Receiver, receiver, subscribe

__all__ = ["receiver"]  # the loopback receiver fixture, shared with tests/webhooks

TALLY = re.compile(r"events fanned out: (\d+); attempts: (\d+) \((\d+) succeeded, (\d+) failed\)")


def run(world: World, *args: str, **extra: str) -> tuple[int, str]:
    # The worker runs inside the test process here: it must not lower the tests' priority.
    result = invoke(world, *args, **{"TEARLINE_WEBHOOK_WORKER_NICE": "0", **extra})
    return result.exit_code, result.output


def tally(output: str) -> tuple[int, ...]:
    """(fanned out, attempts, succeeded, failed) from the worker's last line."""
    found = TALLY.search(output)
    assert found is not None, output
    return tuple(int(n) for n in found.groups())


def deliveries_of(world: World, subscription_id: str) -> list[Any]:
    with world.state.engine.connect() as conn:
        return list(
            conn.execute(
                select(Delivery.status, Delivery.attempts, Delivery.next_attempt_at).where(
                    Delivery.subscription_id == subscription_id
                )
            )
        )


class TestWorkerOnce:
    @pytest.fixture(autouse=True)
    def _checkpointed(self, fresh_world: World) -> None:
        # The log's first checkpoint and its event are out already, so the worker's runs have
        # none due and the tallies below count the webhook work alone (see TestWorkerAuditTree).
        assert run(fresh_world, "worker", "--once")[0] == 0

    def test_it_delivers_what_is_due_prints_the_tally_and_exits_0(
        self, fresh_world: World, receiver: Receiver
    ) -> None:
        world = fresh_world
        sub = subscribe(world, "DEU", receiver.url("/worker"))
        report = world.submit("FRA", entities=own_entities())

        code, output = run(world, "worker", "--once")

        assert code == 0, output
        assert tally(output) == (1, 1, 1, 0)
        (received,) = receiver.at("/worker")
        payload = Webhook(sub["secret"]).verify(received.body, received.headers)
        assert payload["type"] == "report.created"
        assert payload["data"]["report_id"] == report["id"]
        assert payload["data"]["access"] == "full"
        assert [(d.status, d.attempts) for d in deliveries_of(world, sub["id"])] == [
            ("succeeded", 1)
        ]

    def test_with_nothing_to_do_it_exits_0_with_an_empty_tally(self, fresh_world: World) -> None:
        code, output = run(fresh_world, "worker", "--once")

        assert code == 0, output
        assert tally(output) == (0, 0, 0, 0)

    def test_a_second_run_sends_nothing_again(self, fresh_world: World, receiver: Receiver) -> None:
        world = fresh_world
        subscribe(world, "DEU", receiver.url("/once"))
        world.submit("FRA", entities=own_entities())

        assert run(world, "worker", "--once")[0] == 0
        code, output = run(world, "worker", "--once")

        assert code == 0, output
        assert tally(output) == (0, 0, 0, 0)
        assert len(receiver.at("/once")) == 1

    def test_a_failed_attempt_is_counted_and_left_for_a_later_retry(
        self, fresh_world: World, receiver: Receiver
    ) -> None:
        world = fresh_world
        sub = subscribe(world, "DEU", receiver.url("/failing"))
        receiver.answer("/failing", (503, {}, b"busy"))
        world.submit("FRA", entities=own_entities())

        code, output = run(world, "worker", "--once")

        assert code == 0, output
        assert tally(output) == (1, 1, 0, 1)
        ((status, attempts, next_attempt_at),) = deliveries_of(world, sub["id"])
        assert (status, attempts) == ("pending", 1)
        assert next_attempt_at > utcnow()

    def test_with_a_concurrency_every_due_delivery_is_sent(
        self, fresh_world: World, receiver: Receiver
    ) -> None:
        world = fresh_world
        for n in range(3):
            subscribe(world, "DEU", receiver.url(f"/many/{n}"))
        world.submit("FRA", entities=own_entities())
        world.submit("USA", entities=own_entities())

        code, output = run(world, "worker", "--once", "--concurrency", "2")

        assert code == 0, output
        assert tally(output) == (2, 6, 6, 0)
        assert [len(receiver.at(f"/many/{n}")) for n in range(3)] == [2, 2, 2]

    def test_a_concurrency_out_of_bounds_is_a_usage_error(self) -> None:
        # Refused while reading the options, before any settings, database or keys are touched.
        for value in ("0", "513", "many"):
            result = CliRunner().invoke(cli, ["worker", "--once", "--concurrency", value])

            assert result.exit_code == 2, result.output


class TestWorkerPriority:
    def test_the_worker_lowers_its_priority_by_the_configured_niceness(
        self, fresh_world: World, monkeypatch: Any
    ) -> None:
        lowered: list[int] = []
        monkeypatch.setattr("app.cli.worker.os.nice", lowered.append)
        code, _ = run(fresh_world, "worker", "--once", TEARLINE_WEBHOOK_WORKER_NICE="7")
        assert code == 0
        assert lowered == [7]

    def test_a_niceness_of_zero_leaves_the_priority_alone(
        self, fresh_world: World, monkeypatch: Any
    ) -> None:
        lowered: list[int] = []
        monkeypatch.setattr("app.cli.worker.os.nice", lowered.append)
        code, _ = run(fresh_world, "worker", "--once")
        assert code == 0
        assert lowered == []


class TestWorkerAuditTree:
    def test_it_issues_a_due_audit_checkpoint_and_fans_its_event_out(
        self, fresh_world: World
    ) -> None:
        code, output = run(fresh_world, "worker", "--once")

        assert code == 0, output
        # The only event: the log's first checkpoint, for the chairs' subscriptions (none here).
        assert tally(output) == (1, 0, 0, 0)
        with fresh_world.state.engine.connect() as conn:
            latest = checkpoints.latest(conn)
            assert latest is not None
            assert latest.tree_size > 0
            assert tree.tree_size(conn) >= latest.tree_size
