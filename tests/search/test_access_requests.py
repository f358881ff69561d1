"""Access requests: a member at hit or tearline asks, the originator approves (maybe until a time)
or denies, and the grant is weighed by the policy like any other fact (clearance still applies)."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select

from app.audit.models import AuditEntry
from app.db import transaction, utcnow
from app.reports.models import ReportAccess, ReportGrant
from app.search.models import AccessRequest
from app.webhooks.models import Event
from tests.conftest import World, report_body

MISSING = "00000000-0000-4000-8000-000000000000"
# How long an expiring grant of these tests lasts: long enough to read at full before it ends.
SHORT = timedelta(seconds=1.5)


def hit_report(world: World, originator: str = "DEU", **fields: Any) -> dict[str, Any]:
    """A report only its originator reads: every other active member gets a hit."""
    fields.setdefault("releasable_to", [originator])
    return world.submit(originator, summary=None, **fields)


def tearline_report(world: World, originator: str = "DEU", **fields: Any) -> dict[str, Any]:
    """A report only its originator reads in full: every other member reads its tearline."""
    fields.setdefault("releasable_to", [originator])
    return world.submit(originator, **fields)


def ask(
    world: World, code: str, report_id: str, justification: str = "Same IBAN in case 42."
) -> Any:
    return world.http.post(
        f"/v1/reports/{report_id}/access-requests",
        json={"justification": justification},
        headers=world.headers(code),
    )


def asked(world: World, code: str, report_id: str) -> dict[str, Any]:
    response = ask(world, code, report_id)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def decide(
    world: World, code: str, request_id: str, scope: str | None = None, **payload: Any
) -> Any:
    return world.http.post(
        f"/v1/access-requests/{request_id}/decision",
        json=payload,
        headers=world.headers(code, scope),
    )


def approved(world: World, originator: str, request_id: str, **payload: Any) -> dict[str, Any]:
    response = decide(world, originator, request_id, approve=True, **payload)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def fetch(world: World, code: str, request_id: str) -> Any:
    return world.http.get(f"/v1/access-requests/{request_id}", headers=world.headers(code))


def page(world: World, code: str, **params: Any) -> Any:
    return world.http.get("/v1/access-requests", params=params, headers=world.headers(code))


def every_request(world: World, code: str, **params: Any) -> list[dict[str, Any]]:
    """Every item of a listing, following its cursors."""
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        extra = {"cursor": cursor} if cursor is not None else {}
        response = page(world, code, limit=100, **params, **extra)
        assert response.status_code == 200, response.text
        body = response.json()
        items.extend(body["items"])
        cursor = body.get("next_cursor")
        if cursor is None:
            return items


def listed(world: World, code: str, report: dict[str, Any]) -> set[str]:
    """The ids in the member's report listing, narrowed to the report's originator and time."""
    params = {
        "originator": report["originator"],
        "updated_since": report["updated_at"],
        "limit": 100,
    }
    response = world.http.get("/v1/reports", params=params, headers=world.headers(code))
    assert response.status_code == 200, response.text
    return {item["id"] for item in response.json()["items"]}


def put(world: World, code: str, report_id: str, if_match: str, **fields: Any) -> Any:
    headers = world.headers(code, **{"If-Match": if_match})
    return world.http.put(f"/v1/reports/{report_id}", json=report_body(**fields), headers=headers)


def revoke(world: World, code: str, report_id: str) -> Any:
    return world.http.post(
        f"/v1/reports/{report_id}/revoke", json={"reason": "withdrawn"}, headers=world.headers(code)
    )


def purge(world: World, code: str, report_id: str) -> Any:
    return world.http.delete(f"/v1/reports/{report_id}", headers=world.headers(code))


def events_on(world: World, report_id: str) -> list[tuple[str, str | None, dict[str, Any]]]:
    with transaction(world.state.sessionmaker) as session:
        rows = session.execute(
            select(Event.type, Event.recipient, Event.data)
            .where(Event.report_id == report_id, Event.type.startswith("access_request."))
            .order_by(Event.id)
        ).all()
    return [(t, r, d) for t, r, d in rows]


def entries_on(world: World, target: str) -> list[tuple[str, str, str | None, list[str]]]:
    """(action, decision, actor, reasons) of the audit entries about `target`, oldest first."""
    with transaction(world.state.sessionmaker) as session:
        rows = session.execute(
            select(AuditEntry.action, AuditEntry.decision, AuditEntry.actor, AuditEntry.reasons)
            .where(AuditEntry.target == target)
            .order_by(AuditEntry.id)
        ).all()
    return [(a, d, m, list(r)) for a, d, m, r in rows]


def decisions_on(world: World, request_id: str) -> list[tuple[str, str, str | None, list[str]]]:
    """The audit entries of decisions (and refusals to decide) on one request, oldest first."""
    return [
        e
        for e in entries_on(world, f"access_request:{request_id}")
        if e[0] == "access_request.decide"
    ]


def entries_of(world: World, response: Any) -> list[tuple[str, str, str | None, list[str]]]:
    """(action, decision, actor, reasons) of the audit entries one HTTP request left."""
    with transaction(world.state.sessionmaker) as session:
        rows = session.execute(
            select(AuditEntry.action, AuditEntry.decision, AuditEntry.actor, AuditEntry.reasons)
            .where(AuditEntry.request_id == response.headers["x-request-id"])
            .order_by(AuditEntry.id)
        ).all()
    return [(a, d, m, list(r)) for a, d, m, r in rows]


def grants_on(world: World, report_id: str) -> list[tuple[str, str, datetime | None]]:
    with transaction(world.state.sessionmaker) as session:
        rows = session.execute(
            select(ReportGrant.member_code, ReportGrant.access_request_id, ReportGrant.expires_at)
            .where(ReportGrant.report_id == report_id)
            .order_by(ReportGrant.member_code)
        ).all()
    return [(m, r, e) for m, r, e in rows]


def stored_decision(world: World, report_id: str, member: str) -> tuple[str, str | None] | None:
    """The (level, level_after) stored for the member, as written by the last decision."""
    with transaction(world.state.sessionmaker) as session:
        row = session.execute(
            select(ReportAccess.level, ReportAccess.level_after).where(
                ReportAccess.report_id == report_id, ReportAccess.member_code == member
            )
        ).first()
    return None if row is None else (row[0], row[1])


def requests_on(world: World, report_id: str) -> list[tuple[str, str]]:
    with transaction(world.state.sessionmaker) as session:
        rows = session.execute(
            select(AccessRequest.requester, AccessRequest.status)
            .where(AccessRequest.report_id == report_id)
            .order_by(AccessRequest.created_at)
        ).all()
    return [(r, s) for r, s in rows]


def searched_level(world: World, code: str, report: dict[str, Any]) -> str | None:
    """The level a search for the report's first entity shows the member, None if absent."""
    entity = report["entities"][0]
    response = world.http.post(
        "/v1/search",
        json={"entities": [{"type": entity["type"], "value": entity["value"]}], "purpose": "test"},
        headers=world.headers(code),
    )
    assert response.status_code == 200, response.text
    levels = {r["access"] for r in response.json()["results"] if r["report_id"] == report["id"]}
    assert len(levels) <= 1
    return levels.pop() if levels else None


def own_entities() -> list[dict[str, str]]:
    """An entity no other report of the shared world holds, so a search finds one report."""
    return [{"type": "person", "value": f"Courier {uuid.uuid4().hex}"}]


def sleep_past(moment: datetime) -> None:
    time.sleep(max(0.0, (moment - utcnow()).total_seconds()) + 0.1)


class TestCreateRequest:
    def test_a_member_at_hit_can_ask_and_the_request_is_pending(self, world: World) -> None:
        report = hit_report(world)
        assert world.get("FRA", report["id"]).status_code == 404

        response = ask(world, "FRA", report["id"], "Same IBAN in case 42.")

        assert response.status_code == 201, response.text
        body = response.json()
        assert set(body) == {
            "id",
            "report_id",
            "originator",
            "requester",
            "status",
            "justification",
            "created_at",
        }
        assert body["report_id"] == report["id"]
        assert body["originator"] == "DEU"
        assert body["requester"] == "FRA"
        assert body["status"] == "pending"
        assert body["justification"] == "Same IBAN in case 42."
        assert response.headers["location"] == f"/v1/access-requests/{body['id']}"
        assert requests_on(world, report["id"]) == [("FRA", "pending")]

    def test_a_member_at_tearline_can_ask(self, world: World) -> None:
        report = tearline_report(world)
        assert world.get("FRA", report["id"]).json()["access"] == "tearline"

        response = ask(world, "FRA", report["id"])

        assert response.status_code == 201, response.text
        assert response.json()["status"] == "pending"

    def test_asking_is_audited_and_tells_the_originator(self, world: World) -> None:
        report = hit_report(world)

        request = asked(world, "FRA", report["id"])

        assert (
            "access_request.create",
            "allow",
            "FRA",
            [f"request:{request['id']}", "level:hit"],
        ) in entries_on(world, f"report:{report['id']}")
        assert events_on(world, report["id"]) == [
            (
                "access_request.created",
                "DEU",
                {
                    "access_request_id": request["id"],
                    "report_id": report["id"],
                    "requester": "FRA",
                },
            )
        ]

    def test_a_member_without_any_level_gets_the_404_of_a_missing_report(
        self, world: World
    ) -> None:
        # The United States withholds law-enforcement reports from bodies, even as a hit.
        report = world.submit("USA", topics=["CTR.LE"], releasable_to=["USA"], summary=None)

        hidden = ask(world, "FATF", report["id"])
        missing = ask(world, "FATF", MISSING)

        assert hidden.status_code == missing.status_code == 404
        assert hidden.json() == missing.json()
        assert requests_on(world, report["id"]) == []
        assert events_on(world, report["id"]) == []
        assert ("access_request.create", "deny", "FATF", ["level:none"]) in entries_on(
            world, f"report:{report['id']}"
        )

    def test_an_id_that_is_no_report_id_gets_404(self, world: World) -> None:
        assert ask(world, "FRA", "not-a-report").status_code == 404

    def test_the_originator_gets_409(self, world: World) -> None:
        report = hit_report(world)

        response = ask(world, "DEU", report["id"])

        assert response.status_code == 409
        assert response.headers["content-type"].startswith("application/problem+json")
        assert requests_on(world, report["id"]) == []
        assert ("access_request.create", "deny", "DEU", ["level:full"]) in entries_on(
            world, f"report:{report['id']}"
        )

    def test_a_member_reading_in_full_already_gets_409(self, world: World) -> None:
        report = world.submit("DEU", releasable_to=["ALL"])
        assert world.get("FRA", report["id"]).json()["access"] == "full"

        assert ask(world, "FRA", report["id"]).status_code == 409
        assert requests_on(world, report["id"]) == []

    def test_a_second_request_while_one_is_pending_gets_409(self, world: World) -> None:
        report = hit_report(world)
        asked(world, "FRA", report["id"])

        again = ask(world, "FRA", report["id"])

        assert again.status_code == 409
        assert requests_on(world, report["id"]) == [("FRA", "pending")]
        assert len(events_on(world, report["id"])) == 1
        assert ("access_request.create", "deny", "FRA", ["already_pending"]) in entries_on(
            world, f"report:{report['id']}"
        )

    def test_of_concurrent_requests_of_one_member_exactly_one_is_created(
        self, world: World
    ) -> None:
        report = hit_report(world)
        world.token("FRA")

        with ThreadPoolExecutor(4) as pool:
            statuses = sorted(
                pool.map(lambda _: ask(world, "FRA", report["id"]).status_code, range(4))
            )

        assert statuses == [201, 409, 409, 409]
        assert requests_on(world, report["id"]) == [("FRA", "pending")]
        assert len(events_on(world, report["id"])) == 1

    def test_another_member_may_ask_while_one_request_is_pending(self, world: World) -> None:
        report = hit_report(world)
        asked(world, "FRA", report["id"])

        assert ask(world, "NLD", report["id"]).status_code == 201

    def test_a_new_request_is_allowed_once_the_earlier_one_was_decided(self, world: World) -> None:
        report = hit_report(world)
        first = asked(world, "FRA", report["id"])
        assert decide(world, "DEU", first["id"], approve=False).status_code == 200

        second = ask(world, "FRA", report["id"])

        assert second.status_code == 201, second.text
        assert second.json()["id"] != first["id"]
        assert requests_on(world, report["id"]) == [("FRA", "denied"), ("FRA", "pending")]

    def test_a_request_without_justification_is_refused_with_422(self, world: World) -> None:
        report = hit_report(world)

        response = ask(world, "FRA", report["id"], "")

        assert response.status_code == 422
        assert requests_on(world, report["id"]) == []

    def test_a_revoked_report_cannot_be_asked_for(self, world: World) -> None:
        report = hit_report(world)
        assert revoke(world, "DEU", report["id"]).status_code == 200

        hidden = ask(world, "FRA", report["id"])

        assert hidden.status_code == 404
        assert hidden.json() == ask(world, "FRA", MISSING).json()


class TestReadRequest:
    def test_the_requester_and_the_originator_read_the_request(self, world: World) -> None:
        report = hit_report(world)
        request = asked(world, "FRA", report["id"])

        by_requester = fetch(world, "FRA", request["id"])
        by_originator = fetch(world, "DEU", request["id"])

        assert by_requester.status_code == by_originator.status_code == 200
        assert by_requester.json() == by_originator.json() == request

    def test_anyone_else_gets_the_404_of_a_missing_request(self, world: World) -> None:
        report = hit_report(world)
        request = asked(world, "FRA", report["id"])

        other = fetch(world, "NLD", request["id"])
        missing = fetch(world, "NLD", MISSING)

        assert other.status_code == missing.status_code == 404
        assert other.json() == missing.json()
        assert fetch(world, "NLD", "not-an-id").status_code == 404
        assert entries_of(world, other) == [("access_request.read", "deny", "NLD", ["not_party"])]

    def test_reading_a_request_is_audited(self, world: World) -> None:
        report = hit_report(world)
        request = asked(world, "FRA", report["id"])

        response = fetch(world, "DEU", request["id"])

        assert entries_of(world, response) == [("access_request.read", "allow", "DEU", [])]
        assert entries_on(world, f"access_request:{request['id']}") == [
            ("access_request.read", "allow", "DEU", [])
        ]


class TestListRequests:
    def test_incoming_and_outgoing_list_each_side_newest_first(self, fresh_world: World) -> None:
        world = fresh_world
        deu_one, deu_two = hit_report(world, "DEU"), tearline_report(world, "DEU")
        fra_one = hit_report(world, "FRA")
        a = asked(world, "FRA", deu_one["id"])
        b = asked(world, "NLD", deu_one["id"])
        c = asked(world, "FRA", deu_two["id"])
        d = asked(world, "DEU", fra_one["id"])

        def ids(code: str, **params: Any) -> list[str]:
            return [item["id"] for item in every_request(world, code, **params)]

        assert ids("DEU", direction="incoming") == [c["id"], b["id"], a["id"]]
        assert ids("DEU") == [c["id"], b["id"], a["id"]]  # incoming by default
        assert ids("DEU", direction="outgoing") == [d["id"]]
        assert ids("FRA", direction="outgoing") == [c["id"], a["id"]]
        assert ids("FRA", direction="incoming") == [d["id"]]
        assert ids("NLD", direction="outgoing") == [b["id"]]
        assert ids("NLD", direction="incoming") == []
        assert every_request(world, "FRA", direction="outgoing")[0] == c

    def test_the_status_filter_keeps_only_requests_in_that_status(self, fresh_world: World) -> None:
        world = fresh_world
        reports = [hit_report(world, "DEU") for _ in range(3)]
        pending, to_approve, to_deny = (asked(world, "FRA", r["id"]) for r in reports)
        approved(world, "DEU", to_approve["id"])
        assert decide(world, "DEU", to_deny["id"], approve=False).status_code == 200

        def ids(status: str) -> dict[str, list[str]]:
            return {
                direction: [
                    item["id"]
                    for item in every_request(world, code, direction=direction, status=status)
                ]
                for direction, code in (("incoming", "DEU"), ("outgoing", "FRA"))
            }

        assert ids("pending") == {"incoming": [pending["id"]], "outgoing": [pending["id"]]}
        assert ids("approved") == {"incoming": [to_approve["id"]], "outgoing": [to_approve["id"]]}
        assert ids("denied") == {"incoming": [to_deny["id"]], "outgoing": [to_deny["id"]]}
        assert ids("expired") == {"incoming": [], "outgoing": []}
        assert page(world, "DEU", status="lost").status_code == 422
        assert page(world, "DEU", direction="sideways").status_code == 422

    def test_a_cursor_pages_through_every_request_once_in_order(self, fresh_world: World) -> None:
        world = fresh_world
        askers = ["FRA", "NLD", "ESP", "POL", "JPN"]
        report = hit_report(world, "DEU")
        made = [asked(world, code, report["id"])["id"] for code in askers]

        seen: list[str] = []
        sizes: list[int] = []
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"limit": 2}
            if cursor is not None:
                params["cursor"] = cursor
            response = page(world, "DEU", **params)
            assert response.status_code == 200, response.text
            body = response.json()
            seen.extend(item["id"] for item in body["items"])
            sizes.append(len(body["items"]))
            cursor = body.get("next_cursor")
            if cursor is None:
                break

        assert sizes == [2, 2, 1]
        assert seen == list(reversed(made))

    def test_a_full_last_page_has_no_cursor(self, fresh_world: World) -> None:
        world = fresh_world
        report = hit_report(world, "DEU")
        for code in ("FRA", "NLD"):
            asked(world, code, report["id"])

        body = page(world, "DEU", limit=2).json()

        assert len(body["items"]) == 2
        assert body.get("next_cursor") is None

    def test_listing_is_audited_with_its_direction_and_size(self, fresh_world: World) -> None:
        world = fresh_world
        report = hit_report(world, "DEU")
        asked(world, "FRA", report["id"])

        response = page(world, "FRA", direction="outgoing")

        assert entries_of(world, response) == [
            ("access_request.list", "allow", "FRA", ["direction:outgoing", "items:1"])
        ]

    def test_an_invalid_cursor_is_refused_with_422(self, world: World) -> None:
        for cursor in ("not a cursor", "WyJ4Il0", "WyIyMDI2LTAxLTAxVDAwOjAwOjAwIiwgIngiXQ"):
            assert page(world, "DEU", cursor=cursor).status_code == 422, cursor


class TestApprove:
    def test_approved_request_gives_the_requester_full_access(self, world: World) -> None:
        report = hit_report(world, title="Gold couriers via Gaziantep", entities=own_entities())
        request = asked(world, "FRA", report["id"])
        assert report["id"] not in listed(world, "FRA", report)

        decided = approved(world, "DEU", request["id"], note="For case 42 only.")

        assert decided["status"] == "approved"
        assert decided["note"] == "For case 42 only."
        assert "decided_at" in decided
        assert "expires_at" not in decided
        view = world.get("FRA", report["id"])
        assert view.status_code == 200, view.text
        assert view.json()["access"] == "full"
        assert view.json()["title"] == "Gold couriers via Gaziantep"
        assert view.json()["body"] == report["body"]
        assert report["id"] in listed(world, "FRA", report)
        assert fetch(world, "FRA", request["id"]).json()["status"] == "approved"
        assert grants_on(world, report["id"]) == [("FRA", request["id"], None)]
        assert searched_level(world, "FRA", report) == "full"
        # Reading in full now, the requester has nothing left to ask for.
        assert ask(world, "FRA", report["id"]).status_code == 409
        # Only the requester gains: everyone else keeps its hit.
        assert world.get("NLD", report["id"]).status_code == 404
        assert searched_level(world, "NLD", report) == "hit"

    def test_approval_lifts_a_tearline_reader_to_full(self, world: World) -> None:
        report = tearline_report(world)
        request = asked(world, "FRA", report["id"])

        approved(world, "DEU", request["id"])

        view = world.get("FRA", report["id"]).json()
        assert view["access"] == "full"
        assert view["title"] == report["title"]
        assert world.get("NLD", report["id"]).json()["access"] == "tearline"

    def test_an_expiry_with_another_offset_names_the_same_instant(self, world: World) -> None:
        report = hit_report(world)
        request = asked(world, "FRA", report["id"])

        decided = approved(world, "DEU", request["id"], expires_at="2099-06-01T14:00:00+02:00")

        assert datetime.fromisoformat(decided["expires_at"]) == datetime.fromisoformat(
            "2099-06-01T12:00:00+00:00"
        )
        assert world.get("FRA", report["id"]).json()["access"] == "full"

    def test_approval_shows_the_requester_in_the_originators_audience(self, world: World) -> None:
        report = hit_report(world)
        request = asked(world, "FRA", report["id"])

        approved(world, "DEU", request["id"])

        assert "FRA" in world.get("DEU", report["id"]).json()["audience"]["full"]

    def test_approval_is_audited_and_tells_the_requester(self, world: World) -> None:
        report = hit_report(world)
        request = asked(world, "FRA", report["id"])

        approved(world, "DEU", request["id"])

        assert decisions_on(world, request["id"]) == [
            (
                "access_request.decide",
                "allow",
                "DEU",
                ["approve", f"report:{report['id']}", "level:full"],
            )
        ]
        assert events_on(world, report["id"])[-1] == (
            "access_request.decided",
            "FRA",
            {
                "access_request_id": request["id"],
                "report_id": report["id"],
                "status": "approved",
            },
        )

    def test_clearance_caps_a_grant(self, world: World) -> None:
        # FATF is cleared to RESTRICTED: an approval cannot give it a SECRET report.
        report = hit_report(world, classification="SECRET", topics=["MOV.HAW"])
        request = asked(world, "FATF", report["id"])

        decided = approved(world, "DEU", request["id"])

        assert decided["status"] == "approved"
        assert world.get("FATF", report["id"]).status_code == 404
        assert stored_decision(world, report["id"], "FATF") == ("hit", None)
        assert decisions_on(world, request["id"])[-1][3] == [
            "approve",
            f"report:{report['id']}",
            "level:hit",
        ]

    def test_a_grant_needs_clearance_but_no_mandate(self, world: World) -> None:
        # INTERPOL's mandate holds no MOV topic; rule 4 asks only for clearance (RESTRICTED).
        report = hit_report(world, classification="RESTRICTED", topics=["MOV.HAW"])
        request = asked(world, "INTERPOL", report["id"])

        approved(world, "DEU", request["id"])

        assert world.get("INTERPOL", report["id"]).json()["access"] == "full"

    def test_a_country_rule_still_caps_a_grant(self, world: World) -> None:
        # Saudi Arabia releases donation reports in full only to the chairs and FATF.
        report = tearline_report(
            world, "SAU", topics=["REV.DON"], classification="RESTRICTED", releasable_to=["SAU"]
        )
        to_france = asked(world, "FRA", report["id"])
        to_fatf = asked(world, "FATF", report["id"])

        approved(world, "SAU", to_france["id"])
        approved(world, "SAU", to_fatf["id"])

        assert world.get("FRA", report["id"]).json()["access"] == "tearline"
        assert world.get("FATF", report["id"]).json()["access"] == "full"

    def test_a_grant_survives_a_new_version_of_the_report(self, world: World) -> None:
        report = hit_report(world)
        request = asked(world, "FRA", report["id"])
        approved(world, "DEU", request["id"])

        updated = put(
            world, "DEU", report["id"], '"1"', releasable_to=["DEU"], summary=None, title="Take 2"
        )

        assert updated.status_code == 200, updated.text
        view = world.get("FRA", report["id"]).json()
        assert view["access"] == "full"
        assert view["version"] == 2
        assert view["title"] == "Take 2"

    def test_a_new_version_above_the_requesters_clearance_ends_its_full_access(
        self, world: World
    ) -> None:
        # EU is cleared to CONFIDENTIAL: its grant holds while the report is CONFIDENTIAL.
        report = hit_report(world, classification="CONFIDENTIAL")
        request = asked(world, "EU", report["id"])
        approved(world, "DEU", request["id"])
        assert world.get("EU", report["id"]).json()["access"] == "full"

        updated = put(
            world,
            "DEU",
            report["id"],
            '"1"',
            releasable_to=["DEU"],
            summary=None,
            classification="SECRET",
        )

        assert updated.status_code == 200, updated.text
        assert world.get("EU", report["id"]).status_code == 404


class TestExpiry:
    def test_a_former_hit_falls_back_to_404_when_the_grant_expires(self, world: World) -> None:
        report = hit_report(world, entities=own_entities())
        request = asked(world, "FRA", report["id"])
        expires = utcnow() + SHORT

        decided = approved(world, "DEU", request["id"], expires_at=expires.isoformat())

        assert datetime.fromisoformat(decided["expires_at"]) == expires
        assert world.get("FRA", report["id"]).json()["access"] == "full"
        assert report["id"] in listed(world, "FRA", report)
        assert searched_level(world, "FRA", report) == "full"
        assert utcnow() < expires, "too slow: the grant expired before it could be read"

        sleep_past(expires)  # and nothing else: no job, no decision made again

        assert world.get("FRA", report["id"]).status_code == 404
        assert report["id"] not in listed(world, "FRA", report)
        # Every other "is it there for you" answer agrees: the 404 of a missing report.
        assert (
            put(world, "FRA", report["id"], '"1"').json()
            == put(world, "FRA", MISSING, '"1"').json()
        )
        assert put(world, "FRA", report["id"], '"1"').status_code == 404
        assert fetch(world, "FRA", request["id"]).json()["status"] == "expired"
        assert fetch(world, "DEU", request["id"]).json()["status"] == "expired"
        expired = every_request(world, "FRA", direction="outgoing", status="expired")
        assert request["id"] in {item["id"] for item in expired}
        still_approved = every_request(world, "FRA", direction="outgoing", status="approved")
        assert request["id"] not in {item["id"] for item in still_approved}
        # The stored decision was not rewritten: the clock alone made the difference.
        assert stored_decision(world, report["id"], "FRA") == ("full", "hit")
        assert "FRA" not in world.get("DEU", report["id"]).json()["audience"]["full"]
        assert searched_level(world, "FRA", report) == "hit"
        assert decisions_on(world, request["id"])[-1][3] == [
            "approve",
            f"report:{report['id']}",
            "level:full",
            f"expires:{expires.isoformat()}",
        ]
        # Back at hit, the member may ask again.
        assert ask(world, "FRA", report["id"]).status_code == 201

    def test_a_former_tearline_reader_falls_back_to_the_tearline_when_the_grant_expires(
        self, world: World
    ) -> None:
        report = tearline_report(world)
        request = asked(world, "FRA", report["id"])
        expires = utcnow() + SHORT

        approved(world, "DEU", request["id"], expires_at=expires.isoformat())

        assert world.get("FRA", report["id"]).json()["access"] == "full"
        assert utcnow() < expires, "too slow: the grant expired before it could be read"

        sleep_past(expires)

        view = world.get("FRA", report["id"])
        assert view.status_code == 200
        assert view.json()["access"] == "tearline"
        assert view.json()["summary"] == report["summary"]
        assert "title" not in view.json()
        assert "body" not in view.json()
        listing = world.http.get(
            "/v1/reports",
            params={"originator": "DEU", "updated_since": report["updated_at"], "limit": 100},
            headers=world.headers("FRA"),
        ).json()["items"]
        item = next(i for i in listing if i["id"] == report["id"])
        assert item["access"] == "tearline"
        assert "title" not in item
        assert fetch(world, "FRA", request["id"]).json()["status"] == "expired"
        expired = every_request(world, "DEU", direction="incoming", status="expired")
        assert request["id"] in {item["id"] for item in expired}

    def test_an_expiring_grant_still_expires_after_a_new_version(self, world: World) -> None:
        report = hit_report(world)
        request = asked(world, "FRA", report["id"])
        expires = utcnow() + SHORT
        approved(world, "DEU", request["id"], expires_at=expires.isoformat())

        updated = put(world, "DEU", report["id"], '"1"', releasable_to=["DEU"], summary=None)

        assert updated.status_code == 200, updated.text
        assert world.get("FRA", report["id"]).json()["version"] == 2
        assert utcnow() < expires, "too slow: the grant expired before it could be read"
        sleep_past(expires)
        assert world.get("FRA", report["id"]).status_code == 404


class TestDeny:
    def test_denied_request_gives_no_access_and_keeps_the_note(self, world: World) -> None:
        report = hit_report(world)
        request = asked(world, "FRA", report["id"])

        response = decide(world, "DEU", request["id"], approve=False, note="Source protection.")

        assert response.status_code == 200, response.text
        body = response.json()
        assert body["status"] == "denied"
        assert body["note"] == "Source protection."
        assert "expires_at" not in body
        assert world.get("FRA", report["id"]).status_code == 404
        assert grants_on(world, report["id"]) == []
        stored = fetch(world, "FRA", request["id"]).json()
        assert stored["status"] == "denied"
        assert stored["note"] == "Source protection."

    def test_denial_is_audited_and_tells_the_requester(self, world: World) -> None:
        report = hit_report(world)
        request = asked(world, "FRA", report["id"])

        assert decide(world, "DEU", request["id"], approve=False).status_code == 200

        assert decisions_on(world, request["id"]) == [
            ("access_request.decide", "allow", "DEU", ["deny", f"report:{report['id']}"])
        ]
        assert [e[:2] for e in events_on(world, report["id"])] == [
            ("access_request.created", "DEU"),
            ("access_request.decided", "FRA"),
        ]
        assert events_on(world, report["id"])[-1][2]["status"] == "denied"


class TestDecisionRefusals:
    def test_the_requester_deciding_gets_403(self, world: World) -> None:
        report = hit_report(world)
        request = asked(world, "FRA", report["id"])

        response = decide(world, "FRA", request["id"], approve=True)

        assert response.status_code == 403
        assert fetch(world, "FRA", request["id"]).json()["status"] == "pending"
        assert world.get("FRA", report["id"]).status_code == 404
        assert decisions_on(world, request["id"]) == [
            ("access_request.decide", "deny", "FRA", ["not_originator"])
        ]

    def test_a_third_member_gets_the_404_of_a_missing_request(self, world: World) -> None:
        report = hit_report(world)
        request = asked(world, "FRA", report["id"])

        other = decide(world, "NLD", request["id"], approve=True)
        missing = decide(world, "NLD", MISSING, approve=True)

        assert other.status_code == missing.status_code == 404
        assert other.json() == missing.json()
        assert decide(world, "NLD", "not-an-id", approve=True).status_code == 404
        assert fetch(world, "DEU", request["id"]).json()["status"] == "pending"
        assert decisions_on(world, request["id"]) == [
            ("access_request.decide", "deny", "NLD", ["not_party"])
        ]

    def test_of_an_approval_and_a_denial_racing_exactly_one_wins(self, world: World) -> None:
        report = hit_report(world)
        request = asked(world, "FRA", report["id"])
        world.token("DEU")

        with ThreadPoolExecutor(2) as pool:
            approving = pool.submit(decide, world, "DEU", request["id"], approve=True)
            denying = pool.submit(decide, world, "DEU", request["id"], approve=False)
            outcome = {
                "approved": approving.result().status_code,
                "denied": denying.result().status_code,
            }

        assert sorted(outcome.values()) == [200, 409]
        winner = next(status for status, code in outcome.items() if code == 200)
        assert fetch(world, "FRA", request["id"]).json()["status"] == winner
        assert [e[2]["status"] for e in events_on(world, report["id"])[1:]] == [winner]
        if winner == "approved":
            assert grants_on(world, report["id"]) == [("FRA", request["id"], None)]
            assert world.get("FRA", report["id"]).json()["access"] == "full"
        else:
            assert grants_on(world, report["id"]) == []
            assert world.get("FRA", report["id"]).status_code == 404

    def test_deciding_without_the_write_scope_gets_403(self, world: World) -> None:
        report = hit_report(world)
        request = asked(world, "FRA", report["id"])

        response = decide(world, "DEU", request["id"], scope="reports:read", approve=True)

        assert response.status_code == 403
        assert fetch(world, "DEU", request["id"]).json()["status"] == "pending"

    def test_a_decided_request_cannot_be_decided_again(self, world: World) -> None:
        report = hit_report(world)
        request = asked(world, "FRA", report["id"])
        approved(world, "DEU", request["id"])

        again = decide(world, "DEU", request["id"], approve=False, note="Changed my mind.")

        assert again.status_code == 409
        assert fetch(world, "DEU", request["id"]).json()["status"] == "approved"
        assert world.get("FRA", report["id"]).json()["access"] == "full"
        assert ("access_request.decide", "deny", "DEU", ["status:approved"]) in entries_on(
            world, f"access_request:{request['id']}"
        )

    def test_an_expiry_in_the_past_is_refused_with_422_and_changes_nothing(
        self, world: World
    ) -> None:
        report = hit_report(world)
        request = asked(world, "FRA", report["id"])
        past = utcnow() - timedelta(minutes=1)

        response = decide(world, "DEU", request["id"], approve=True, expires_at=past.isoformat())

        assert response.status_code == 422
        assert response.json()["errors"][0]["loc"] == ["body", "expires_at"]
        self._assert_unchanged(world, report, request)
        assert decisions_on(world, request["id"]) == [
            ("access_request.decide", "deny", "DEU", ["bad_expiry"])
        ]

    def test_an_expiry_on_a_denial_is_refused_with_422_and_changes_nothing(
        self, world: World
    ) -> None:
        report = hit_report(world)
        request = asked(world, "FRA", report["id"])
        future = utcnow() + timedelta(days=1)

        response = decide(world, "DEU", request["id"], approve=False, expires_at=future.isoformat())

        assert response.status_code == 422
        self._assert_unchanged(world, report, request)

    def test_an_expiry_without_a_time_zone_is_refused_with_422(self, world: World) -> None:
        report = hit_report(world)
        request = asked(world, "FRA", report["id"])

        response = decide(
            world, "DEU", request["id"], approve=True, expires_at="2099-01-01T00:00:00"
        )

        assert response.status_code == 422
        self._assert_unchanged(world, report, request)

    @staticmethod
    def _assert_unchanged(world: World, report: dict[str, Any], request: dict[str, Any]) -> None:
        assert fetch(world, "DEU", request["id"]).json() == request
        assert grants_on(world, report["id"]) == []
        assert world.get("FRA", report["id"]).status_code == 404
        assert [e[0] for e in events_on(world, report["id"])] == ["access_request.created"]


class TestWithdrawnReports:
    def test_revoking_a_report_takes_away_an_approved_grant(self, world: World) -> None:
        report = hit_report(world)
        request = asked(world, "FRA", report["id"])
        approved(world, "DEU", request["id"])
        assert world.get("FRA", report["id"]).json()["access"] == "full"

        assert revoke(world, "DEU", report["id"]).status_code == 200

        assert world.get("FRA", report["id"]).status_code == 404
        assert report["id"] not in listed(world, "FRA", report)

    def test_a_pending_request_on_a_revoked_report_cannot_be_approved(self, world: World) -> None:
        report = hit_report(world)
        request = asked(world, "FRA", report["id"])
        assert revoke(world, "DEU", report["id"]).status_code == 200

        response = decide(world, "DEU", request["id"], approve=True)

        assert response.status_code == 409
        assert fetch(world, "DEU", request["id"]).json()["status"] == "pending"
        assert grants_on(world, report["id"]) == []
        assert world.get("FRA", report["id"]).status_code == 404
        assert ("access_request.decide", "deny", "DEU", ["report_status:revoked"]) in entries_on(
            world, f"access_request:{request['id']}"
        )

    def test_a_pending_request_on_a_revoked_report_can_still_be_denied(self, world: World) -> None:
        report = hit_report(world)
        request = asked(world, "FRA", report["id"])
        assert revoke(world, "DEU", report["id"]).status_code == 200

        response = decide(world, "DEU", request["id"], approve=False)

        assert response.status_code == 200, response.text
        assert response.json()["status"] == "denied"

    def test_an_approval_racing_a_revocation_never_gives_access(self, world: World) -> None:
        report = hit_report(world)
        request = asked(world, "FRA", report["id"])
        world.token("DEU")

        with ThreadPoolExecutor(2) as pool:
            approving = pool.submit(decide, world, "DEU", request["id"], approve=True)
            revoking = pool.submit(revoke, world, "DEU", report["id"])
            statuses = (approving.result().status_code, revoking.result().status_code)

        assert statuses in {(200, 200), (409, 200)}
        assert world.get("FRA", report["id"]).status_code == 404
        assert stored_decision(world, report["id"], "FRA") is None

    def test_purging_a_report_takes_away_an_approved_grant(self, world: World) -> None:
        report = tearline_report(world)
        request = asked(world, "FRA", report["id"])
        approved(world, "DEU", request["id"])
        assert world.get("FRA", report["id"]).json()["access"] == "full"

        assert purge(world, "DEU", report["id"]).status_code == 204

        assert world.get("FRA", report["id"]).status_code == 404
        assert report["id"] not in listed(world, "FRA", report)

    def test_a_pending_request_on_a_purged_report_cannot_be_approved(self, world: World) -> None:
        report = hit_report(world)
        request = asked(world, "FRA", report["id"])
        assert purge(world, "DEU", report["id"]).status_code == 204

        response = decide(world, "DEU", request["id"], approve=True)

        assert response.status_code == 409
        assert fetch(world, "DEU", request["id"]).json()["status"] == "pending"
        assert grants_on(world, report["id"]) == []
        assert world.get("FRA", report["id"]).status_code == 404
