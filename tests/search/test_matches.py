"""Match alerts: a report sharing an entity with another member's report tells both originators."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from app.audit.models import AuditEntry
from app.db import transaction
from app.search import matches as search_matches
from app.webhooks.models import Event
from tests.conftest import World, report_body
from tests.search.test_index import valid_iban


def alerts(world: World, *report_ids: str) -> list[tuple[str | None, dict[str, Any]]]:
    """The match.found events about these reports, as (recipient, data)."""
    with transaction(world.state.sessionmaker) as session:
        found = session.execute(
            select(Event.recipient, Event.data)
            .where(Event.type == "match.found", Event.report_id.in_(report_ids))
            .order_by(Event.id)
        ).all()
    return [(r, d) for r, d in found]


def iban_entity(value: str) -> list[dict[str, str]]:
    return [{"type": "iban", "value": value}]


class TestMatchAlerts:
    def test_both_originators_learn_of_the_match_at_their_own_level(self, world: World) -> None:
        iban = valid_iban()
        # DEU's report: CHAIRS only, no summary, so FRA may only know it as a hit.
        first = world.submit(
            "DEU", releasable_to=["CHAIRS"], summary=None, entities=iban_entity(iban)
        )
        spaced = " ".join(iban[i : i + 4] for i in range(0, len(iban), 4)).lower()
        second = world.submit("FRA", releasable_to=["ALL"], entities=iban_entity(spaced))

        got = alerts(world, first["id"], second["id"])
        assert sorted(got, key=lambda a: str(a[0])) == [
            (
                "DEU",
                {
                    "report_id": first["id"],
                    "matched_report_id": second["id"],
                    "matched_originator": "FRA",
                    "entity_types": ["iban"],
                    "access": "full",
                },
            ),
            (
                "FRA",
                {
                    "report_id": second["id"],
                    "matched_report_id": first["id"],
                    "matched_originator": "DEU",
                    "entity_types": ["iban"],
                    "access": "hit",
                },
            ),
        ]

    def test_no_alert_between_reports_of_one_originator(self, world: World) -> None:
        iban = valid_iban()
        first = world.submit("DEU", entities=iban_entity(iban))
        second = world.submit("DEU", entities=iban_entity(iban))
        assert alerts(world, first["id"], second["id"]) == []

    def test_a_revoked_report_raises_no_alert(self, world: World) -> None:
        iban = valid_iban()
        first = world.submit("DEU", entities=iban_entity(iban))
        world.http.post(
            f"/v1/reports/{first['id']}/revoke", json={"reason": "x"}, headers=world.headers("DEU")
        )
        second = world.submit("FRA", entities=iban_entity(iban))
        assert alerts(world, first["id"], second["id"]) == []

    def test_an_amendment_alerts_only_on_entities_new_to_the_report(self, world: World) -> None:
        old, new = valid_iban(), valid_iban()
        world.submit("DEU", entities=iban_entity(old))
        other = world.submit("DEU", entities=iban_entity(new))
        mine = world.submit("FRA", entities=iban_entity(old))
        assert len(alerts(world, mine["id"])) == 1

        both = [*iban_entity(old), *iban_entity(new)]
        response = world.http.put(
            f"/v1/reports/{mine['id']}",
            json=report_body(entities=both),
            headers={**world.headers("FRA"), "If-Match": '"1"'},
        )
        assert response.status_code == 200, response.text
        mine_alerts = [d["matched_report_id"] for r, d in alerts(world, mine["id"]) if r == "FRA"]
        # The old match was told already; the amendment adds only the report holding `new`.
        assert mine_alerts.count(other["id"]) == 1
        assert len(mine_alerts) == 2

    def test_alerts_hold_no_entity_value_and_are_audited(self, world: World) -> None:
        iban = valid_iban()
        first = world.submit("DEU", entities=iban_entity(iban))
        second = world.submit("FRA", entities=iban_entity(iban))
        assert iban not in str(alerts(world, first["id"], second["id"]))
        with transaction(world.state.sessionmaker) as session:
            entries = session.execute(
                select(AuditEntry.actor, AuditEntry.target, AuditEntry.reasons).where(
                    AuditEntry.action == "match.alert",
                    AuditEntry.target.in_([f"report:{first['id']}", f"report:{second['id']}"]),
                )
            ).all()
        assert sorted((a, t) for a, t, _ in entries) == sorted(
            [("FRA", f"report:{first['id']}"), ("FRA", f"report:{second['id']}")]
        )
        assert all(iban not in str(r) for _, _, r in entries)


class TestManyMatches:
    def test_every_matching_report_is_alerted_across_statement_chunks(
        self, world: World, monkeypatch: Any
    ) -> None:
        monkeypatch.setattr(search_matches, "ID_CHUNK", 2)
        iban = valid_iban()
        held = [world.submit(code, entities=iban_entity(iban)) for code in ("DEU", "ESP", "POL")]
        mine = world.submit("FRA", entities=iban_entity(iban))
        told = {d["matched_report_id"] for r, d in alerts(world, mine["id"]) if r == "FRA"}
        assert told == {h["id"] for h in held}

    def test_the_lookup_finds_what_the_plain_statement_finds_for_any_number_of_digests(
        self, world: World, monkeypatch: Any
    ) -> None:
        # 3 digests pad to a statement for 4; with at most 2 per statement, 5 take 3 of them.
        ibans = [valid_iban() for _ in range(5)]
        for code, iban in zip(("DEU", "ESP", "POL", "ITA", "FRA"), ibans, strict=True):
            world.submit(code, entities=iban_entity(iban))
        index = world.state.blind_index
        digests = sorted({index.entry("iban", iban).digest for iban in ibans})
        table = search_matches._index
        lookup = search_matches._OTHERS_HOLDING
        values = {"key_id": index.key_id, "originator": "FRA"}
        with world.state.db.engine.connect() as conn:
            for count, most in ((3, 256), (5, 2), (1, 256)):
                monkeypatch.setattr(lookup, "most", most)
                wanted = digests[:count]
                ours = lookup.tuples(conn, values, wanted)
                theirs = conn.execute(
                    select(table.c.report_id, table.c.entity_type, table.c.digest).where(
                        table.c.digest.in_(wanted),
                        table.c.key_id == index.key_id,
                        table.c.originator != "FRA",
                    )
                ).all()
                assert sorted(ours) == sorted(tuple(r) for r in theirs)
                # Each IBAN is held by one report, at most one of them FRA's own.
                assert len(ours) >= count - 1
