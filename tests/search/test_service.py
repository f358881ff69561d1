"""`POST /v1/search`: hits without disclosure, over the blind index and the stored decisions.

Every test in the shared world makes its own reports with entity values no other report holds
(random IBANs, phone numbers and name tokens), so results can be compared exactly. Searches are
spread over several members: the shared world keeps the default rate limit per client.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select, text

from app.audit.models import AuditEntry
from app.db import transaction
from app.search import service as search_service
from tests.conftest import World, drop_database, make_world, report_body

Entity = tuple[str, str]  # (type, value)
PURPOSE = "Tracing the settlement accounts of a hawala network"


# -- entity values that no other report holds ----------------------------------------------------


def _digits(count: int) -> str:
    return str(uuid.uuid4().int)[:count]


def _letters(count: int) -> str:
    number = uuid.uuid4().int
    return "".join(chr(ord("a") + (number >> (5 * i)) % 26) for i in range(count))


def valid_iban(country: str = "DE") -> str:
    """A random IBAN that passes ISO 13616 mod-97: compact, upper case (German: 18 digits)."""
    bban = _digits(18)
    rearranged = bban + country + "00"
    as_number = int("".join(str(int(char, 36)) for char in rearranged))
    return f"{country}{98 - as_number % 97:02d}{bban}"


def spaced(iban: str) -> str:
    """The same IBAN as people write it: lower case, groups of four."""
    return " ".join(iban[i : i + 4] for i in range(0, len(iban), 4)).lower()


def london_phone() -> tuple[str, str]:
    """A random London number as `+44 20 ...`, and the same number as `0044 (0)20-....-....`."""
    local = _digits(8)
    return f"+44 20 {local}", f"0044 (0)20-{local[:4]}-{local[4:]}"


def surname() -> str:
    return _letters(10).capitalize()


def entity(entity_type: str, value: str) -> dict[str, str]:
    return {"type": entity_type, "value": value}


# -- calls ---------------------------------------------------------------------------------------


def search(
    world: World, code: str, *entities: Entity, purpose: str = PURPOSE, scope: str | None = None
) -> httpx.Response:
    body = {"entities": [entity(t, v) for t, v in entities], "purpose": purpose}
    return world.http.post("/v1/search", json=body, headers=world.headers(code, scope))


def results(world: World, code: str, *entities: Entity) -> list[dict[str, Any]]:
    response = search(world, code, *entities)
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()["results"]
    return found


def found(world: World, code: str, *entities: Entity) -> set[tuple[str, str, str]]:
    """(report_id, entity_type, access) of every result."""
    return {
        (r["report_id"], r["entity_type"], r["access"]) for r in results(world, code, *entities)
    }


def submit(world: World, code: str, *entities: Entity, **fields: Any) -> str:
    created = world.submit(code, entities=[entity(t, v) for t, v in entities], **fields)
    report_id: str = created["id"]
    return report_id


def revoke(world: World, code: str, report_id: str) -> None:
    response = world.http.post(
        f"/v1/reports/{report_id}/revoke",
        json={"reason": "source withdrawn"},
        headers=world.headers(code),
    )
    assert response.status_code == 200, response.text


def purge(world: World, code: str, report_id: str) -> None:
    response = world.http.delete(f"/v1/reports/{report_id}", headers=world.headers(code))
    assert response.status_code == 204, response.text


def observable(response: httpx.Response) -> tuple[int, bytes, str | None, str | None]:
    """What a caller can tell two answers apart by (request ids and dates aside)."""
    return (
        response.status_code,
        response.content,
        response.headers.get("content-type"),
        response.headers.get("content-length"),
    )


def entries_of(world: World, response: httpx.Response) -> list[AuditEntry]:
    """The audit entries the request wrote, oldest first."""
    with transaction(world.state.sessionmaker) as session:
        rows = list(
            session.scalars(
                select(AuditEntry)
                .where(AuditEntry.request_id == response.headers["x-request-id"])
                .order_by(AuditEntry.id)
            )
        )
        session.expunge_all()
    return rows


def raw_entries_of(world: World, response: httpx.Response) -> list[str]:
    """Every column of every entry the request wrote, as the text the database holds."""
    with transaction(world.state.sessionmaker) as session:
        rows = session.execute(
            text("SELECT * FROM audit_entries WHERE request_id = :rid ORDER BY id"),
            {"rid": response.headers["x-request-id"]},
        ).all()
    return [" | ".join(str(value) for value in row) for row in rows]


def search_entries(world: World, response: httpx.Response) -> list[AuditEntry]:
    return [e for e in entries_of(world, response) if e.action == "search"]


# -- spelling ------------------------------------------------------------------------------------


class TestSpellingVariantsFindTheSameReport:
    def test_iban_with_spaces_and_lower_case_finds_the_compact_iban(self, world: World) -> None:
        iban = valid_iban()
        report_id = submit(world, "DEU", ("iban", iban))
        assert found(world, "FRA", ("iban", spaced(iban))) == {(report_id, "iban", "full")}

    def test_compact_iban_finds_the_one_written_with_spaces(self, world: World) -> None:
        iban = valid_iban()
        report_id = submit(world, "DEU", ("iban", spaced(iban)))
        assert found(world, "FRA", ("iban", iban)) == {(report_id, "iban", "full")}

    def test_phone_with_00_trunk_and_separators_finds_the_plus_form(self, world: World) -> None:
        plus, zeros = london_phone()
        report_id = submit(world, "DEU", ("phone", plus))
        assert found(world, "FRA", ("phone", zeros)) == {(report_id, "phone", "full")}
        assert found(world, "ESP", ("phone", plus.replace(" ", "."))) == {
            (report_id, "phone", "full")
        }

    @pytest.mark.parametrize(
        ("stored", "searched"),
        [
            ("Muhammad al-Zarqawi {s}", "Mohammed el Zarqawi {S}"),
            ("Abu Muhammad al-{s}", "Abou Mohamed El-{s}"),
            ("Khalid al-{s}", "Khaled Al {s}"),
            ("Mūḥammad al-Zárqāwī {s}", "muhammad zarqawi {s}"),
            ("Yusuf {s}", "YOUSSEF {S}"),
        ],
        ids=["mohammed-el", "abou-mohamed", "khaled-al", "diacritics", "youssef-case"],
    )
    def test_name_spellings_find_the_same_person(
        self, world: World, stored: str, searched: str
    ) -> None:
        name = surname()
        report_id = submit(world, "DEU", ("person", stored.format(s=name, S=name.upper())))
        query = ("person", searched.format(s=name, S=name.upper()))
        assert found(world, "GBR", query) == {(report_id, "person", "full")}

    def test_organization_name_folds_like_a_person_name(self, world: World) -> None:
        name = surname()
        report_id = submit(world, "DEU", ("organization", f"Al-Nūr {name} Foundation"))
        query = ("organization", f"AL NUR {name.upper()} FOUNDATION")
        assert found(world, "GBR", query) == {(report_id, "organization", "full")}

    def test_same_value_under_another_type_finds_nothing(self, world: World) -> None:
        name = f"Abu {surname()}"
        submit(world, "DEU", ("person", name))
        assert results(world, "GBR", ("organization", name)) == []

    def test_a_different_spelling_of_another_name_finds_nothing(self, world: World) -> None:
        name = surname()
        submit(world, "DEU", ("person", f"Muhammad {name}"))
        assert results(world, "GBR", ("person", f"Ahmad {name}")) == []


# -- levels --------------------------------------------------------------------------------------


class TestResultLevels:
    def test_each_member_sees_the_report_at_its_own_level(self, world: World) -> None:
        iban = valid_iban()
        # FRA is released the report, GBR only the tearline, ESP neither.
        report_id = submit(world, "DEU", ("iban", iban), releasable_to=["FRA"], tearline_to=["GBR"])
        want = {"DEU": "full", "FRA": "full", "GBR": "tearline", "ESP": "hit"}
        for code, level in want.items():
            assert results(world, code, ("iban", iban)) == [
                {
                    "report_id": report_id,
                    "originator": "DEU",
                    "entity_type": "iban",
                    "access": level,
                }
            ], code

    def test_member_without_summary_access_gets_only_a_hit(self, world: World) -> None:
        iban = valid_iban()
        report_id = submit(world, "DEU", ("iban", iban), releasable_to=["FRA"], summary=None)
        assert found(world, "ITA", ("iban", iban)) == {(report_id, "iban", "hit")}

    def test_country_rule_lowers_full_to_tearline(self, world: World) -> None:
        # SAU.donations-full-only-to-chairs-and-fatf: donations reports go in full only to
        # the chairs and FATF; other members released them read the tearline.
        iban = valid_iban()
        report_id = submit(
            world, "SAU", ("iban", iban), topics=["REV.DON"], classification="RESTRICTED"
        )
        assert found(world, "ITA", ("iban", iban)) == {(report_id, "iban", "full")}
        assert found(world, "FATF", ("iban", iban)) == {(report_id, "iban", "full")}
        assert found(world, "JOR", ("iban", iban)) == {(report_id, "iban", "tearline")}

    def test_country_rule_lowers_tearline_to_hit(self, world: World) -> None:
        # IRQ.no-tearline-of-secret-operations: no tearline of SECRET reports on operations.
        iban = valid_iban()
        report_id = submit(
            world,
            "IRQ",
            ("iban", iban),
            topics=["USE.OPS"],
            classification="SECRET",
            releasable_to=["JOR"],
        )
        assert found(world, "JOR", ("iban", iban)) == {(report_id, "iban", "full")}
        assert found(world, "KWT", ("iban", iban)) == {(report_id, "iban", "hit")}

    def test_a_hit_carries_only_id_originator_and_entity_type(self, world: World) -> None:
        iban = valid_iban()
        report_id = submit(world, "DEU", ("iban", iban), releasable_to=["FRA"], summary=None)
        response = search(world, "POL", ("iban", iban))
        assert response.json() == {
            "results": [
                {
                    "report_id": report_id,
                    "originator": "DEU",
                    "entity_type": "iban",
                    "access": "hit",
                }
            ]
        }

    def test_one_result_per_report_and_entity_type(self, world: World) -> None:
        first, second, name = valid_iban(), valid_iban(), f"Umar {surname()}"
        report_id = submit(world, "DEU", ("iban", first), ("iban", second), ("person", name))
        got = results(
            world,
            "NLD",
            ("iban", first),
            ("iban", spaced(second)),
            ("person", name),
            ("iban", first),
        )
        assert sorted((r["report_id"], r["entity_type"]) for r in got) == [
            (report_id, "iban"),
            (report_id, "person"),
        ]

    def test_every_report_holding_the_entity_is_found_newest_first(self, world: World) -> None:
        iban = valid_iban()
        oldest = submit(world, "DEU", ("iban", iban))
        middle = submit(world, "FRA", ("iban", spaced(iban)), releasable_to=["DEU"])
        newest = submit(world, "GBR", ("iban", iban), releasable_to=["GBR"], summary=None)
        got = results(world, "DEU", ("iban", iban))
        assert [(r["report_id"], r["originator"], r["access"]) for r in got] == [
            (newest, "GBR", "hit"),
            (middle, "FRA", "full"),
            (oldest, "DEU", "full"),
        ]

    def test_approved_access_request_lifts_a_hit_to_full_until_it_expires(
        self, world: World
    ) -> None:
        iban = valid_iban()
        report_id = submit(world, "DEU", ("iban", iban), releasable_to=["FRA"], summary=None)
        assert found(world, "QAT", ("iban", iban)) == {(report_id, "iban", "hit")}
        asked = world.http.post(
            f"/v1/reports/{report_id}/access-requests",
            json={"justification": "Same account in our case file"},
            headers=world.headers("QAT"),
        )
        assert asked.status_code == 201, asked.text
        expires_at = datetime.now(UTC) + timedelta(seconds=1.5)
        decided = world.http.post(
            f"/v1/access-requests/{asked.json()['id']}/decision",
            json={"approve": True, "expires_at": expires_at.isoformat()},
            headers=world.headers("DEU"),
        )
        assert decided.status_code == 200, decided.text
        assert found(world, "QAT", ("iban", iban)) == {(report_id, "iban", "full")}
        time.sleep(max(0.0, (expires_at - datetime.now(UTC)).total_seconds()) + 0.2)
        assert found(world, "QAT", ("iban", iban)) == {(report_id, "iban", "hit")}

    def test_amended_report_is_found_by_its_new_entities_only(self, world: World) -> None:
        before, after = valid_iban(), valid_iban()
        report_id = submit(world, "DEU", ("iban", before))
        amended = world.http.put(
            f"/v1/reports/{report_id}",
            json=report_body(entities=[entity("iban", after)]),
            headers={**world.headers("DEU"), "If-Match": '"1"'},
        )
        assert amended.status_code == 200, amended.text
        assert results(world, "FRA", ("iban", before)) == []
        assert found(world, "FRA", ("iban", after)) == {(report_id, "iban", "full")}


# -- hidden reports ------------------------------------------------------------------------------

HIDDEN_KINDS = ["revoked-by-originator", "country-forbids-hits"]


def hidden_report(world: World, kind: str) -> tuple[str, Entity, str]:
    """A report that `searcher` may see at no level: (searcher, its entity, report id).

    Before it is hidden, the entity is shown to be found, so that its absence afterwards
    comes from the access model and not from an entity that was never indexed.
    """
    iban = valid_iban()
    if kind == "revoked-by-originator":
        report_id = submit(world, "DEU", ("iban", iban))
        assert found(world, "FRA", ("iban", iban)) == {(report_id, "iban", "full")}
        revoke(world, "DEU", report_id)
        return "FRA", ("iban", iban), report_id
    # USA.law-enforcement-withheld-from-bodies: not even a hit for a body on CTR.LE reports.
    report_id = submit(world, "USA", ("iban", iban), topics=["CTR.LE"])
    assert found(world, "FRA", ("iban", iban)) == {(report_id, "iban", "full")}
    return "EU", ("iban", iban), report_id


class TestHiddenReportsLookLikeNoReport:
    @pytest.mark.parametrize("kind", HIDDEN_KINDS)
    def test_hidden_entity_answers_exactly_like_an_unknown_one(
        self, world: World, kind: str
    ) -> None:
        searcher, hidden, _ = hidden_report(world, kind)
        unknown = ("iban", valid_iban())
        hidden_answer = search(world, searcher, hidden)
        unknown_answer = search(world, searcher, unknown)
        assert hidden_answer.status_code == 200
        assert hidden_answer.json() == {"results": []}
        assert observable(hidden_answer) == observable(unknown_answer)

    @pytest.mark.parametrize("kind", HIDDEN_KINDS)
    def test_hidden_entity_beside_a_visible_one_adds_nothing(self, world: World, kind: str) -> None:
        searcher, hidden, _ = hidden_report(world, kind)
        visible = ("iban", valid_iban())
        visible_id = submit(world, "GBR", visible)
        alone = search(world, searcher, visible)
        assert [r["report_id"] for r in alone.json()["results"]] == [visible_id]
        with_hidden = search(world, searcher, visible, hidden)
        with_unknown = search(world, searcher, visible, ("iban", valid_iban()))
        assert observable(with_hidden) == observable(alone)
        assert observable(with_unknown) == observable(alone)

    @pytest.mark.parametrize("kind", HIDDEN_KINDS)
    def test_hidden_report_leaves_no_result_in_the_audit(self, world: World, kind: str) -> None:
        searcher, hidden, report_id = hidden_report(world, kind)
        response = search(world, searcher, hidden)
        entries = entries_of(world, response)
        assert [(e.action, e.decision) for e in entries] == [("search", "allow")]
        assert "results:0" in entries[0].reasons
        assert not any(report_id in line for line in raw_entries_of(world, response))

    def test_originator_still_finds_its_revoked_report_in_full(self, world: World) -> None:
        iban = valid_iban()
        report_id = submit(world, "DEU", ("iban", iban))
        revoke(world, "DEU", report_id)
        assert found(world, "DEU", ("iban", iban)) == {(report_id, "iban", "full")}

    def test_country_file_forbidding_hits_spares_other_members(self, world: World) -> None:
        iban = valid_iban()
        report_id = submit(world, "USA", ("iban", iban), topics=["CTR.LE"], summary=None)
        assert results(world, "EGMONT", ("iban", iban)) == []
        assert found(world, "TUR", ("iban", iban)) == {(report_id, "iban", "full")}


class TestPurgedReports:
    def test_purged_report_is_found_by_nobody_not_even_its_originator(self, world: World) -> None:
        iban = valid_iban()
        report_id = submit(world, "DEU", ("iban", iban))
        assert found(world, "DEU", ("iban", iban)) == {(report_id, "iban", "full")}
        purge(world, "DEU", report_id)
        for code in ("DEU", "FRA", "ITA"):
            answer = search(world, code, ("iban", iban))
            assert observable(answer) == observable(search(world, code, ("iban", valid_iban())))
            assert answer.json() == {"results": []}, code

    def test_purging_one_report_keeps_the_others_holding_the_entity(self, world: World) -> None:
        iban = valid_iban()
        purged = submit(world, "DEU", ("iban", iban))
        kept = submit(world, "FRA", ("iban", iban))
        purge(world, "DEU", purged)
        assert found(world, "DEU", ("iban", iban)) == {(kept, "iban", "full")}


# -- bad input -----------------------------------------------------------------------------------


def _search_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"entities": [entity("iban", valid_iban())], "purpose": PURPOSE}
    body.update(overrides)
    return {name: value for name, value in body.items() if value is not None}


BAD_BODIES = {
    "purpose-missing": lambda: {"entities": [entity("iban", valid_iban())]},
    "purpose-empty": lambda: _search_body(purpose=""),
    "purpose-too-long": lambda: _search_body(purpose="x" * 201),
    "no-entities": lambda: _search_body(entities=[]),
    "entities-missing": lambda: {"purpose": PURPOSE},
    "51-entities": lambda: _search_body(entities=[entity("iban", valid_iban())] * 51),
    "unknown-type": lambda: _search_body(entities=[entity("passport", "X1234567")]),
    "empty-value": lambda: _search_body(entities=[entity("person", "")]),
    "value-too-long": lambda: _search_body(entities=[entity("person", "a" * 501)]),
    "unknown-field": lambda: _search_body(originator="DEU"),
    "entity-unknown-field": lambda: _search_body(
        entities=[{**entity("iban", valid_iban()), "label": "x"}]
    ),
}


class TestInvalidSearches:
    @pytest.mark.parametrize("case", list(BAD_BODIES))
    def test_invalid_search_is_refused_and_not_recorded_as_a_search(
        self, world: World, case: str
    ) -> None:
        response = world.http.post(
            "/v1/search", json=BAD_BODIES[case](), headers=world.headers("LVA")
        )
        assert response.status_code == 422, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["status"] == 422
        assert not [e for e in entries_of(world, response) if e.action.startswith("search")]

    def test_invalid_iban_is_named_by_position_and_not_echoed(self, world: World) -> None:
        good = valid_iban()
        bad = good[:-1] + str((int(good[-1]) + 1) % 10)  # one digit off: mod-97 fails
        response = search(world, "LVA", ("iban", good), ("iban", bad), ("person", "Omar X"))
        assert response.status_code == 422
        assert response.headers["content-type"] == "application/problem+json"
        errors = response.json()["errors"]
        assert [e["loc"] for e in errors] == [["body", "entities", "1", "value"]]
        assert bad not in response.text
        assert bad[4:] not in response.text
        assert not [e for e in entries_of(world, response) if e.action.startswith("search")]

    def test_national_phone_number_is_refused(self, world: World) -> None:
        response = search(world, "LVA", ("phone", "020 7946 0958"))
        assert response.status_code == 422
        assert response.json()["errors"][0]["loc"] == ["body", "entities", "0", "value"]

    def test_fifty_entities_and_a_200_character_purpose_are_accepted(self, world: World) -> None:
        entities = [("iban", valid_iban()) for _ in range(50)]
        response = search(world, "LVA", *entities, purpose="p" * 200)
        assert response.status_code == 200, response.text
        assert response.json() == {"results": []}

    def test_client_without_search_scope_is_forbidden(self, world: World) -> None:
        response = search(world, "LVA", ("iban", valid_iban()), scope="reports:read")
        assert response.status_code == 403
        assert not [e for e in entries_of(world, response) if e.action.startswith("search")]


# -- audit ---------------------------------------------------------------------------------------


class TestSearchAudit:
    def test_search_entry_records_purpose_counts_and_types(self, world: World) -> None:
        iban, (phone, _), name = valid_iban(), london_phone(), f"Hasan {surname()}"
        report_id = submit(world, "DEU", ("iban", iban), ("person", name))
        purpose = "Case 2024/117: donor network, liaison request of 3 May"
        response = search(
            world, "BGR", ("iban", iban), ("phone", phone), ("person", name), purpose=purpose
        )
        assert response.status_code == 200
        (entry,) = search_entries(world, response)
        assert entry.decision == "allow"
        assert entry.target == "search"
        assert entry.actor == "BGR"
        assert entry.client == world.client_id("BGR")
        assert entry.purpose == purpose
        assert entry.policy_hash == world.state.policy.bundle.hash
        assert sorted(entry.reasons) == sorted(
            ["entities:3", "results:2", "type:iban", "type:person", "type:phone"]
        )
        per_result = [
            (e.target, sorted(e.reasons), e.purpose, e.decision)
            for e in entries_of(world, response)
            if e.action == "search.result"
        ]
        assert sorted(per_result) == [
            (f"report:{report_id}", ["entity_type:iban", "level:full"], purpose, "allow"),
            (f"report:{report_id}", ["entity_type:person", "level:full"], purpose, "allow"),
        ]

    def test_a_hit_is_recorded_at_level_hit(self, world: World) -> None:
        iban = valid_iban()
        report_id = submit(world, "DEU", ("iban", iban), releasable_to=["FRA"], summary=None)
        response = search(world, "BGR", ("iban", iban))
        (result,) = [e for e in entries_of(world, response) if e.action == "search.result"]
        assert result.target == f"report:{report_id}"
        assert sorted(result.reasons) == ["entity_type:iban", "level:hit"]

    def test_duplicate_entities_are_counted_as_sent_and_types_once(self, world: World) -> None:
        iban = valid_iban()
        response = search(world, "BGR", ("iban", iban), ("iban", spaced(iban)))
        (entry,) = search_entries(world, response)
        assert sorted(entry.reasons) == ["entities:2", "results:0", "type:iban"]

    def test_no_entity_value_appears_in_any_audit_column(self, world: World) -> None:
        iban = valid_iban()
        plus, zeros = london_phone()
        token = surname()
        name = f"Mohammed al-{token}"
        submit(world, "DEU", ("iban", iban), ("phone", plus), ("person", name))
        response = search(world, "BGR", ("iban", spaced(iban)), ("phone", zeros), ("person", name))
        assert len(response.json()["results"]) == 3
        lines = raw_entries_of(world, response)
        assert len(lines) == 4  # the search and its three results
        digits = plus.replace(" ", "")
        needles = [iban, spaced(iban), iban[4:], zeros, digits, digits[1:], plus, name, token]
        for line in lines:
            folded = line.lower()
            leaked = [n for n in needles if n.lower() in folded]
            assert not leaked, (leaked, line)


# -- rate limit ----------------------------------------------------------------------------------


@pytest.fixture
def slow_world(tmp_path: Path) -> Iterator[World]:
    """A world allowing each client three searches a minute."""
    w = make_world(tmp_path, search_rate_per_minute=3)
    yield w
    w.close()
    drop_database(w.settings.resolved_database_url)


class TestSearchRateLimit:
    def test_fourth_search_in_a_row_is_refused_with_retry_after(self, slow_world: World) -> None:
        query = ("iban", valid_iban())
        for _ in range(3):
            assert search(slow_world, "DEU", query).status_code == 200
        refused = search(slow_world, "DEU", query)
        assert refused.status_code == 429
        assert refused.headers["content-type"] == "application/problem+json"
        assert int(refused.headers["retry-after"]) >= 1
        entries = entries_of(slow_world, refused)
        assert [(e.action, e.decision, list(e.reasons)) for e in entries] == [
            ("search", "deny", ["rate_limited"])
        ]
        assert entries[0].actor == "DEU"

    def test_other_clients_keep_their_own_rate(self, slow_world: World) -> None:
        query = ("iban", valid_iban())
        for _ in range(3):
            assert search(slow_world, "DEU", query).status_code == 200
        assert search(slow_world, "DEU", query).status_code == 429
        for code in ("FRA", "ITA"):
            for _ in range(3):
                assert search(slow_world, code, query).status_code == 200, code

    def test_invalid_body_does_not_use_up_the_rate(self, slow_world: World) -> None:
        for _ in range(5):
            response = slow_world.http.post(
                "/v1/search", json={"entities": []}, headers=slow_world.headers("DEU")
            )
            assert response.status_code == 422
        assert search(slow_world, "DEU", ("iban", valid_iban())).status_code == 200


class TestManyResults:
    def test_results_span_statement_chunks_without_loss(
        self, world: World, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(search_service._LEVELS, "most", 2)
        iban = valid_iban()
        held = [
            world.submit(code, entities=[{"type": "iban", "value": iban}])
            for code in ("DEU", "ESP", "POL", "NLD", "BGR")
        ]
        response = search(world, "GBR", ("iban", iban))
        assert response.status_code == 200, response.text
        assert {r["report_id"] for r in response.json()["results"]} == {h["id"] for h in held}
