"""Report events: each stored with the change it describes, ids and codes only, for the right
members (the readers before a change, or exactly those whose level changed)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db import utcnow
from app.reports import service
from app.reports.service import Redecision
from app.webhooks.models import Event
from tests.conftest import World, report_body
from tests.policy import test_reload as reloading
from tests.reports.test_lifecycle import purge, put, revoke
from tests.search.test_access_requests import (
    approved,
    asked,
    decide,
    hit_report,
    own_entities,
    sleep_past,
)
from tests.search.test_index import valid_iban

DATA_FIELDS = {"report_id", "originator", "version", "topics"}


@dataclass(frozen=True)
class Stored:
    type: str
    report_id: str | None
    recipient: str | None
    data: dict[str, Any]
    audience: list[str] | None


def events_on(world: World, *report_ids: str, kind: str = "report.") -> list[Stored]:
    """The events about these reports whose type starts with `kind`, in the order stored."""
    with world.state.engine.connect() as conn:
        rows = conn.execute(
            select(Event.type, Event.report_id, Event.recipient, Event.data, Event.audience)
            .where(Event.report_id.in_(report_ids), Event.type.startswith(kind))
            .order_by(Event.id)
        ).all()
    return [Stored(*row) for row in rows]


def data_of(report: dict[str, Any]) -> dict[str, Any]:
    """The data a report event carries for `report` (a response body)."""
    return {
        "report_id": report["id"],
        "originator": report["originator"],
        "version": report["version"],
        "topics": report["topics"],
    }


def event_count(world: World) -> int:
    with world.state.engine.connect() as conn:
        return len(conn.execute(select(Event.id)).all())


def readers(report: dict[str, Any]) -> list[str]:
    """Who reads the report at tearline or above, from its originator's view."""
    audience = report["audience"]
    return sorted({*audience["full"], *audience["tearline"]})


class TestCreate:
    def test_a_new_report_is_announced_once_with_ids_and_codes_only(self, world: World) -> None:
        created = world.submit("USA", topics=["MOV.HAW"], entities=own_entities())

        (event,) = events_on(world, created["id"])

        assert event == Stored(
            type="report.created",
            report_id=created["id"],
            recipient=None,
            data=data_of(created),
            audience=None,
        )
        assert set(event.data) == DATA_FIELDS

    def test_the_report_is_announced_before_the_matches_on_it(self, world: World) -> None:
        iban = [{"type": "iban", "value": valid_iban()}]
        first = world.submit("DEU", entities=iban)
        second = world.submit("FRA", entities=iban)

        stored = events_on(world, first["id"], second["id"], kind="")

        assert [(e.type, e.report_id) for e in stored[:2]] == [
            ("report.created", first["id"]),
            ("report.created", second["id"]),
        ]
        assert [e.type for e in stored[2:]] == ["match.found", "match.found"]


class TestUpdate:
    def test_an_update_is_announced_to_the_readers_before_it_too(self, world: World) -> None:
        created = world.submit("USA", releasable_to=["ALL"], entities=own_entities())
        assert world.get("DEU", created["id"]).json()["access"] == "full"

        # Released to USA alone and without a tearline: every other member drops to hit.
        response = put(world, "USA", created["id"], '"1"', releasable_to=["USA"], summary=None)

        assert response.status_code == 200, response.text
        updated = response.json()
        assert world.get("DEU", created["id"]).status_code == 404
        assert events_on(world, created["id"])[1:] == [
            Stored(
                type="report.updated",
                report_id=created["id"],
                recipient=None,
                data=data_of(updated),
                audience=readers(created),
            )
        ]
        assert "DEU" in readers(created)
        assert updated["version"] == 2

    def test_a_refused_update_leaves_no_event(self, world: World) -> None:
        created = world.submit("USA", entities=own_entities())

        assert put(world, "USA", created["id"], '"7"').status_code == 412

        assert [e.type for e in events_on(world, created["id"], kind="")] == ["report.created"]

    def test_an_update_that_fails_after_its_event_takes_the_event_with_it(
        self, fresh_world: World, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        world = fresh_world
        created = world.submit("USA", entities=own_entities())
        before = event_count(world)
        in_transaction: list[str] = []

        def broken(session: Session, *_args: Any, **_kwargs: Any) -> None:
            # Called after the event was stored, in the same transaction.
            about = select(Event.type).where(Event.report_id == created["id"])
            in_transaction.extend(session.connection().scalars(about))
            raise RuntimeError("index unavailable")

        monkeypatch.setattr(service, "index_version", broken)
        http = TestClient(world.app, base_url="http://tearline.test", raise_server_exceptions=False)
        headers = {**world.headers("USA"), "If-Match": '"1"'}
        response = http.put(f"/v1/reports/{created['id']}", json=report_body(), headers=headers)

        assert response.status_code == 500
        assert in_transaction == ["report.created", "report.updated"]
        assert event_count(world) == before
        assert world.get("USA", created["id"]).json()["version"] == 1


class TestRevoke:
    def test_a_revocation_is_announced_once_to_those_that_could_read_it(self, world: World) -> None:
        created = world.submit("USA", releasable_to=["ALL"], entities=own_entities())

        assert revoke(world, "USA", created["id"]).status_code == 200
        assert revoke(world, "USA", created["id"]).status_code == 200

        assert events_on(world, created["id"])[1:] == [
            Stored(
                type="report.revoked",
                report_id=created["id"],
                recipient=None,
                data=data_of(created),
                audience=readers(created),
            )
        ]
        assert len(readers(created)) > 1

    def test_a_member_whose_grant_ran_out_is_no_reader_before(self, world: World) -> None:
        report = hit_report(world, entities=own_entities())
        request = asked(world, "FRA", report["id"])
        expires = utcnow() + timedelta(seconds=1)
        approved(world, "DEU", request["id"], expires_at=expires.isoformat())
        sleep_past(expires)

        assert revoke(world, "DEU", report["id"]).status_code == 200

        stored = events_on(world, report["id"])
        assert [(e.type, e.audience) for e in stored] == [
            ("report.created", None),
            ("report.access_changed", ["FRA"]),
            ("report.revoked", ["DEU"]),
        ]


class TestPurge:
    def test_a_purge_is_announced_once_to_those_that_could_read_it(self, world: World) -> None:
        created = world.submit("USA", releasable_to=["ALL"], entities=own_entities())

        assert purge(world, "USA", created["id"]).status_code == 204
        assert purge(world, "USA", created["id"]).status_code == 204

        assert events_on(world, created["id"])[1:] == [
            Stored(
                type="report.purged",
                report_id=created["id"],
                recipient=None,
                data=data_of(created),
                audience=readers(created),
            )
        ]

    def test_a_purge_after_a_revocation_tells_the_originator_alone(self, world: World) -> None:
        created = world.submit("USA", releasable_to=["ALL"], entities=own_entities())
        assert revoke(world, "USA", created["id"]).status_code == 200

        assert purge(world, "USA", created["id"]).status_code == 204

        stored = events_on(world, created["id"])
        assert [e.type for e in stored] == ["report.created", "report.revoked", "report.purged"]
        assert stored[-1].audience == ["USA"]
        assert stored[-1].data == data_of(created)


class TestDecideRequest:
    def test_an_approval_that_raises_a_level_tells_exactly_that_member(self, world: World) -> None:
        report = hit_report(world, entities=own_entities())
        request = asked(world, "FRA", report["id"])

        approved(world, "DEU", request["id"])

        assert events_on(world, report["id"])[1:] == [
            Stored(
                type="report.access_changed",
                report_id=report["id"],
                recipient=None,
                data=data_of(report),
                audience=["FRA"],
            )
        ]

    def test_an_approval_that_changes_no_level_tells_no_one(self, world: World) -> None:
        # FATF is cleared to RESTRICTED: the grant leaves it at hit.
        report = hit_report(
            world, classification="SECRET", topics=["MOV.HAW"], entities=own_entities()
        )
        request = asked(world, "FATF", report["id"])

        approved(world, "DEU", request["id"])

        assert [e.type for e in events_on(world, report["id"])] == ["report.created"]

    def test_a_denial_tells_no_one(self, world: World) -> None:
        report = hit_report(world, entities=own_entities())
        request = asked(world, "FRA", report["id"])

        assert decide(world, "DEU", request["id"], approve=False).status_code == 200

        assert [e.type for e in events_on(world, report["id"])] == ["report.created"]


class TestRedecideBatch:
    def test_a_reload_tells_exactly_the_members_whose_level_changed(
        self, reloadable: World, policies: Path
    ) -> None:
        world = reloadable
        secret = world.submit("USA", classification="SECRET", releasable_to=["ALL"])
        restricted = world.submit("USA", classification="RESTRICTED", releasable_to=["ALL"])
        assert world.get("NLD", secret["id"]).json()["access"] == "full"
        assert world.get("MENAFATF", secret["id"]).json()["access"] == "tearline"
        # NLD drops below SECRET, MENAFATF (mandated for MOV) rises to it: one level down, one up.
        reloading.lower_clearance(policies, "NLD", "RESTRICTED")
        reloading.lower_clearance(policies, "MENAFATF", "SECRET")

        assert reloading.reload(world).status_code == 200
        reloading.settle(world)

        assert world.get("NLD", secret["id"]).json()["access"] == "tearline"
        assert world.get("MENAFATF", secret["id"]).json()["access"] == "full"
        assert events_on(world, secret["id"])[1:] == [
            Stored(
                type="report.access_changed",
                report_id=secret["id"],
                recipient=None,
                data=data_of(secret),
                audience=["MENAFATF", "NLD"],
            )
        ]
        assert [e.type for e in events_on(world, restricted["id"])] == ["report.created"]


class TestRedecision:
    def test_changed_names_every_member_whose_level_moved_either_way(self) -> None:
        decided = Redecision(
            decisions={},
            before={"USA": "full", "DEU": "full", "FRA": "hit", "NLD": "tearline"},
            after={"USA": "full", "DEU": "hit", "ITA": "hit", "NLD": "full"},
        )

        assert decided.changed() == {"DEU", "FRA", "ITA", "NLD"}

    def test_readers_before_are_those_at_tearline_or_above(self) -> None:
        decided = Redecision(
            decisions={},
            before={"USA": "full", "FRA": "hit", "NLD": "tearline"},
            after={},
        )

        assert decided.readable_before() == {"USA", "NLD"}
