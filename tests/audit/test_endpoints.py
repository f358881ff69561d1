"""The chairs' audit API through HTTP: entries, exports, signed checkpoints and proofs.

Everything a chair is given is checked the way an outside auditor would check it: leaf hashes
recomputed from the JSON as served, roots rebuilt with pymerkle (an independent RFC 9162
implementation), checkpoint signatures verified with python-jose against the published JWKS.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import httpx
import pymerkle
import pytest
from jose import jws
from jose.exceptions import JWSError

from app.audit import checkpoints, queries
from app.audit import service as audit
from app.audit import tree as audit_tree
from app.db import transaction
from app.kit import merkle
from app.members.models import Client
from tests.audit.conftest import CHAIRS, audit_get, maintain, maintain_all
from tests.conftest import World, report_body

PROBLEM = "application/problem+json"
VALIDATION = "https://tearline.invalid/problems/validation"
MISSING = "00000000-0000-4000-8000-000000000000"
NON_CHAIRS = ("DEU", "FRA", "EU", "FATF")

# api.md, "Audit": an entry as GET /v1/audit/entries shows it (the CSV export's columns).
CSV_HEADER = [
    "index",
    "time",
    "actor",
    "client",
    "action",
    "target",
    "decision",
    "reasons",
    "policy_hash",
    "purpose",
    "request_id",
    "leaf_hash",
]
ENTRY_FIELDS = set(CSV_HEADER)
# A spreadsheet evaluates a cell starting with one of these (CSV injection, OWASP).
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
TIME_FORMAT = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
CHECKPOINT_FIELDS = {"tree_size", "root_hash", "timestamp", "signature"}
# The reads of a report its originator is shown in the access log (api.md, "Reports").
REPORT_READS = {
    "report.read",
    "report.list_item",
    "report.create.replay",
    "search.result",
    "access_request.create",
}
# Every audit route, with a query that a chair gets a 200 (or, for latest, a 404) for.
AUDIT_ROUTES: list[tuple[str, dict[str, Any]]] = [
    ("/entries", {}),
    ("/export", {"format": "ndjson"}),
    ("/checkpoints/latest", {}),
    ("/checkpoints", {}),
    ("/proofs/inclusion", {"index": 0, "tree_size": 1}),
    ("/proofs/consistency", {"first": 1, "second": 1}),
]
# The action each route records a read (or a chair check's refusal) under.
ROUTE_ACTION = {
    "/entries": "audit.entries",
    "/export": "audit.export",
    "/checkpoints/latest": "audit.checkpoints",
    "/checkpoints": "audit.checkpoints",
    "/proofs/inclusion": "audit.proof",
    "/proofs/consistency": "audit.proof",
}


# -- reading the log as a chair --------------------------------------------------------------


def entries(world: World, code: str = "ITA", **filters: Any) -> list[dict[str, Any]]:
    """Every entry matching `filters`, page by page (each page read is itself logged)."""
    found: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params = {**filters, "limit": 1000, **({"cursor": cursor} if cursor else {})}
        page = audit_get(world, "/entries", code, **params)
        assert page.status_code == 200, page.text
        body = page.json()
        found.extend(body["items"])
        cursor = body["next_cursor"]
        if cursor is None:
            return found


def recorded(world: World, response: httpx.Response, **filters: Any) -> list[dict[str, Any]]:
    """The entries written by the request that produced `response`, in log order."""
    request_id = response.headers["x-request-id"]
    return [e for e in entries(world, **filters) if e["request_id"] == request_id]


def export(world: World, code: str = "ITA", **params: Any) -> httpx.Response:
    response = audit_get(world, "/export", code, **params)
    assert response.status_code == 200, response.text
    return response


def ndjson(response: httpx.Response) -> list[dict[str, Any]]:
    """NDJSON as its specification reads it: lines end with "\n", each is one JSON value."""
    text = response.text
    assert text == "" or text.endswith("\n")
    return [json.loads(line) for line in text.split("\n")[:-1]]


def append_entries(world: World, count: int, code: str = "DEU") -> None:
    """`count` entries appended through the app's own group-commit writer."""
    actor = audit.Actor(member=code, client=f"{code}.test")
    batch = [
        audit.Entry(action="report.read", decision="deny", target=f"report:{MISSING}")
        for _ in range(count)
    ]
    world.http.portal.call(world.state.audit_log.append, actor, batch)  # type: ignore[union-attr]


def submit(world: World, code: str, **fields: Any) -> dict[str, Any]:
    """A report with entities of its own: the default ones would match (and alert on) the
    reports other tests keep in the shared world."""
    fields.setdefault("entities", [{"type": "email", "value": f"{uuid.uuid4().hex}@example.test"}])
    return world.submit(code, **fields)


def read_as(world: World, code: str, report_id: str, purpose: str | None = None) -> httpx.Response:
    headers = world.headers(code)
    if purpose is not None:
        headers["Tearline-Purpose"] = purpose
    response = world.http.get(f"/v1/reports/{report_id}", headers=headers)
    assert response.status_code == 200, response.text
    return response


# The columns whose text callers can influence; the service's own (index, time, decision, the
# hashes) are written as they are, so a base64 hash starting with "+" stays the hash.
FREE_TEXT = {"actor", "client", "action", "target", "reasons", "purpose", "request_id"}


def as_cell(column: str, value: Any) -> str:
    """A value as its CSV cell: lists as compact JSON, a leading formula character in free text
    defused by a leading apostrophe."""
    if value is None:
        return ""
    text = (
        json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        if isinstance(value, list)
        else str(value)
    )
    return "'" + text if column in FREE_TEXT and text.startswith(FORMULA_START) else text


def reasons_of_a_read(route: str, response: httpx.Response) -> list[str]:
    """What a chair's unfiltered read of `route` (queried as in AUDIT_ROUTES) is recorded with."""
    if route == "/checkpoints/latest":
        return ["latest", f"tree_size:{response.json()['tree_size']}"]
    if route == "/checkpoints":
        return [f"items:{len(response.json()['items'])}"]
    return {
        "/entries": ["items:1"],
        "/export": ["format:ndjson"],
        "/proofs/inclusion": ["inclusion", "index:0", "tree_size:1"],
        "/proofs/consistency": ["consistency", "first:1", "second:1"],
    }[route]


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


def assert_validation_problem(response: httpx.Response, field: str) -> None:
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == PROBLEM
    body = response.json()
    assert body["type"] == VALIDATION
    assert body["status"] == 422
    assert ["query", field] in [e["loc"] for e in body["errors"]]


# -- an outside auditor's tools --------------------------------------------------------------


def entry_bytes(entry: dict[str, Any]) -> bytes:
    """api.md: the entry as served, without leaf_hash, sorted keys, compact, UTF-8, unescaped."""
    body = {k: v for k, v in entry.items() if k != "leaf_hash"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def leaf_of(entry: dict[str, Any]) -> str:
    return base64.b64encode(hashlib.sha256(b"\x00" + entry_bytes(entry)).digest()).decode()


def independent_tree(log: list[dict[str, Any]]) -> pymerkle.InmemoryTree:
    """The log's tree built by pymerkle from each entry's canonical bytes (index order)."""
    assert [e["index"] for e in log] == list(range(len(log)))
    tree = pymerkle.InmemoryTree("sha256")
    for entry in log:
        tree.append_entry(entry_bytes(entry))
    return tree


def pymerkle_rule(index: int, size: int) -> list[int]:
    """pymerkle's path-resolution bits for leaf `index` (0-based) in a tree of `size`."""
    bits, start, end = [], 0, size
    while end - start > 1:
        k = 1 << ((end - start - 1).bit_length() - 1)
        right = index >= start + k
        bits.append(int(right))
        start, end = (start + k, end) if right else (start, start + k)
    return [*reversed(bits), 0]


def check_inclusion(leaf: bytes, index: int, size: int, path: list[bytes], root: bytes) -> None:
    """pymerkle's verifier (1-based) on an RFC 9162 path; raises InvalidProof unless it holds."""
    proof = pymerkle.InclusionProof(
        "sha256", True, size, index + 1, pymerkle_rule(index, size), [leaf, *path]
    )
    pymerkle.verify_inclusion(leaf, root, proof, index=index + 1, size=size, algorithm="sha256")


def unb64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


def verify_checkpoint(world: World, checkpoint: dict[str, Any]) -> dict[str, Any]:
    """Verify the signature with python-jose and the published JWKS; the signed payload."""
    token = checkpoint["signature"]
    header = jws.get_unverified_header(token)
    assert header["alg"] == "ES256"
    assert header["typ"] == "audit-checkpoint+jwt"
    published = world.http.get("/.well-known/jwks.json").json()["keys"]
    key = next(k for k in published if k["kid"] == header["kid"])
    payload: dict[str, Any] = json.loads(jws.verify(token, key, algorithms=["ES256"]))
    return payload


def issue_checkpoint(world: World) -> dict[str, Any]:
    """Integrate everything and issue a checkpoint now (its interval made to have passed)."""
    with world.state.engine.connect() as conn:
        last = checkpoints.latest(conn)
    due = None
    if last is not None:
        due = last.timestamp + timedelta(seconds=world.settings.audit_checkpoint_seconds)
    progress = maintain_all(world, due)
    assert progress is not None
    assert progress.checkpoint is not None
    return progress.checkpoint.public()


def sync_events(world: World, code: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 500, **({"cursor": cursor} if cursor else {})}
        page = world.http.get("/v1/sync", params=params, headers=world.headers(code))
        assert page.status_code == 200, page.text
        body = page.json()
        if not body["events"]:
            return events
        events.extend(body["events"])
        cursor = body["next_cursor"]


# -- entries ---------------------------------------------------------------------------------


class TestEntries:
    def test_entries_have_the_documented_fields_and_the_exact_time_form(self, world: World) -> None:
        created = submit(world, "USA", releasable_to=["ALL"])
        read_as(world, "DEU", created["id"], purpose="case 2026/17")

        found = entries(world, report_id=created["id"])

        assert [(e["actor"], e["action"]) for e in found] == [
            ("USA", "report.create"),
            ("DEU", "report.read"),
        ]
        for entry in found:
            assert set(entry) == ENTRY_FIELDS
            assert TIME_FORMAT.match(entry["time"])
            assert isinstance(entry["reasons"], list)
            assert len(unb64(entry["leaf_hash"])) == 32
        read = found[1]
        assert read["client"] == "DEU.test"
        assert read["target"] == f"report:{created['id']}"
        assert read["decision"] == "allow"
        assert "level:full" in read["reasons"]
        assert read["policy_hash"] == world.state.policy.bundle.hash
        assert read["purpose"] == "case 2026/17"
        assert read["request_id"] is not None

    def test_every_leaf_hash_is_recomputable_from_the_entry_as_served(
        self, fresh_world: World
    ) -> None:
        world = fresh_world
        created = submit(world, "USA", releasable_to=["ALL"])
        read_as(world, "DEU", created["id"], purpose="tab\there")
        # Non-ASCII text in an entry is hashed as UTF-8, not as \u escapes.
        world.http.get("/v1/reports/café-ü-漢", headers=world.headers("NZL"))
        search = {
            "entities": [{"type": "email", "value": "nobody@example.test"}],
            "purpose": "enquête n° 7 — 漢字",
        }
        assert world.http.post("/v1/search", json=search, headers=world.headers("FRA")).is_success

        log = entries(world)

        assert any("café-ü-漢" in (e["target"] or "") for e in log)
        assert any(e["purpose"] == "enquête n° 7 — 漢字" for e in log)
        mismatched = [e["index"] for e in log if e["leaf_hash"] != leaf_of(e)]
        assert mismatched == []

    def test_indexes_are_dense_and_ascending_from_zero(self, fresh_world: World) -> None:
        world = fresh_world
        created = submit(world, "USA", releasable_to=["ALL"])
        for code in ("DEU", "FRA", "NZL"):
            world.get(code, created["id"])

        log = entries(world)

        assert [e["index"] for e in log] == list(range(len(log)))
        assert [at(e["time"]) for e in log] == sorted(at(e["time"]) for e in log)

    def test_each_filter_selects_exactly_the_matching_entries(self, fresh_world: World) -> None:
        world = fresh_world
        first = submit(world, "USA", releasable_to=["ALL"])
        second = submit(world, "ITA", releasable_to=["CHAIRS"], summary=None)
        read_as(world, "DEU", first["id"])
        read_as(world, "FRA", first["id"])
        assert world.get("DEU", second["id"]).status_code == 404  # a refusal, on record
        read_as(world, "USA", second["id"])
        log = entries(world)
        end = len(log)
        middle = log[end // 2]
        shifted = at(middle["time"]).astimezone(timezone(timedelta(hours=2))).isoformat()

        cases: list[tuple[dict[str, Any], Callable[[dict[str, Any]], bool]]] = [
            ({"actor": "DEU"}, lambda e: e["actor"] == "DEU"),
            ({"action": "report.read"}, lambda e: e["action"] == "report.read"),
            ({"report_id": first["id"]}, lambda e: e["target"] == f"report:{first['id']}"),
            ({"decision": "deny"}, lambda e: e["decision"] == "deny"),
            ({"since": middle["time"]}, lambda e: at(e["time"]) >= at(middle["time"])),
            ({"until": middle["time"]}, lambda e: at(e["time"]) < at(middle["time"])),
            # The same instant written in another zone selects the same entries.
            ({"since": shifted}, lambda e: at(e["time"]) >= at(middle["time"])),
            (
                {"actor": "DEU", "action": "report.read", "report_id": second["id"]},
                lambda e: (
                    e["actor"] == "DEU"
                    and e["action"] == "report.read"
                    and e["target"] == f"report:{second['id']}"
                ),
            ),
        ]
        for filters, keep in cases:
            want = [e for e in log if keep(e)]
            assert want, filters
            # Entries this test's own reads added after `log` was taken are left aside.
            got = [e for e in entries(world, **filters) if e["index"] < end]
            assert got == want, filters

    def test_paging_with_the_cursor_never_skips_or_repeats_while_the_log_grows(
        self, fresh_world: World
    ) -> None:
        world = fresh_world
        append_entries(world, 120, code="DEU")
        append_entries(world, 80, code="FRA")
        seen: list[int] = []
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"limit": 7, **({"cursor": cursor} if cursor else {})}
            page = audit_get(world, "/entries", **params).json()
            seen.extend(e["index"] for e in page["items"])
            # Every page read appends an entry at the end: paging must still reach it.
            cursor = page["next_cursor"]
            if cursor is None:
                break
            assert cursor == str(seen[-1])

        assert seen == list(range(len(seen)))
        assert len(seen) > 200

    def test_filtered_pages_resume_from_the_cursor_without_skipping_or_repeating(
        self, fresh_world: World
    ) -> None:
        world = fresh_world
        for _ in range(15):
            append_entries(world, 5, code="DEU")
            append_entries(world, 3, code="FRA")
        want = [e["index"] for e in entries(world, actor="FRA")]
        got: list[int] = []
        cursor: str | None = None
        while True:
            params = {"actor": "FRA", "limit": 4, **({"cursor": cursor} if cursor else {})}
            page = audit_get(world, "/entries", **params).json()
            got.extend(e["index"] for e in page["items"])
            cursor = page["next_cursor"]
            if cursor is None:
                break

        assert got == want
        assert len(got) == 45

    def test_a_page_holds_100_entries_by_default_and_up_to_1000_when_asked(
        self, fresh_world: World
    ) -> None:
        world = fresh_world
        append_entries(world, 1000)

        default = audit_get(world, "/entries").json()
        largest = audit_get(world, "/entries", limit=1000).json()

        assert [e["index"] for e in default["items"]] == list(range(100))
        assert default["next_cursor"] == "99"
        assert [e["index"] for e in largest["items"]] == list(range(1000))
        assert largest["next_cursor"] == "999"

    def test_a_page_ending_exactly_at_the_last_match_has_no_cursor(self, world: World) -> None:
        created = submit(world, "USA", releasable_to=["ALL"])
        read_as(world, "DEU", created["id"])

        page = audit_get(world, "/entries", report_id=created["id"], limit=2).json()

        assert len(page["items"]) == 2
        assert page["next_cursor"] is None

    @pytest.mark.parametrize(
        ("params", "field"),
        [
            ({"actor": "DEU;--"}, "actor"),
            ({"actor": "A" * 17}, "actor"),
            ({"action": "Report.Read"}, "action"),
            ({"report_id": "not-a-uuid"}, "report_id"),
            ({"decision": "ALLOW"}, "decision"),
            ({"since": "yesterday"}, "since"),
            ({"until": "2026-13-01T00:00:00Z"}, "until"),
            ({"limit": 0}, "limit"),
            ({"limit": 1001}, "limit"),
            ({"limit": "ten"}, "limit"),
            ({"cursor": "-1"}, "cursor"),
            ({"cursor": "abc"}, "cursor"),
            ({"cursor": "1" * 20}, "cursor"),
        ],
    )
    def test_invalid_query_is_a_422_problem_and_reads_nothing(
        self, world: World, params: dict[str, Any], field: str
    ) -> None:
        before = datetime.now(UTC) - timedelta(seconds=1)

        response = audit_get(world, "/entries", **params)

        assert_validation_problem(response, field)
        # Nothing was read, so there is no read to record (and no refusal: the caller may read).
        assert recorded(world, response, since=before.isoformat()) == []

    @pytest.mark.parametrize("route", ["/entries", "/checkpoints"])
    def test_a_cursor_beyond_any_stored_index_is_a_422_problem(
        self, fresh_world: World, route: str
    ) -> None:
        # Nineteen digits pass the cursor's pattern but exceed a 64-bit index.
        response = audit_get(fresh_world, route, cursor="9" * 19)

        assert_validation_problem(response, "cursor")

    @pytest.mark.parametrize(
        ("route", "field", "moment"),
        [
            ("/entries", "since", "0001-01-01T00:00:00+01:00"),
            ("/entries", "until", "9999-12-31T23:59:59-01:00"),
            ("/export", "since", "0001-01-01T00:00:00+01:00"),
            ("/checkpoints", "since", "0001-01-01T00:00:00+01:00"),
        ],
    )
    def test_a_time_outside_the_representable_utc_range_is_a_422_problem(
        self, fresh_world: World, route: str, field: str, moment: str
    ) -> None:
        # A valid RFC 3339 time whose UTC instant falls before year 1 or after year 9999.
        response = audit_get(fresh_world, route, **{field: moment})

        assert_validation_problem(response, field)

    def test_a_cursor_at_the_largest_index_is_an_empty_last_page(self, world: World) -> None:
        response = audit_get(world, "/entries", cursor="9" * 18)

        assert response.status_code == 200, response.text
        assert response.json() == {"items": [], "next_cursor": None}

    def test_report_content_never_appears_in_entries_or_exports(self, fresh_world: World) -> None:
        world = fresh_world
        tag = uuid.uuid4().hex[:12]
        secrets = {
            "title": f"Title-{tag}",
            "body": f"Body text {tag}",
            "summary": f"Summary {tag}",
            "person": f"Person {tag}",
            "email": f"courier.{tag}@example.test",
            "new_title": f"Retitled-{tag}",
            "new_body": f"Second body {tag}",
        }
        entities = [
            {"type": "person", "value": secrets["person"], "label": f"label-{tag}"},
            {"type": "email", "value": secrets["email"]},
        ]
        created = submit(
            world,
            "USA",
            releasable_to=["ALL"],
            title=secrets["title"],
            body=secrets["body"],
            summary=secrets["summary"],
            entities=entities,
        )
        read_as(world, "USA", created["id"])
        read_as(world, "DEU", created["id"], purpose="routine check")
        world.http.get("/v1/reports", headers=world.headers("FRA"))
        search = {"entities": [{"type": "email", "value": secrets["email"]}], "purpose": "match"}
        found = world.http.post("/v1/search", json=search, headers=world.headers("JPN"))
        assert [r["report_id"] for r in found.json()["results"]] == [created["id"]]
        replacement = report_body(
            title=secrets["new_title"],
            body=secrets["new_body"],
            summary=secrets["summary"],
            releasable_to=["ALL"],
            entities=entities,
        )
        updated = world.http.put(
            f"/v1/reports/{created['id']}",
            json=replacement,
            headers={**world.headers("USA"), "If-Match": '"1"'},
        )
        assert updated.status_code == 200, updated.text

        served = [
            json.dumps(entries(world), ensure_ascii=False),
            export(world, format="ndjson").text,
            export(world, format="csv").text,
        ]

        recorded_actions = {e["action"] for e in entries(world, report_id=created["id"])}
        assert {"report.create", "report.read", "search.result", "report.update"} <= (
            recorded_actions
        ), recorded_actions
        for text in served:
            leaked = [
                name
                for name, value in secrets.items()
                if value in text or value.lower() in text.lower()
            ]
            assert leaked == []
            assert f"label-{tag}" not in text

    def test_control_characters_in_a_purpose_are_escaped_in_the_entry(self, world: World) -> None:
        created = submit(world, "USA", releasable_to=["ALL"])
        read_as(world, "DEU", created["id"], purpose="case\x01\x1b[31m\t7\x7f\nforged: ok")
        search = {
            "entities": [{"type": "email", "value": "nobody@example.test"}],
            "purpose": "line\u2028sep\x85next\x9bcsi\x00nul é 😀",
        }
        searched = world.http.post("/v1/search", json=search, headers=world.headers("FRA"))
        assert searched.status_code == 200, searched.text

        read = entries(world, report_id=created["id"], action="report.read")
        queried = recorded(world, searched, actor="FRA", action="search")

        assert [e["purpose"] for e in read] == [
            "case\\u0001\\u001b[31m\\u00097\\u007f\\u000aforged: ok"
        ]
        assert [e["purpose"] for e in queried] == [
            "line\\u2028sep\\u0085next\\u009bcsi\\u0000nul é 😀"
        ]
        for entry in [*read, *queried]:
            assert entry["leaf_hash"] == leaf_of(entry)
        # One entry, one line: nothing in an export can be forged by a caller's text.
        lines = export(world, report_id=created["id"], action="report.read").text.splitlines()
        assert [json.loads(line) for line in lines] == read


# -- who may read the log, and that every read is on record ----------------------------------


class TestAuditScope:
    @pytest.mark.parametrize("code", NON_CHAIRS)
    def test_a_non_chair_cannot_obtain_the_audit_scope_and_the_refusal_is_recorded(
        self, world: World, code: str
    ) -> None:
        response = world.request_token(code, scope="audit")

        assert response.status_code == 400
        assert response.json()["error"] == "invalid_scope"
        refusals = recorded(world, response, action="auth.token", decision="deny")
        assert [(e["client"], e["reasons"]) for e in refusals] == [
            (f"{code}.test", ["invalid_scope", "scope_not_held"])
        ]

    @pytest.mark.parametrize("code", CHAIRS)
    def test_each_chair_obtains_the_audit_scope(self, world: World, code: str) -> None:
        response = world.request_token(code, scope="audit")

        assert response.status_code == 200, response.text
        assert response.json()["scope"] == "audit"

    @pytest.mark.parametrize("code", NON_CHAIRS)
    @pytest.mark.parametrize(("route", "params"), AUDIT_ROUTES, ids=[r for r, _ in AUDIT_ROUTES])
    def test_a_non_chair_gets_403_on_every_audit_route_and_the_refusal_is_recorded(
        self, world: World, code: str, route: str, params: dict[str, Any]
    ) -> None:
        response = world.http.get(f"/v1/audit{route}", params=params, headers=world.headers(code))

        assert response.status_code == 403
        assert response.headers["content-type"] == PROBLEM
        assert response.json()["status"] == 403
        refusals = recorded(world, response, actor=code, action="auth.scope")
        assert [(e["decision"], e["target"], e["reasons"]) for e in refusals] == [
            ("deny", f"route:GET /v1/audit{route}", ["missing:audit"])
        ]

    def test_a_non_chair_client_holding_the_audit_scope_is_refused_by_the_chair_check(
        self, fresh_world: World
    ) -> None:
        world = fresh_world
        # A client row that holds the scope anyway (registered while its member was a chair,
        # or edited by hand): the token endpoint grants what the row holds.
        with transaction(world.state.sessionmaker) as session:
            client = session.get(Client, "DEU.test")
            assert client is not None
            client.scopes = [*client.scopes, "audit"]
        assert world.request_token("DEU", scope="audit").status_code == 200

        for route, params in AUDIT_ROUTES:
            response = audit_get(world, route, "DEU", **params)

            assert response.status_code == 403, (route, response.text)
            assert response.headers["content-type"] == PROBLEM
            refusals = recorded(world, response, actor="DEU")
            assert [(e["action"], e["decision"], e["reasons"]) for e in refusals] == [
                (ROUTE_ACTION[route], "deny", ["not_chair"])
            ], route

    def test_a_chairs_read_of_entries_is_recorded_with_the_filters_it_used(
        self, world: World
    ) -> None:
        created = submit(world, "USA", releasable_to=["ALL"])
        read_as(world, "DEU", created["id"])
        since = "2020-01-02T03:04:05+02:00"
        until = "2999-01-01T00:00:00Z"

        response = audit_get(
            world,
            "/entries",
            "SAU",
            actor="DEU",
            action="report.read",
            report_id=created["id"],
            decision="allow",
            since=since,
            until=until,
            limit=5,
        )

        assert response.status_code == 200
        assert len(response.json()["items"]) == 1
        reads = recorded(world, response, actor="SAU", action="audit.entries")
        assert [(e["client"], e["target"], e["decision"], e["reasons"]) for e in reads] == [
            (
                "SAU.test",
                "audit",
                "allow",
                [
                    "actor:DEU",
                    "action:report.read",
                    f"report:{created['id']}",
                    "decision:allow",
                    "since:2020-01-02T01:04:05.000000Z",
                    "until:2999-01-01T00:00:00.000000Z",
                    "items:1",
                ],
            )
        ]

    @pytest.mark.parametrize("code", CHAIRS)
    def test_every_chairs_read_of_each_route_is_recorded(self, world: World, code: str) -> None:
        maintain_all(world)  # so that there is a latest checkpoint to read
        for route, params in AUDIT_ROUTES:
            query = {**params, "limit": 1} if route == "/entries" else params
            response = audit_get(world, route, code, **query)
            assert response.status_code == 200, (route, response.text)

            reads = recorded(world, response, actor=code, action=ROUTE_ACTION[route])

            assert [(e["client"], e["decision"], e["reasons"]) for e in reads] == [
                (f"{code}.test", "allow", reasons_of_a_read(route, response))
            ], route


# -- exports ---------------------------------------------------------------------------------


class TestExport:
    def test_ndjson_lines_are_exactly_the_entries_as_served(self, fresh_world: World) -> None:
        world = fresh_world
        created = submit(world, "USA", releasable_to=["ALL"])
        read_as(world, "DEU", created["id"], purpose="ndjson check")
        listed = entries(world)

        response = export(world, format="ndjson")

        assert response.headers["content-type"] == "application/x-ndjson"
        assert response.headers["content-disposition"] == (
            'attachment; filename="tearline-audit.ndjson"'
        )
        lines = ndjson(response)
        assert lines[: len(listed)] == listed
        # After them only the reads made since, ending with the read that listed them.
        assert [e["index"] for e in lines] == list(range(len(lines)))
        assert [e["action"] for e in lines[len(listed) :]] == ["audit.entries"]
        for line, entry in zip(response.text.splitlines(), lines, strict=True):
            assert json.loads(line) == entry
            assert entry["leaf_hash"] == leaf_of(entry)

    def test_the_export_is_recorded_before_it_is_sent_and_excludes_itself(
        self, fresh_world: World
    ) -> None:
        world = fresh_world

        response = export(world, format="csv", actor="ITA", decision="allow")

        own = recorded(world, response, action="audit.export")
        assert [(e["actor"], e["decision"], e["reasons"]) for e in own] == [
            ("ITA", "allow", ["actor:ITA", "decision:allow", "format:csv"])
        ]
        indexes = [int(row[0]) for row in list(csv.reader(io.StringIO(response.text)))[1:]]
        assert indexes
        assert max(indexes) < own[0]["index"]

    def test_csv_has_the_header_row_and_neutralises_formula_cells(self, world: World) -> None:
        created = submit(world, "USA", releasable_to=["ALL"])
        purposes = ['=HYPERLINK("http://evil.test","x")', "+1+1", "-2+3", "@SUM(A1)"]
        for purpose in purposes:
            read_as(world, "DEU", created["id"], purpose=purpose)
        served = entries(world, report_id=created["id"], action="report.read")

        response = export(world, format="csv", report_id=created["id"], action="report.read")

        assert response.headers["content-type"] == "text/csv; charset=utf-8"
        assert response.headers["content-disposition"] == (
            'attachment; filename="tearline-audit.csv"'
        )
        rows = list(csv.reader(io.StringIO(response.text)))
        assert rows[0] == CSV_HEADER
        assert [[as_cell(c, e[c]) for c in CSV_HEADER] for e in served] == rows[1:]
        assert [row[CSV_HEADER.index("purpose")] for row in rows[1:]] == [f"'{p}" for p in purposes]
        for row in rows:
            free = [cell for c, cell in zip(CSV_HEADER, row, strict=True) if c in FREE_TEXT]
            assert [cell for cell in free if cell.startswith(FORMULA_START)] == []

    def test_the_export_applies_the_filters(self, world: World) -> None:
        created = submit(world, "USA", releasable_to=["ALL"])
        for code in ("DEU", "FRA", "DEU"):
            read_as(world, code, created["id"])
        filters = {"report_id": created["id"], "actor": "DEU"}
        listed = entries(world, **filters)

        lines = ndjson(export(world, format="ndjson", **filters))

        assert lines == listed
        assert len(lines) == 2

    def test_an_export_larger_than_a_chunk_streams_every_entry_once_in_order(
        self, fresh_world: World, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        world = fresh_world
        monkeypatch.setattr(queries, "EXPORT_CHUNK", 7)
        append_entries(world, 100)

        lines = ndjson(export(world, format="ndjson"))
        rows = list(csv.reader(io.StringIO(export(world, format="csv").text)))

        assert len(lines) > 7 * 10
        assert [e["index"] for e in lines] == list(range(len(lines)))
        assert rows[0] == CSV_HEADER
        assert [int(r[0]) for r in rows[1:]] == list(range(len(lines) + 1))
        assert rows[1 : len(lines) + 1] == [[as_cell(c, e[c]) for c in CSV_HEADER] for e in lines]
        assert [e["leaf_hash"] for e in lines] == [leaf_of(e) for e in lines]
        filtered = ndjson(export(world, format="ndjson", actor="DEU"))
        assert [e["index"] for e in filtered] == [e["index"] for e in entries(world, actor="DEU")]

    def test_an_export_covers_the_log_as_it_stood_when_it_began(
        self, fresh_world: World, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        world = fresh_world
        monkeypatch.setattr(queries, "EXPORT_CHUNK", 5)
        append_entries(world, 30)
        real_lines = queries.ndjson_lines
        written_during: list[int] = []

        def lines_then_write(batch: list[dict[str, Any]]) -> str:
            if not written_during:
                # Entries committed while the export streams its first chunk.
                rows = [
                    audit.row(
                        audit.Actor("FRA", "FRA.test"),
                        audit.Entry(action="report.read", decision="deny", target="late"),
                    )
                    for _ in range(12)
                ]
                with world.state.engine.begin() as conn:
                    audit.insert_rows(conn, rows)
                written_during.append(len(rows))
            return real_lines(batch)

        monkeypatch.setattr(queries, "ndjson_lines", lines_then_write)

        response = export(world, format="ndjson")

        own = recorded(world, response, action="audit.export")
        late = [e for e in entries(world, actor="FRA") if e["target"] == "late"]
        assert written_during == [12]
        assert len(late) == 12
        assert [e["index"] for e in ndjson(response)] == list(range(own[0]["index"]))
        assert min(e["index"] for e in late) > own[0]["index"]


# -- checkpoints -----------------------------------------------------------------------------


class TestCheckpoints:
    def test_latest_is_a_404_problem_before_the_first_checkpoint_and_is_recorded(
        self, fresh_world: World
    ) -> None:
        response = audit_get(fresh_world, "/checkpoints/latest")

        assert response.status_code == 404
        assert response.headers["content-type"] == PROBLEM
        assert response.json()["status"] == 404
        reads = recorded(fresh_world, response, action="audit.checkpoints")
        assert [(e["decision"], e["reasons"]) for e in reads] == [("allow", ["latest", "none"])]
        assert audit_get(fresh_world, "/checkpoints").json() == {"items": [], "next_cursor": None}

    def test_latest_checkpoint_is_signed_by_a_published_key_over_exactly_its_fields(
        self, fresh_world: World
    ) -> None:
        world = fresh_world
        submit(world, "USA", releasable_to=["ALL"])
        progress = maintain(world)
        assert progress is not None
        assert progress.checkpoint is not None

        latest = audit_get(world, "/checkpoints/latest")

        assert latest.status_code == 200, latest.text
        checkpoint = latest.json()
        assert checkpoint == progress.checkpoint.public()
        assert set(checkpoint) == CHECKPOINT_FIELDS
        assert TIME_FORMAT.match(checkpoint["timestamp"])
        assert len(unb64(checkpoint["root_hash"])) == 32
        assert verify_checkpoint(world, checkpoint) == {
            "tree_size": checkpoint["tree_size"],
            "root_hash": checkpoint["root_hash"],
            "timestamp": checkpoint["timestamp"],
        }

    def test_a_checkpoint_signature_fails_for_any_other_payload(self, fresh_world: World) -> None:
        world = fresh_world
        checkpoint = issue_checkpoint(world)
        header, _, signature = checkpoint["signature"].split(".")
        forged = {"tree_size": checkpoint["tree_size"] + 1, "root_hash": checkpoint["root_hash"]}
        body = base64.urlsafe_b64encode(json.dumps(forged).encode()).rstrip(b"=").decode()

        with pytest.raises(JWSError):
            verify_checkpoint(world, {**checkpoint, "signature": f"{header}.{body}.{signature}"})

    def test_a_checkpoint_root_is_the_root_of_every_entry_up_to_its_size(
        self, fresh_world: World
    ) -> None:
        world = fresh_world
        created = submit(world, "USA", releasable_to=["ALL"])
        read_as(world, "DEU", created["id"], purpose="enquete")
        first = issue_checkpoint(world)
        read_as(world, "FRA", created["id"])
        second = issue_checkpoint(world)

        log = entries(world)
        tree = independent_tree(log)

        for checkpoint in (first, second):
            size = checkpoint["tree_size"]
            assert size <= len(log)
            assert tree.get_root(size) == unb64(checkpoint["root_hash"])
        assert second["tree_size"] > first["tree_size"]
        assert [tree.get_leaf(i + 1) for i in range(len(log))] == [
            unb64(e["leaf_hash"]) for e in log
        ]

    def test_checkpoints_list_in_size_order_and_resume_from_the_cursor(
        self, fresh_world: World
    ) -> None:
        world = fresh_world
        issued = []
        for code in ("DEU", "FRA", "JPN", "NZL"):
            submit(world, code, releasable_to=["ALL"])
            issued.append(issue_checkpoint(world))

        everything = audit_get(world, "/checkpoints").json()
        paged: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            params = {"limit": 1, **({"cursor": cursor} if cursor else {})}
            page = audit_get(world, "/checkpoints", **params).json()
            paged.extend(page["items"])
            cursor = page["next_cursor"]
            if cursor is None:
                break
            assert cursor == str(page["items"][-1]["tree_size"])

        assert everything == {"items": issued, "next_cursor": None}
        assert paged == issued
        sizes = [c["tree_size"] for c in issued]
        assert sizes == sorted(set(sizes))
        for checkpoint in issued:
            assert verify_checkpoint(world, checkpoint)["tree_size"] == checkpoint["tree_size"]
        since = audit_get(world, "/checkpoints", since=issued[2]["timestamp"]).json()
        assert since["items"] == issued[2:]
        after = audit_get(world, "/checkpoints", cursor=str(sizes[0])).json()
        assert after["items"] == issued[1:]

    @pytest.mark.parametrize(
        ("params", "field"),
        [
            ({"since": "soon"}, "since"),
            ({"limit": 0}, "limit"),
            ({"limit": 1001}, "limit"),
            ({"cursor": "x"}, "cursor"),
        ],
    )
    def test_invalid_checkpoint_query_is_a_422_problem(
        self, world: World, params: dict[str, Any], field: str
    ) -> None:
        assert_validation_problem(audit_get(world, "/checkpoints", **params), field)

    def test_each_checkpoint_goes_to_every_chairs_sync_feed(self, fresh_world: World) -> None:
        world = fresh_world
        submit(world, "USA", releasable_to=["ALL"])
        first = issue_checkpoint(world)
        submit(world, "DEU", releasable_to=["ALL"])
        second = issue_checkpoint(world)

        for code in CHAIRS:
            seen = [e for e in sync_events(world, code) if e["type"] == "audit.checkpoint"]

            assert [e["data"] for e in seen] == [first, second], code
            for event in seen:
                assert set(event["data"]) == CHECKPOINT_FIELDS
                verify_checkpoint(world, event["data"])

    def test_a_non_chairs_sync_feed_never_shows_a_checkpoint(self, fresh_world: World) -> None:
        world = fresh_world
        submit(world, "USA", releasable_to=["ALL"])
        issue_checkpoint(world)
        submit(world, "DEU", releasable_to=["ALL"])
        issue_checkpoint(world)

        for code in NON_CHAIRS:
            events = sync_events(world, code)

            assert events, code  # the feed works: it shows the reports the member may read
            assert "audit.checkpoint" not in {e["type"] for e in events}, code


# -- proofs ----------------------------------------------------------------------------------


class TestProofs:
    @pytest.fixture
    def logged(self, fresh_world: World) -> tuple[World, list[dict[str, Any]]]:
        """A world with a few checkpoints behind it: (world, its signed checkpoints)."""
        world = fresh_world
        issued = []
        for code in ("USA", "DEU", "FRA"):
            created = submit(world, code, releasable_to=["ALL"])
            read_as(world, "JPN", created["id"], purpose=f"proof {code}")
            issued.append(issue_checkpoint(world))
        return world, issued

    def test_inclusion_proofs_verify_against_an_independently_built_tree(
        self, logged: tuple[World, list[dict[str, Any]]]
    ) -> None:
        world, issued = logged
        signed = issued[-1]
        size = signed["tree_size"]
        created = submit(world, "GBR", releasable_to=["ALL"])
        read_as(world, "NZL", created["id"])
        log = entries(world)
        tree = independent_tree(log)
        # The checkpoint's own size, smaller ones, and sizes the maintainer has not reached:
        # the route integrates those itself.
        with world.state.engine.connect() as conn:
            assert audit_tree.tree_size(conn) == size < len(log)
        asked = [(0, size), (1, size), (size // 2, size), (size - 1, size)]
        asked += [
            (0, 1),
            (2, 3),
            (4, 7),
            (5, 8),
            (10, 17),
            (issued[0]["tree_size"] - 1, issued[1]["tree_size"]),
        ]
        asked += [(size, len(log)), (0, len(log)), (len(log) - 1, len(log))]

        for index, tree_size in asked:
            response = audit_get(world, "/proofs/inclusion", index=index, tree_size=tree_size)
            assert response.status_code == 200, response.text
            proof = response.json()

            assert set(proof) == {"index", "tree_size", "leaf_hash", "path"}
            assert (proof["index"], proof["tree_size"]) == (index, tree_size)
            assert proof["leaf_hash"] == log[index]["leaf_hash"] == leaf_of(log[index])
            check_inclusion(
                unb64(proof["leaf_hash"]),
                index,
                tree_size,
                [unb64(h) for h in proof["path"]],
                tree.get_root(tree_size),
            )
        # Against the signed root itself, not only the recomputed one.
        proof = audit_get(world, "/proofs/inclusion", index=3, tree_size=size).json()
        check_inclusion(
            unb64(proof["leaf_hash"]),
            3,
            size,
            [unb64(h) for h in proof["path"]],
            unb64(signed["root_hash"]),
        )

    def test_an_inclusion_proof_for_another_leaf_does_not_verify(
        self, logged: tuple[World, list[dict[str, Any]]]
    ) -> None:
        world, issued = logged
        size = issued[-1]["tree_size"]
        log = entries(world)
        proof = audit_get(world, "/proofs/inclusion", index=2, tree_size=size).json()

        with pytest.raises(pymerkle.InvalidProof):
            check_inclusion(
                unb64(log[3]["leaf_hash"]),
                2,
                size,
                [unb64(h) for h in proof["path"]],
                unb64(issued[-1]["root_hash"]),
            )

    def test_consistency_proofs_between_checkpoints_verify(
        self, logged: tuple[World, list[dict[str, Any]]]
    ) -> None:
        world, issued = logged
        log = entries(world)
        tree = independent_tree(log)
        sizes = [c["tree_size"] for c in issued]
        for checkpoint in issued:
            assert tree.get_root(checkpoint["tree_size"]) == unb64(checkpoint["root_hash"])
        pairs = [(a, b) for a in sizes for b in sizes if a <= b]
        pairs += [(1, sizes[-1]), (2, 3), (4, sizes[0]), (sizes[-1], len(log))]

        for first, second in pairs:
            response = audit_get(world, "/proofs/consistency", first=first, second=second)
            assert response.status_code == 200, response.text
            proof = response.json()

            assert set(proof) == {"first", "second", "path"}
            assert (proof["first"], proof["second"]) == (first, second)
            path = [unb64(h) for h in proof["path"]]
            merkle.verify_consistency(
                first, second, tree.get_root(first), tree.get_root(second), path
            )
            if first == second:
                assert path == []

    def test_a_consistency_proof_does_not_verify_against_another_root(
        self, logged: tuple[World, list[dict[str, Any]]]
    ) -> None:
        world, issued = logged
        first, second = issued[0]["tree_size"], issued[-1]["tree_size"]
        proof = audit_get(world, "/proofs/consistency", first=first, second=second).json()
        path = [unb64(h) for h in proof["path"]]

        with pytest.raises(merkle.ProofError):
            merkle.verify_consistency(
                first, second, unb64(issued[1]["root_hash"]), unb64(issued[-1]["root_hash"]), path
            )

    @pytest.mark.parametrize(
        ("route", "params", "field", "asked"),
        [
            (
                "/proofs/inclusion",
                {"index": 5, "tree_size": 5},
                "index",
                ["inclusion", "index:5", "tree_size:5"],
            ),
            (
                "/proofs/inclusion",
                {"index": 0, "tree_size": 2**40},
                "tree_size",
                ["inclusion", "index:0", f"tree_size:{2**40}"],
            ),
            (
                "/proofs/consistency",
                {"first": 5, "second": 3},
                "first",
                ["consistency", "first:5", "second:3"],
            ),
            (
                "/proofs/consistency",
                {"first": 1, "second": 2**40},
                "second",
                ["consistency", "first:1", f"second:{2**40}"],
            ),
        ],
    )
    def test_an_out_of_range_proof_request_is_a_422_problem_and_recorded(
        self, world: World, route: str, params: dict[str, Any], field: str, asked: list[str]
    ) -> None:
        response = audit_get(world, route, **params)

        assert_validation_problem(response, field)
        refusals = recorded(world, response, actor="ITA", action="audit.proof")
        assert [(e["decision"], e["reasons"]) for e in refusals] == [
            ("deny", [*asked, "out_of_range"])
        ]

    @pytest.mark.parametrize(
        ("route", "params", "field"),
        [
            ("/proofs/consistency", {"first": 0, "second": 3}, "first"),
            ("/proofs/consistency", {"first": 1}, "second"),
            ("/proofs/inclusion", {"index": -1, "tree_size": 3}, "index"),
            ("/proofs/inclusion", {"index": 0, "tree_size": 0}, "tree_size"),
            ("/proofs/inclusion", {"index": "x", "tree_size": 3}, "index"),
        ],
    )
    def test_a_malformed_proof_request_is_a_422_problem(
        self, world: World, route: str, params: dict[str, Any], field: str
    ) -> None:
        before = datetime.now(UTC) - timedelta(seconds=1)

        response = audit_get(world, route, **params)

        assert_validation_problem(response, field)
        assert recorded(world, response, since=before.isoformat()) == []


# -- the originator's view of the same entries -----------------------------------------------


class TestAccessLog:
    def test_the_access_log_shows_the_reads_of_the_report_recorded_in_the_audit_log(
        self, world: World
    ) -> None:
        email = f"{uuid.uuid4().hex}@example.test"
        created = submit(
            world, "USA", releasable_to=["ALL"], entities=[{"type": "email", "value": email}]
        )
        read_as(world, "USA", created["id"])
        read_as(world, "DEU", created["id"], purpose="case\x07 17")
        read_as(world, "FRA", created["id"], purpose="liaison")
        search = {"entities": [{"type": "email", "value": email}], "purpose": "screening"}
        assert world.http.post("/v1/search", json=search, headers=world.headers("JPN")).is_success
        listed = world.http.get("/v1/reports", params={"limit": 1}, headers=world.headers("GBR"))
        assert [item["id"] for item in listed.json()["items"]] == [created["id"]]
        assert world.get("NZL", MISSING).status_code == 404  # another report: not in its log

        shown: list[tuple[dict[str, Any], str | None]] = []
        cursor: str | None = None
        while True:
            params = {"limit": 1, **({"cursor": cursor} if cursor else {})}
            page = world.http.get(
                f"/v1/reports/{created['id']}/access-log",
                params=params,
                headers=world.headers("USA"),
            )
            assert page.status_code == 200, page.text
            body = page.json()
            cursor = body["next_cursor"]
            shown.extend((item, cursor) for item in body["items"])
            if cursor is None:
                break

        reads = [
            e
            for e in entries(world, report_id=created["id"], decision="allow")
            if e["action"] in REPORT_READS
        ]
        newest_first = list(reversed(reads))
        assert len(shown) == len(newest_first) == 5
        for (item, _), entry in zip(shown, newest_first, strict=True):
            assert item == {
                "time": item["time"],
                "member": entry["actor"],
                "client": entry["client"],
                "action": entry["action"],
                "level": next(r[6:] for r in entry["reasons"] if r.startswith("level:")),
                "purpose": entry["purpose"],
            }
            assert at(item["time"]) == at(entry["time"])
        assert [(item["member"], item["action"]) for item, _ in shown] == [
            ("GBR", "report.list_item"),
            ("JPN", "search.result"),
            ("FRA", "report.read"),
            ("DEU", "report.read"),
            ("USA", "report.read"),
        ]
        assert shown[3][0]["purpose"] == "case\\u0007 17"
        # The access log's cursor is the index of the entry its page stopped at.
        cursors = [c for _, c in shown]
        assert cursors == [str(e["index"]) for e in newest_first[:-1]] + [None]
