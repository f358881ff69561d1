"""Every member x every route x reports of varied markings, through the HTTP API.

The expected levels come from a plain reading of product.md's base policy written here, not from
the Cedar engine, so the engine, the stored decisions and the read queries are all checked
against the specification. A route the app serves that this file does not list fails the suite.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import yaml
from starlette.routing import Route

from app.config import PROJECT_ROOT
from tests.audit.conftest import maintain
from tests.conftest import World, report_body

CLASSIFICATION = {"UNCLASSIFIED": 0, "RESTRICTED": 1, "CONFIDENTIAL": 2, "SECRET": 3}


@dataclass(frozen=True)
class RefMember:
    code: str
    kind: str
    chair: bool
    clearance: int
    mandate: frozenset[str]

    @property
    def groups(self) -> frozenset[str]:
        groups = {"ALL", self.code, "STATES" if self.kind == "state" else "BODIES"}
        if self.chair:
            groups.add("CHAIRS")
        return frozenset(groups)


def _reference_roster() -> dict[str, RefMember]:
    taxonomy = yaml.safe_load((PROJECT_ROOT / "policies" / "taxonomy.yaml").read_text())
    leaves = {b: set(spec["topics"]) for b, spec in taxonomy["branches"].items()}
    roster = yaml.safe_load((PROJECT_ROOT / "policies" / "roster.yaml").read_text())
    members = {}
    for m in roster["members"]:
        mandate: set[str] = set()
        for code in m["mandate"]:
            mandate |= leaves.get(code, {code})
        members[m["code"]] = RefMember(
            m["code"],
            m["kind"],
            "chair" in m["roles"],
            CLASSIFICATION[m["clearance"]],
            frozenset(mandate),
        )
    return members


ROSTER = _reference_roster()


def expected_level(member: RefMember, originator: str, report: dict[str, Any]) -> str:
    """product.md, "Access model", rules 1, 3, 5 and 6, read literally."""
    if member.code == originator:
        return "full"
    if (
        member.groups & set(report["releasable_to"])
        and member.clearance >= CLASSIFICATION[report["classification"]]
        and member.mandate & set(report["topics"])
    ):
        return "full"
    if (
        report.get("summary")
        and member.groups & set(report.get("tearline_to", ["ALL"]))
        and member.clearance
        >= CLASSIFICATION[report.get("tearline_classification", "UNCLASSIFIED")]
    ):
        return "tearline"
    return "hit"


VARIANTS: list[tuple[str, dict[str, Any]]] = [
    ("USA", {"classification": "SECRET", "releasable_to": ["ALL"], "topics": ["MOV.HAW"]}),
    (
        "ITA",
        {
            "classification": "RESTRICTED",
            "releasable_to": ["BODIES"],
            "topics": ["REV.KFR"],
            "tearline_to": ["STATES"],
        },
    ),
    (
        "SAU",
        {
            "classification": "CONFIDENTIAL",
            "releasable_to": ["CHAIRS"],
            "topics": ["REV.DON"],
            "summary": None,
        },
    ),
    (
        "IRQ",
        {
            "classification": "UNCLASSIFIED",
            "releasable_to": ["JOR", "EGMONT"],
            "topics": ["MOV.MSB"],
            "tearline_to": ["BODIES"],
            "tearline_classification": "RESTRICTED",
        },
    ),
    ("FATF", {"classification": "RESTRICTED", "releasable_to": ["ALL"], "topics": ["CTR.SANC"]}),
    (
        "GBR",
        {
            "classification": "SECRET",
            "releasable_to": ["STATES"],
            "topics": ["USE.OPS"],
            "tearline_classification": "RESTRICTED",
        },
    ),
    (
        "INTERPOL",
        {
            "classification": "RESTRICTED",
            "releasable_to": ["ALL"],
            "topics": ["MOV.HAW", "MOV.CASH"],
            "tearline_to": ["CHAIRS", "EU"],
        },
    ),
    (
        "EU",
        {
            "classification": "CONFIDENTIAL",
            "releasable_to": ["BODIES", "TUR"],
            "topics": ["REV.ANT", "USE.AFF"],
            "tearline_to": ["ALL"],
        },
    ),
    (
        "JOR",
        {
            "classification": "SECRET",
            "releasable_to": ["JOR"],
            "topics": ["REV.OIL"],
            "tearline_to": ["ALL"],
            "tearline_classification": "RESTRICTED",
        },
    ),
    (
        "QAT",
        {
            "classification": "CONFIDENTIAL",
            "releasable_to": ["ALL"],
            "topics": ["REV.ONL", "MOV.VA"],
            "summary": None,
        },
    ),
]


@pytest.fixture(scope="module")
def matrix(world: World) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """Each variant submitted by its originator: (originator, submitted body, response)."""
    submitted = []
    for originator, fields in VARIANTS:
        body = report_body(**fields)
        response = world.http.post("/v1/reports", json=body, headers=world.headers(originator))
        assert response.status_code == 201, response.text
        submitted.append((originator, body, response.json()))
    return submitted


class TestReportLevels:
    def test_every_member_gets_exactly_the_base_policy_level_on_get(
        self, world: World, matrix: list[tuple[str, dict[str, Any], dict[str, Any]]]
    ) -> None:
        mismatches = []
        for originator, body, created in matrix:
            for code, member in ROSTER.items():
                want = expected_level(member, originator, body)
                response = world.get(code, created["id"])
                if want == "hit":
                    got = "hit" if response.status_code == 404 else f"{response.status_code}"
                else:
                    got = (
                        response.json().get("access")
                        if response.status_code == 200
                        else str(response.status_code)
                    )
                if got != want:
                    mismatches.append((originator, created["id"], code, want, got))
                if response.status_code == 200:
                    self._check_fields(response.json(), want, code == originator)
        assert mismatches == []

    @staticmethod
    def _check_fields(report: dict[str, Any], level: str, is_originator: bool) -> None:
        content = {"title", "body", "entities"}
        if level == "full":
            assert content <= report.keys()
        else:
            assert not content & report.keys()
        originator_only = {"releasable_to", "tearline_to", "tearline_classification", "audience"}
        if is_originator:
            assert originator_only <= report.keys()
        else:
            assert not originator_only & report.keys()

    def test_audience_announced_at_submission_matches_the_base_policy(
        self, matrix: list[tuple[str, dict[str, Any], dict[str, Any]]]
    ) -> None:
        for originator, body, created in matrix:
            levels = {code: expected_level(m, originator, body) for code, m in ROSTER.items()}
            assert created["audience"] == {
                "full": sorted(c for c, lvl in levels.items() if lvl == "full"),
                "tearline": sorted(c for c, lvl in levels.items() if lvl == "tearline"),
            }

    def test_every_member_lists_exactly_the_reports_it_may_read(
        self, world: World, matrix: list[tuple[str, dict[str, Any], dict[str, Any]]]
    ) -> None:
        ids = {created["id"] for _, _, created in matrix}
        for code, member in ROSTER.items():
            want = {
                created["id"]: expected_level(member, originator, body)
                for originator, body, created in matrix
                if expected_level(member, originator, body) in ("full", "tearline")
            }
            got: dict[str, str] = {}
            cursor = None
            while True:
                params: dict[str, Any] = {"limit": 100}
                if cursor:
                    params["cursor"] = cursor
                page = world.http.get("/v1/reports", params=params, headers=world.headers(code))
                assert page.status_code == 200, page.text
                for item in page.json()["items"]:
                    assert "body" not in item
                    assert "entities" not in item
                    if item["id"] in ids:
                        got[item["id"]] = item["access"]
                cursor = page.json()["next_cursor"]
                if not cursor:
                    break
            assert got == want, code


# -- every route is in the matrix -------------------------------------------------------------

Check = Callable[[World, dict[str, Any]], None]


def _public(world: World, ctx: dict[str, Any], method: str, path: str) -> None:
    response = world.http.request(method, path)
    assert response.status_code == 200


def _protected(method: str, path: str, scope: str | None, *, json: Any = None) -> Check:
    """Unauthenticated → 401; authenticated without the scope → 403; with it → not 401/403."""

    def check(world: World, ctx: dict[str, Any]) -> None:
        url = path.format(**ctx)
        anonymous = world.http.request(method, url, json=json)
        assert anonymous.status_code == 401
        assert anonymous.headers["www-authenticate"] == 'Bearer error="invalid_token"'
        if scope is not None:
            other = "search" if scope != "search" else "reports:read"
            lacking = world.http.request(
                method, url, json=json, headers=world.headers("DEU", scope=other)
            )
            assert lacking.status_code == 403
        allowed = world.http.request(method, url, json=json, headers=world.headers("DEU"))
        assert allowed.status_code not in (401, 403), allowed.text

    return check


def _token_endpoint(world: World, ctx: dict[str, Any]) -> None:
    assert world.request_token("DEU").status_code == 200
    forged = world.http.post(
        "/v1/auth/token",
        data={
            "grant_type": "client_credentials",
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": "x.y.z",
        },
    )
    assert forged.status_code == 401


def _report_by_id(world: World, ctx: dict[str, Any]) -> None:
    _protected("GET", "/v1/reports/{report_id}", "reports:read")(world, ctx)
    # A member outside the audience gets the same 404 as for an id that does not exist.
    hidden = world.get("NZL", ctx["report_id"])
    missing = world.get("NZL", "00000000-0000-4000-8000-000000000000")
    assert hidden.status_code == missing.status_code == 404
    assert hidden.json() == missing.json()


def _originator_only(
    method: str, path: str, scope: str, *, json: Any = None, headers: dict[str, str] | None = None
) -> Check:
    """Scopes as _protected; then 404 for a member that cannot read the report (as for a missing
    id), 403 for one that can (a chair), and success for the originator alone."""

    def check(world: World, ctx: dict[str, Any]) -> None:
        _protected(method, path, scope, json=json)(world, ctx)
        url = path.format(**ctx)
        missing_url = path.format(report_id="00000000-0000-4000-8000-000000000000")

        def call(code: str, target: str) -> Any:
            return world.http.request(
                method, target, json=json, headers={**world.headers(code), **(headers or {})}
            )

        hidden, missing = call("NZL", url), call("NZL", missing_url)
        assert hidden.status_code == missing.status_code == 404
        assert hidden.json() == missing.json()
        assert call("ITA", url).status_code == 403
        assert call("USA", url).status_code in (200, 204), call("USA", url).text

    return check


def _policy_explain(world: World, ctx: dict[str, Any]) -> None:
    """A chair may explain any report; others get 404 for what they cannot read, else 403."""
    payload = {"member": "DEU", "report_id": ctx["report_id"]}
    missing = {"member": "DEU", "report_id": "00000000-0000-4000-8000-000000000000"}
    _protected("POST", "/v1/policy/explain", "policy:read", json=missing)(world, ctx)

    def call(code: str, body: dict[str, Any]) -> Any:
        return world.http.post("/v1/policy/explain", json=body, headers=world.headers(code))

    assert call("ITA", payload).status_code == 200
    hidden, absent = call("NZL", payload), call("NZL", missing)
    assert hidden.status_code == absent.status_code == 404
    assert hidden.json() == absent.json()
    readable = world.submit("USA", releasable_to=["ALL"])
    assert call("DEU", {"member": "DEU", "report_id": readable["id"]}).status_code == 403


def _policy_reload(world: World, ctx: dict[str, Any]) -> None:
    """Chairs only; the shipped bundle is unchanged, so a chair's reload changes nothing."""
    url = "/v1/policy/reload"
    assert world.http.post(url).status_code == 401
    assert world.http.post(url, headers=world.headers("ITA", scope="search")).status_code == 403
    assert world.http.post(url, headers=world.headers("DEU")).status_code == 403
    response = world.http.post(url, headers=world.headers("ITA"))
    assert response.status_code == 200
    assert response.json()["changed"] is False


SEARCHED_IBAN = "IQ98NBIQ850123456789012"  # in report_body()'s entities


def _search(world: World, ctx: dict[str, Any]) -> None:
    """A searcher learns of a report only at a level it holds; a hidden one is absent."""
    query = {"entities": [{"type": "iban", "value": SEARCHED_IBAN}], "purpose": "matrix"}
    _protected("POST", "/v1/search", "search", json=query)(world, ctx)

    def found(code: str) -> dict[str, str]:
        response = world.http.post("/v1/search", json=query, headers=world.headers(code))
        assert response.status_code == 200, response.text
        return {r["report_id"]: r["access"] for r in response.json()["results"]}

    # CHAIRS-only, no summary: chairs read it in full, everyone else only gets a hit.
    assert found("USA")[ctx["report_id"]] == "full"
    assert found("ITA")[ctx["report_id"]] == "full"
    assert found("DEU")[ctx["report_id"]] == "hit"


def _request_access(world: World, ctx: dict[str, Any]) -> None:
    """Allowed at hit (DEU); 409 at full (a chair); 404 where the caller has no level at all
    (a revoked report), the same as for a missing report."""
    path = "/v1/reports/{report_id}/access-requests"
    body = {"justification": "same broker in our case file"}
    _protected("POST", path, "reports:read", json=body)(world, ctx)

    def call(code: str, report_id: str) -> Any:
        return world.http.post(
            path.format(report_id=report_id), json=body, headers=world.headers(code)
        )

    assert call("ITA", ctx["report_id"]).status_code == 409
    revoked = world.submit("USA", releasable_to=["CHAIRS"], summary=None)
    world.http.post(
        f"/v1/reports/{revoked['id']}/revoke", json={"reason": "x"}, headers=world.headers("USA")
    )
    hidden, missing = (
        call("NZL", revoked["id"]),
        call("NZL", "00000000-0000-4000-8000-000000000000"),
    )
    assert hidden.status_code == missing.status_code == 404
    assert hidden.json() == missing.json()


def _pending_request(world: World, ctx: dict[str, Any]) -> str:
    response = world.http.post(
        f"/v1/reports/{ctx['report_id']}/access-requests",
        json={"justification": "matrix"},
        headers=world.headers("JPN"),
    )
    assert response.status_code == 201, response.text
    request_id: str = response.json()["id"]
    return request_id


def _access_request_by_id(world: World, ctx: dict[str, Any]) -> None:
    """Its requester and the report's originator see it; anyone else gets 404 as for no request."""
    request_id = _pending_request(world, ctx)
    url = f"/v1/access-requests/{request_id}"
    assert world.http.get(url).status_code == 401
    assert world.http.get(url, headers=world.headers("JPN", scope="search")).status_code == 403
    assert world.http.get(url, headers=world.headers("JPN")).status_code == 200
    assert world.http.get(url, headers=world.headers("USA")).status_code == 200
    other = world.http.get(url, headers=world.headers("NZL"))
    absent = world.http.get(
        "/v1/access-requests/00000000-0000-4000-8000-000000000000", headers=world.headers("NZL")
    )
    assert other.status_code == absent.status_code == 404
    assert other.json() == absent.json()


def _decide_access_request(world: World, ctx: dict[str, Any]) -> None:
    """The originator decides; the requester gets 403, anyone else 404 as for no request."""
    request_id = _pending_request(world, ctx)
    url = f"/v1/access-requests/{request_id}/decision"
    body = {"approve": False, "note": "not now"}
    assert world.http.post(url, json=body).status_code == 401
    lacking = world.http.post(url, json=body, headers=world.headers("USA", scope="reports:read"))
    assert lacking.status_code == 403
    assert world.http.post(url, json=body, headers=world.headers("NZL")).status_code == 404
    assert world.http.post(url, json=body, headers=world.headers("JPN")).status_code == 403
    decided = world.http.post(url, json=body, headers=world.headers("USA"))
    assert decided.status_code == 200, decided.text
    assert decided.json()["status"] == "denied"


DEAD_URL = "http://127.0.0.1:9/hook"  # the discard port: nothing listens in tests
MISSING_ID = "00000000-0000-4000-8000-000000000000"


def _own_webhook(world: World, code: str = "USA") -> str:
    response = world.http.post(
        "/v1/webhooks",
        json={"url": DEAD_URL, "events": ["report.created"]},
        headers=world.headers(code),
    )
    assert response.status_code == 201, response.text
    webhook_id: str = response.json()["id"]
    return webhook_id


def _webhook_route(method: str, path: str, *, json: Any = None, delivery: bool = False) -> Check:
    """Scopes as _protected; a subscription exists for its member only: any other member gets
    the same 404 as for an id that does not exist."""

    def check(world: World, ctx: dict[str, Any]) -> None:
        webhook_id = _own_webhook(world)
        delivery_id = MISSING_ID
        if delivery:
            ping = world.http.post(f"/v1/webhooks/{webhook_id}/ping", headers=world.headers("USA"))
            delivery_id = ping.json()["delivery_id"]
        ids = {"webhook_id": webhook_id, "delivery_id": delivery_id}
        url = path.format(**ids)
        # DEU, whose subscription this is not, holds the scope: the 404 below is need-to-know.
        anonymous = world.http.request(method, url, json=json)
        assert anonymous.status_code == 401
        lacking = world.http.request(
            method, url, json=json, headers=world.headers("USA", scope="reports:read")
        )
        assert lacking.status_code == 403
        other = world.http.request(method, url, json=json, headers=world.headers("NZL"))
        missing = world.http.request(
            method,
            path.format(webhook_id=MISSING_ID, delivery_id=delivery_id),
            json=json,
            headers=world.headers("NZL"),
        )
        assert other.status_code == missing.status_code == 404
        assert other.json() == missing.json()
        own = world.http.request(method, url, json=json, headers=world.headers("USA"))
        # A fresh ping is pending: retrying it is a conflict, not a refusal.
        assert own.status_code in ((409,) if delivery else (200, 202, 204)), own.text

    return check


def _sync(world: World, ctx: dict[str, Any]) -> None:
    """The feed holds events of reports the caller may read, and nothing of the others."""
    _protected("GET", "/v1/sync", "reports:read")(world, ctx)

    def feed(code: str) -> set[str]:
        seen: set[str] = set()
        cursor = None
        while True:
            params = {"limit": 500, **({"cursor": cursor} if cursor else {})}
            page = world.http.get("/v1/sync", params=params, headers=world.headers(code)).json()
            seen |= {e["data"].get("report_id") for e in page["events"]}
            if not page["events"]:
                return seen
            cursor = page["next_cursor"]

    assert ctx["report_id"] in feed("USA")
    assert ctx["report_id"] in feed("ITA")
    assert ctx["report_id"] not in feed("NZL")


CHAIRS = tuple(code for code, member in ROSTER.items() if member.chair)
NON_CHAIRS = ("DEU", "FRA", "EU", "FATF")


def _audit(path: str, **params: Any) -> Check:
    """Chairs only: no token 401; a chair's token without the audit scope 403; a non-chair can
    neither obtain the scope (invalid_scope) nor use the route with its own token (403); each
    chair 200."""

    def check(world: World, ctx: dict[str, Any]) -> None:
        if path.startswith("/v1/audit/checkpoints"):
            maintain(world)  # at least one checkpoint, so that latest answers 200
        anonymous = world.http.get(path, params=params)
        assert anonymous.status_code == 401
        assert anonymous.headers["www-authenticate"] == 'Bearer error="invalid_token"'
        lacking = world.http.get(
            path, params=params, headers=world.headers("ITA", scope="reports:read")
        )
        assert lacking.status_code == 403
        for code in NON_CHAIRS:
            assert world.request_token(code, scope="audit").status_code == 400
            refused = world.http.get(path, params=params, headers=world.headers(code))
            assert refused.status_code == 403, code
        for code in CHAIRS:
            allowed = world.http.get(path, params=params, headers=world.headers(code))
            assert allowed.status_code == 200, (code, allowed.text)

    return check


ROUTES: dict[tuple[str, str], Check] = {
    ("GET", "/.well-known/oauth-authorization-server"): lambda w, c: _public(
        w, c, "GET", "/.well-known/oauth-authorization-server"
    ),
    ("GET", "/.well-known/jwks.json"): lambda w, c: _public(w, c, "GET", "/.well-known/jwks.json"),
    ("GET", "/healthz"): lambda w, c: _public(w, c, "GET", "/healthz"),
    ("GET", "/readyz"): lambda w, c: _public(w, c, "GET", "/readyz"),
    ("GET", "/metrics"): lambda w, c: _public(w, c, "GET", "/metrics"),
    ("GET", "/openapi.json"): lambda w, c: _public(w, c, "GET", "/openapi.json"),
    ("GET", "/docs"): lambda w, c: _public(w, c, "GET", "/docs"),
    ("GET", "/docs/oauth2-redirect"): lambda w, c: _public(w, c, "GET", "/docs/oauth2-redirect"),
    ("GET", "/redoc"): lambda w, c: _public(w, c, "GET", "/redoc"),
    ("POST", "/v1/auth/token"): _token_endpoint,
    ("POST", "/v1/reports"): _protected(
        "POST", "/v1/reports", "reports:write", json=report_body(releasable_to=["CHAIRS"])
    ),
    ("POST", "/v1/reports/preview"): _protected(
        "POST", "/v1/reports/preview", "reports:write", json=report_body()
    ),
    ("GET", "/v1/reports"): _protected("GET", "/v1/reports", "reports:read"),
    ("GET", "/v1/reports/{report_id}"): _report_by_id,
    ("PUT", "/v1/reports/{report_id}"): _originator_only(
        "PUT",
        "/v1/reports/{report_id}",
        "reports:write",
        json=report_body(releasable_to=["CHAIRS"], summary=None),
        headers={"If-Match": '"1"'},
    ),
    ("POST", "/v1/reports/{report_id}/revoke"): _originator_only(
        "POST", "/v1/reports/{report_id}/revoke", "reports:write", json={"reason": "superseded"}
    ),
    ("DELETE", "/v1/reports/{report_id}"): _originator_only(
        "DELETE", "/v1/reports/{report_id}", "reports:write"
    ),
    ("GET", "/v1/reports/{report_id}/versions"): _originator_only(
        "GET", "/v1/reports/{report_id}/versions", "reports:read"
    ),
    ("GET", "/v1/reports/{report_id}/access-log"): _originator_only(
        "GET", "/v1/reports/{report_id}/access-log", "reports:read"
    ),
    ("GET", "/v1/members"): _protected("GET", "/v1/members", None),
    ("GET", "/v1/members/me"): _protected("GET", "/v1/members/me", None),
    ("GET", "/v1/policy"): _protected("GET", "/v1/policy", "policy:read"),
    ("POST", "/v1/policy/explain"): _policy_explain,
    ("POST", "/v1/policy/reload"): _policy_reload,
    ("POST", "/v1/search"): _search,
    ("POST", "/v1/reports/{report_id}/access-requests"): _request_access,
    ("GET", "/v1/access-requests"): _protected("GET", "/v1/access-requests", "reports:read"),
    ("GET", "/v1/access-requests/{request_id}"): _access_request_by_id,
    ("POST", "/v1/access-requests/{request_id}/decision"): _decide_access_request,
    ("POST", "/v1/webhooks"): _protected(
        "POST", "/v1/webhooks", "webhooks", json={"url": DEAD_URL, "events": ["report.created"]}
    ),
    ("GET", "/v1/webhooks"): _protected("GET", "/v1/webhooks", "webhooks"),
    ("GET", "/v1/webhooks/{webhook_id}"): _webhook_route("GET", "/v1/webhooks/{webhook_id}"),
    ("DELETE", "/v1/webhooks/{webhook_id}"): _webhook_route("DELETE", "/v1/webhooks/{webhook_id}"),
    ("POST", "/v1/webhooks/{webhook_id}/rotate-secret"): _webhook_route(
        "POST", "/v1/webhooks/{webhook_id}/rotate-secret"
    ),
    ("POST", "/v1/webhooks/{webhook_id}/ping"): _webhook_route(
        "POST", "/v1/webhooks/{webhook_id}/ping"
    ),
    ("GET", "/v1/webhooks/{webhook_id}/deliveries"): _webhook_route(
        "GET", "/v1/webhooks/{webhook_id}/deliveries"
    ),
    ("POST", "/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/retry"): _webhook_route(
        "POST", "/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/retry", delivery=True
    ),
    ("GET", "/v1/sync"): _sync,
    ("GET", "/v1/audit/entries"): _audit("/v1/audit/entries", limit=1),
    ("GET", "/v1/audit/export"): _audit("/v1/audit/export", format="csv", actor="ITA"),
    ("GET", "/v1/audit/checkpoints/latest"): _audit("/v1/audit/checkpoints/latest"),
    ("GET", "/v1/audit/checkpoints"): _audit("/v1/audit/checkpoints"),
    ("GET", "/v1/audit/proofs/inclusion"): _audit(
        "/v1/audit/proofs/inclusion", index=0, tree_size=1
    ),
    ("GET", "/v1/audit/proofs/consistency"): _audit(
        "/v1/audit/proofs/consistency", first=1, second=2
    ),
}


def _served_routes(world: World) -> set[tuple[str, str]]:
    # Every API route is in the OpenAPI document (none is hidden from it); the framework's own
    # documentation routes are plain routes on the app.
    served = {
        (method.upper(), path)
        for path, operations in world.app.openapi()["paths"].items()
        for method in operations
    }
    for route in world.app.routes:
        if isinstance(route, Route):
            served |= {(m, route.path) for m in route.methods or () if m != "HEAD"}
    return served


class TestRouteMatrix:
    def test_every_served_route_is_in_the_matrix(self, world: World) -> None:
        assert _served_routes(world) - ROUTES.keys() == set()

    @pytest.mark.parametrize("route", sorted(ROUTES), ids=lambda r: f"{r[0]} {r[1]}")
    def test_route_enforces_authentication_scopes_and_need_to_know(
        self, world: World, route: tuple[str, str]
    ) -> None:
        assert route in _served_routes(world), "listed route is not served"
        created = world.submit("USA", releasable_to=["CHAIRS"], summary=None)
        ROUTES[route](world, {"report_id": created["id"]})
