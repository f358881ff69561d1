"""GET /v1/sync: every event a member may learn of, in commit order, resumable from a sealed
cursor without skips or repeats, and nothing about reports it cannot read."""

from __future__ import annotations

import base64
import random
import struct
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from app.db import utcnow
from app.kit import crypto, pagination
from app.webhooks import service
from app.webhooks import sync as sync_module
from app.webhooks.models import Event
from tests.conftest import World
from tests.policy import test_reload as reloading
from tests.search.test_access_requests import (
    approved,
    asked,
    hit_report,
    own_entities,
    revoke,
    tearline_report,
)

PAYLOAD_KEYS = {"id", "type", "timestamp", "data"}
REPORT_DATA_KEYS = {"report_id", "originator", "version", "topics", "access"}


def page(world: World, code: str, cursor: str | None = None, **params: Any) -> Any:
    if cursor is not None:
        params["cursor"] = cursor
    return world.http.get("/v1/sync", params=params, headers=world.headers(code))


def read_page(
    world: World, code: str, cursor: str | None = None, limit: int = 500
) -> tuple[list[dict[str, Any]], str]:
    response = page(world, code, cursor, limit=limit)
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"events", "next_cursor"}
    assert len(body["events"]) <= limit
    return body["events"], body["next_cursor"]


def read_to_end(
    world: World, code: str, cursor: str | None = None, limit: int = 500
) -> tuple[list[dict[str, Any]], str]:
    """Every event from `cursor` on, page after page until an empty one; the cursor there."""
    events: list[dict[str, Any]] = []
    while True:
        found, cursor = read_page(world, code, cursor, limit)
        if not found:
            return events, cursor
        events.extend(found)


def end_of(world: World, code: str) -> str:
    return read_to_end(world, code)[1]


def about(events: list[dict[str, Any]], report_id: str) -> list[dict[str, Any]]:
    """The events whose data names the report (as its subject or as the one matched)."""
    return [
        e
        for e in events
        if report_id in (e["data"].get("report_id"), e["data"].get("matched_report_id"))
    ]


def kinds(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


def report_data(report: dict[str, Any], access: str) -> dict[str, Any]:
    return {
        "report_id": report["id"],
        "originator": report["originator"],
        "version": report["version"],
        "topics": report["topics"],
        "access": access,
    }


class TestFeedContents:
    def test_a_member_learns_of_reports_it_reads_at_its_own_level(self, world: World) -> None:
        start = end_of(world, "DEU")
        full = world.submit("USA", releasable_to=["ALL"], entities=own_entities())
        tearline = tearline_report(world, "USA", entities=own_entities())
        hit = hit_report(world, "USA", entities=own_entities())

        events, _ = read_to_end(world, "DEU", start)

        assert world.get("DEU", tearline["id"]).json()["access"] == "tearline"
        assert [(e["type"], e["data"]) for e in events] == [
            ("report.created", report_data(full, "full")),
            ("report.created", report_data(tearline, "tearline")),
        ]
        assert about(events, hit["id"]) == []

    def test_nothing_is_told_of_a_report_the_member_cannot_read(self, world: World) -> None:
        starts = {code: end_of(world, code) for code in ("NZL", "ITA", "FATF")}
        chairs_only = world.submit(
            "USA", releasable_to=["CHAIRS"], summary=None, entities=own_entities()
        )
        # Withheld from bodies altogether by the USA's country policy (not even a hit).
        law_enforcement = world.submit("USA", topics=["CTR.LE"], entities=own_entities())
        assert world.get("NZL", chairs_only["id"]).status_code == 404

        nzl = page(world, "NZL", starts["NZL"], limit=500)
        fatf = page(world, "FATF", starts["FATF"], limit=500)
        ita, _ = read_to_end(world, "ITA", starts["ITA"])

        assert chairs_only["id"] not in nzl.text
        assert law_enforcement["id"] in nzl.text
        assert chairs_only["id"] not in fatf.text
        assert law_enforcement["id"] not in fatf.text
        assert [e["data"] for e in about(ita, chairs_only["id"])] == [
            report_data(chairs_only, "full")
        ]

    def test_a_match_is_told_to_the_two_originators_only(self, world: World) -> None:
        starts = {code: end_of(world, code) for code in ("DEU", "FRA", "NZL")}
        shared = own_entities()
        first = world.submit("DEU", entities=shared)
        second = world.submit("FRA", entities=shared)

        seen = {code: read_to_end(world, code, starts[code])[0] for code in starts}

        matches = {
            code: [e["data"] for e in seen[code] if e["type"] == "match.found"] for code in seen
        }
        assert [(m["report_id"], m["matched_report_id"]) for m in matches["DEU"]] == [
            (first["id"], second["id"])
        ]
        assert [(m["report_id"], m["matched_report_id"]) for m in matches["FRA"]] == [
            (second["id"], first["id"])
        ]
        assert matches["NZL"] == []
        # NZL reads both reports, and learns of each, but not that they match.
        assert kinds(about(seen["NZL"], first["id"])) == ["report.created"]
        assert kinds(about(seen["NZL"], second["id"])) == ["report.created"]

    def test_access_request_events_reach_their_recipient_only(self, world: World) -> None:
        starts = {code: end_of(world, code) for code in ("DEU", "FRA", "NZL")}
        report = hit_report(world, "DEU", entities=own_entities())
        request = asked(world, "FRA", report["id"])
        approved(world, "DEU", request["id"])

        seen = {code: read_to_end(world, code, starts[code])[0] for code in starts}

        asked_events = {
            code: [e["data"] for e in seen[code] if e["type"] == "access_request.created"]
            for code in seen
        }
        decided = {
            code: [e["data"] for e in seen[code] if e["type"] == "access_request.decided"]
            for code in seen
        }
        assert [d["access_request_id"] for d in asked_events["DEU"]] == [request["id"]]
        assert asked_events["FRA"] == asked_events["NZL"] == []
        assert [(d["access_request_id"], d["status"]) for d in decided["FRA"]] == [
            (request["id"], "approved")
        ]
        assert decided["DEU"] == decided["NZL"] == []
        (changed,) = [e for e in seen["FRA"] if e["type"] == "report.access_changed"]
        assert changed["data"] == report_data(report, "full")
        assert about(seen["NZL"], report["id"]) == []

    def test_a_revocation_reaches_those_that_could_read_before_without_its_topics(
        self, world: World
    ) -> None:
        starts = {code: end_of(world, code) for code in ("USA", "DEU", "NZL")}
        report = world.submit(
            "USA", releasable_to=["USA", "DEU"], summary=None, entities=own_entities()
        )
        assert world.get("DEU", report["id"]).json()["access"] == "full"
        assert world.get("NZL", report["id"]).status_code == 404

        assert revoke(world, "USA", report["id"]).status_code == 200

        seen = {code: read_to_end(world, code, starts[code])[0] for code in starts}
        (deu,) = [e for e in about(seen["DEU"], report["id"]) if e["type"] == "report.revoked"]
        assert "topics" not in deu["data"]
        assert deu["data"]["access"] not in ("full", "tearline")
        assert {k: deu["data"][k] for k in ("report_id", "originator", "version")} == {
            "report_id": report["id"],
            "originator": "USA",
            "version": report["version"],
        }
        (usa,) = [e for e in about(seen["USA"], report["id"]) if e["type"] == "report.revoked"]
        assert usa["data"] == report_data(report, "full")
        assert about(seen["NZL"], report["id"]) == []

    def test_each_event_has_the_shape_of_a_webhook_payload(self, world: World) -> None:
        start = end_of(world, "DEU")
        report = world.submit("DEU", entities=own_entities())

        events, _ = read_to_end(world, "DEU", start)

        (event,) = about(events, report["id"])
        assert set(event) == PAYLOAD_KEYS
        assert set(event["data"]) == REPORT_DATA_KEYS
        assert event["type"] == "report.created"
        assert uuid.UUID(event["id"]).version == 4
        stamp = datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00"))
        assert stamp.tzinfo is not None
        assert abs((utcnow() - stamp).total_seconds()) < 60


@pytest.fixture
def busy_world(fresh_world: World) -> World:
    """A world with a dozen events DEU may learn of, between others it may not."""
    world = fresh_world
    for n in range(12):
        originator = ("USA", "FRA", "DEU")[n % 3]
        world.submit(originator, entities=own_entities())
        if n % 4 == 0:
            hit_report(world, "FRA", entities=own_entities())
    return world


class TestPaging:
    @pytest.mark.parametrize("limit", [1, 2, 5, 7])
    def test_pages_joined_equal_one_big_page(self, busy_world: World, limit: int) -> None:
        world = busy_world
        everything, _ = read_page(world, "DEU", limit=500)

        paged, _ = read_to_end(world, "DEU", limit=limit)

        assert len(everything) == 12
        assert paged == everything

    def test_resuming_from_any_cursor_gives_exactly_the_rest(self, busy_world: World) -> None:
        world = busy_world
        everything, _ = read_page(world, "DEU", limit=500)
        cursor: str | None = None
        passed = 0

        while True:
            events, cursor = read_page(world, "DEU", cursor, limit=3)
            passed += len(events)
            rest, _ = read_to_end(world, "DEU", cursor)
            assert rest == everything[passed:]
            if not events:
                break

        assert passed == len(everything)

    def test_a_cursor_read_twice_gives_the_same_page(self, busy_world: World) -> None:
        world = busy_world
        _, cursor = read_page(world, "DEU", limit=4)

        first, _ = read_page(world, "DEU", cursor, limit=4)
        again, _ = read_page(world, "DEU", cursor, limit=4)

        assert first == again
        assert len(first) == 4

    def test_an_empty_page_gives_a_cursor_that_still_works(self, busy_world: World) -> None:
        world = busy_world
        _, end = read_to_end(world, "DEU")
        events, after_empty = read_page(world, "DEU", end)
        assert events == []

        report = world.submit("USA", entities=own_entities())

        for cursor in (end, after_empty):
            events, _ = read_page(world, "DEU", cursor)
            assert [e["data"]["report_id"] for e in events] == [report["id"]]

    def test_a_page_skips_what_the_member_may_not_see_but_moves_past_it(
        self, fresh_world: World
    ) -> None:
        world = fresh_world
        _, start = read_to_end(world, "NZL")
        hidden = [hit_report(world, "FRA", entities=own_entities()) for _ in range(3)]

        events, cursor = read_page(world, "NZL", start)
        assert events == []
        shown = world.submit("FRA", entities=own_entities())

        events, _ = read_page(world, "NZL", cursor)
        assert [e["data"]["report_id"] for e in events] == [shown["id"]]
        assert all(about(events, h["id"]) == [] for h in hidden)


def _sealed(world: World, plaintext: bytes, *, key: crypto.SecretBytes | None = None) -> str:
    keys = world.state.keys
    version = keys.current_master_version()
    key = key or sync_module._cursor_key(keys, version)
    blob = crypto.aead_encrypt(key, plaintext, b"tearline sync cursor")
    return f"{version}.{base64.urlsafe_b64encode(blob).decode().rstrip('=')}"


def _flip(text: str, at: int) -> str:
    swapped = "B" if text[at] != "B" else "C"
    return text[:at] + swapped + text[at + 1 :]


# Each takes a genuine cursor and the world, and gives a cursor the service never made.
FORGERIES: dict[str, Any] = {
    "plain integer": lambda c, w: "3",
    "zero": lambda c, w: "0",
    "negative": lambda c, w: "-1",
    "base64 of an integer": lambda c, w: base64.urlsafe_b64encode(b"3").decode(),
    "base64 of a packed position": lambda c, w: (
        "1." + base64.urlsafe_b64encode(struct.pack(">Q", 3)).decode().rstrip("=")
    ),
    "no separator": lambda c, w: c.replace(".", ""),
    "version only": lambda c, w: c.split(".")[0] + ".",
    "separator only": lambda c, w: ".",
    "truncated by one": lambda c, w: c[:-1],
    "truncated by half": lambda c, w: c[: len(c) // 2],
    "one character changed": lambda c, w: _flip(c, len(c) // 2),
    "last character changed": lambda c, w: _flip(c, len(c) - 1),
    "one character added": lambda c, w: c + "A",
    "unknown key version": lambda c, w: "9" + c[c.index(".") :],
    "version zero": lambda c, w: "0" + c[c.index(".") :],
    "version too long": lambda c, w: "1234567" + c[c.index(".") :],
    "not ascii": lambda c, w: c[:-1] + "é",
    "sealed under another key": lambda c, w: _sealed(w, struct.pack(">Q", 1), key=crypto.new_key()),
    "a sealed position of the wrong size": lambda c, w: _sealed(w, struct.pack(">I", 1)),
    "a cursor of another listing": lambda c, w: pagination.encode_position(
        utcnow(), str(uuid.uuid4())
    ),
    "far too long": lambda c, w: c + "A" * 600,
}


class TestCursorRefusals:
    @pytest.mark.parametrize("forgery", sorted(FORGERIES))
    def test_a_forged_altered_or_truncated_cursor_is_a_422_problem(
        self, world: World, forgery: str
    ) -> None:
        _, genuine = read_page(world, "NZL", limit=1)
        cursor = FORGERIES[forgery](genuine, world)
        assert cursor != genuine

        response = page(world, "NZL", cursor)

        assert response.status_code == 422, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        problem = response.json()
        assert problem["status"] == 422
        assert {"type", "title", "detail", "errors"} <= set(problem)
        assert "events" not in problem
        assert [e["loc"] for e in problem["errors"]] == [["query", "cursor"]]

    def test_every_forged_cursor_gets_the_same_answer(self, world: World) -> None:
        _, genuine = read_page(world, "NZL", limit=1)
        answers = {
            page(world, "NZL", FORGERIES[name](genuine, world)).text
            for name in FORGERIES
            if name != "far too long"  # refused by its length before it is opened
        }

        assert len(answers) == 1

    @pytest.mark.parametrize("limit", ["0", "501", "-1", "ten", "1e3", str(10**20)])
    def test_a_limit_out_of_bounds_is_a_422_problem(self, world: World, limit: str) -> None:
        response = page(world, "NZL", limit=limit)

        assert response.status_code == 422, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        assert [e["loc"] for e in response.json()["errors"]] == [["query", "limit"]]

    @pytest.mark.parametrize("limit", [1, 500])
    def test_the_limits_bounds_are_accepted(self, world: World, limit: int) -> None:
        assert page(world, "NZL", limit=limit).status_code == 200


class TestCursorSecrecy:
    def test_a_cursor_does_not_show_its_position(self, busy_world: World) -> None:
        world = busy_world
        _, cursor = read_to_end(world, "DEU")
        with world.state.engine.connect() as conn:
            position = conn.scalar(select(Event.position).order_by(Event.position.desc()))
        assert position is not None
        assert position > 1
        _, sealed = cursor.split(".", 1)

        assert not cursor.isdigit()
        assert not sealed.isdigit()
        raw = base64.urlsafe_b64decode(sealed + "=" * (-len(sealed) % 4))
        for packed in (struct.pack(">Q", position), struct.pack("<Q", position)):
            assert packed not in raw

    def test_cursors_for_one_position_differ_and_all_cursors_look_alike(
        self, busy_world: World
    ) -> None:
        world = busy_world
        cursors: list[str] = []
        cursor: str | None = None
        while True:
            events, cursor = read_page(world, "DEU", cursor, limit=1)
            cursors.append(cursor)
            if not events:
                break
        # The last two name the same position: the end.
        again = read_page(world, "DEU", cursors[-1])[1]

        assert len(set(cursors)) == len(cursors)
        assert again != cursors[-1]
        assert len({len(c) for c in [*cursors, again]}) == 1


def emit_for(world: World, member: str, mark: str, hold: float) -> None:
    """One event meant for `member`, in a transaction kept open `hold` seconds after it."""
    with world.state.engine.begin() as conn:
        service.emit(
            conn, "webhook.disabled", {"webhook_id": mark, "reason": "failing"}, recipient=member
        )
        time.sleep(hold)


class TestConcurrentWrites:
    WRITERS = 4
    EMITS = 15
    SUBMITTERS = 2
    SUBMITS = 5

    def test_a_reader_paging_during_writes_meets_each_event_once_in_order(
        self, fresh_world: World
    ) -> None:
        world = fresh_world
        for code in ("DEU", "FRA", "USA"):
            world.token(code)
        on_postgres = world.state.engine.dialect.name == "postgresql"
        seen: list[dict[str, Any]] = []
        reader_has_moved_on = threading.Event()

        def emitting(n: int) -> None:
            rng = random.Random(n)
            for i in range(self.EMITS):
                member = "DEU" if i % 2 == 0 else "FRA"
                # Held open a little: transactions then commit in another order than their ids.
                emit_for(world, member, f"w{n}-{i}", rng.uniform(0, 0.01))

        def submitting(n: int) -> None:
            for _ in range(self.SUBMITS):
                world.submit(("USA", "FRA")[n], entities=own_entities())

        def straggling() -> None:
            # Takes an id before the others and commits only after the reader has passed
            # later events (PostgreSQL only: SQLite has one writer at a time).
            with world.state.engine.begin() as conn:
                service.emit(
                    conn,
                    "webhook.disabled",
                    {"webhook_id": "straggler", "reason": "failing"},
                    recipient="DEU",
                )
                reader_has_moved_on.wait(timeout=20)

        with ThreadPoolExecutor(self.WRITERS + self.SUBMITTERS + 1) as pool:
            jobs: list[Future[None]] = []
            if on_postgres:
                jobs.append(pool.submit(straggling))
                time.sleep(0.2)
            jobs += [pool.submit(emitting, n) for n in range(self.WRITERS)]
            jobs += [pool.submit(submitting, n) for n in range(self.SUBMITTERS)]
            cursor: str | None = None
            pages = 0
            while not all(job.done() for job in jobs):
                events, cursor = read_page(world, "DEU", cursor, limit=7)
                seen.extend(events)
                pages += 1
                if len(seen) >= 5:
                    reader_has_moved_on.set()
            reader_has_moved_on.set()
            for job in jobs:
                job.result()
        rest, _ = read_to_end(world, "DEU", cursor, limit=7)
        seen.extend(rest)

        with world.state.engine.connect() as conn:
            stored = conn.execute(
                select(Event.uid, Event.id, Event.type, Event.recipient, Event.data).order_by(
                    Event.position
                )
            ).all()
        expected = [e.uid for e in stored if e.recipient == "DEU" or e.type == "report.created"]
        # Every even-numbered emit is for DEU, and DEU reads every submitted report.
        for_reader = self.WRITERS * len(range(0, self.EMITS, 2)) + self.SUBMITTERS * self.SUBMITS
        assert len(expected) == for_reader + int(on_postgres)
        assert pages > 1
        assert [e["id"] for e in seen] == expected
        assert not [e for e in seen if e["type"] == "webhook.disabled" and _for_fra(e)]
        if on_postgres:
            # The interesting case happened: an event with a smaller id came later in the feed.
            straggler = next(e for e in stored if e.data.get("webhook_id") == "straggler")
            seen_ids = [e["id"] for e in seen]
            before = seen_ids[: seen_ids.index(straggler.uid)]
            ids = {e.uid: e.id for e in stored}
            assert any(ids[uid] > straggler.id for uid in before)


def _for_fra(event: dict[str, Any]) -> bool:
    """Whether a writer's event was one meant for FRA (odd-numbered)."""
    mark = event["data"].get("webhook_id", "")
    return mark.startswith("w") and int(mark.rsplit("-", 1)[1]) % 2 == 1


class TestPolicyReload:
    def test_a_reader_during_re_decision_still_meets_every_event_it_is_entitled_to(
        self, reloadable: World, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        world = reloadable
        report = world.submit("USA", releasable_to=["ALL"], entities=own_entities())
        assert world.get("DEU", report["id"]).json()["access"] == "full"
        # A change that concerns another member: DEU reads the report in full under both bundles.
        reloading.lower_clearance(Path(world.settings.policy_dir), "NLD", "RESTRICTED")
        monkeypatch.setattr(world.state.redecider, "kick", lambda: None)
        assert reloading.reload(world).status_code == 200

        during, cursor = read_to_end(world, "DEU")
        monkeypatch.undo()

        async def redecide() -> None:
            world.state.redecider.kick()
            await world.state.redecider.wait()

        world.http.portal.call(redecide)  # type: ignore[union-attr]
        assert world.get("DEU", report["id"]).json()["access"] == "full"
        after, _ = read_to_end(world, "DEU", cursor)

        assert kinds(about(during + after, report["id"])) == ["report.created"]
