"""`/v1/policy`: the bundle in force, and `POST /v1/policy/explain` for chairs and originators."""

from __future__ import annotations

from typing import Any

import httpx
from sqlalchemy import select

from app.audit.models import AuditEntry
from app.db import transaction
from tests.conftest import World

MISSING_ID = "00000000-0000-4000-8000-000000000000"
SAU_RULE = "SAU.donations-full-only-to-chairs-and-fatf"
IRQ_RULE = "IRQ.no-tearline-of-secret-operations"


def explain(
    world: World, caller: str, member: str, report_id: str, **headers: str
) -> httpx.Response:
    return world.http.post(
        "/v1/policy/explain",
        json={"member": member, "report_id": report_id},
        headers={**world.headers(caller), **headers},
    )


def entries_of(
    world: World, response: httpx.Response
) -> list[tuple[str, str, str | None, list[str]]]:
    """(action, decision, target, reasons) of the entries the request wrote, oldest first."""
    with transaction(world.state.sessionmaker) as session:
        rows = session.execute(
            select(AuditEntry.action, AuditEntry.decision, AuditEntry.target, AuditEntry.reasons)
            .where(AuditEntry.request_id == response.headers["x-request-id"])
            .order_by(AuditEntry.id)
        ).all()
    return [(r.action, r.decision, r.target, list(r.reasons)) for r in rows]


def hidden_from_nzl(world: World) -> dict[str, Any]:
    """A DEU report that NZL cannot read (it would get only a hit)."""
    return world.submit("DEU", releasable_to=["FRA"], summary=None)


class TestPolicyInfo:
    def test_policy_info_lists_the_shipped_country_files(self, world: World) -> None:
        response = world.http.get("/v1/policy", headers=world.headers("DEU"))
        assert response.status_code == 200
        assert {"countries/IRQ.cedar", "countries/SAU.cedar", "countries/USA.cedar"} <= set(
            response.json()["files"]
        )
        assert response.json()["hash"] == world.state.policy.bundle.hash


class TestExplainForChairsAndOriginators:
    def test_chair_is_told_the_level_and_the_deciding_policies(self, world: World) -> None:
        created = world.submit("SAU", topics=["REV.DON"], releasable_to=["ALL"])
        response = explain(world, "ITA", "DEU", created["id"])
        assert response.status_code == 200, response.text
        assert response.json() == {"level": "tearline", "reasons": ["base.tearline", SAU_RULE]}

    def test_chair_may_explain_a_report_it_cannot_read(self, world: World) -> None:
        created = hidden_from_nzl(world)
        assert world.get("USA", created["id"]).status_code == 404
        response = explain(world, "USA", "FRA", created["id"])
        assert response.status_code == 200, response.text
        assert response.json() == {"level": "full", "reasons": ["base.releasable"]}

    def test_originator_who_is_no_chair_is_told_why_a_member_gets_only_a_hit(
        self, world: World
    ) -> None:
        created = world.submit(
            "IRQ", classification="SECRET", topics=["USE.OPS"], releasable_to=["JOR"]
        )
        response = explain(world, "IRQ", "DEU", created["id"])
        assert response.status_code == 200, response.text
        assert response.json() == {"level": "hit", "reasons": ["base.hit", IRQ_RULE]}
        assert explain(world, "IRQ", "JOR", created["id"]).json()["level"] == "full"

    def test_explaining_a_body_on_a_usa_law_enforcement_report_gives_none(
        self, world: World
    ) -> None:
        created = world.submit(
            "USA", classification="RESTRICTED", topics=["CTR.LE"], releasable_to=["ALL"]
        )
        response = explain(world, "USA", "INTERPOL", created["id"])
        assert response.json() == {
            "level": "none",
            "reasons": ["USA.law-enforcement-withheld-from-bodies"],
        }

    def test_the_explanation_is_audited_with_member_and_level(self, world: World) -> None:
        created = world.submit("GBR", releasable_to=["ALL"])
        response = explain(world, "SAU", "EU", created["id"])
        assert response.status_code == 200
        assert entries_of(world, response) == [
            ("policy.explain", "allow", f"report:{created['id']}", ["member:EU", "level:full"])
        ]

    def test_the_explanation_uses_the_bundle_in_force(self, world: World) -> None:
        created = world.submit("GBR", releasable_to=["ALL"])
        response = explain(world, "ITA", "GBR", created["id"])
        with transaction(world.state.sessionmaker) as session:
            stored = session.execute(
                select(AuditEntry.policy_hash).where(
                    AuditEntry.request_id == response.headers["x-request-id"]
                )
            ).scalar_one()
        assert stored == world.state.policy.bundle.hash


class TestExplainRefusals:
    def test_member_who_can_read_but_is_neither_chair_nor_originator_is_forbidden(
        self, world: World
    ) -> None:
        created = world.submit("GBR", releasable_to=["ALL"])
        response = explain(world, "DEU", "FRA", created["id"])
        assert response.status_code == 403
        assert response.headers["content-type"] == "application/problem+json"
        assert entries_of(world, response) == [
            ("policy.explain", "deny", f"report:{created['id']}", ["not_chair_or_originator"])
        ]

    def test_tearline_reader_is_forbidden_too(self, world: World) -> None:
        created = world.submit("GBR", releasable_to=["FRA"])
        assert world.get("NZL", created["id"]).json()["access"] == "tearline"
        assert explain(world, "NZL", "FRA", created["id"]).status_code == 403

    def test_report_the_caller_cannot_read_answers_exactly_like_a_missing_one(
        self, world: World
    ) -> None:
        created = hidden_from_nzl(world)
        hidden = explain(world, "NZL", "FRA", created["id"])
        missing = explain(world, "NZL", "FRA", MISSING_ID)
        assert hidden.status_code == missing.status_code == 404
        assert hidden.json() == missing.json() == world.get("NZL", MISSING_ID).json()
        assert hidden.headers["content-type"] == missing.headers["content-type"]
        assert entries_of(world, hidden) == [
            ("policy.explain", "deny", f"report:{created['id']}", ["level:none"])
        ]

    def test_chair_asking_about_a_missing_report_gets_404(self, world: World) -> None:
        assert explain(world, "ITA", "DEU", MISSING_ID).status_code == 404

    def test_id_that_is_not_a_report_id_gets_404(self, world: World) -> None:
        assert explain(world, "ITA", "DEU", "not-a-uuid\x00").status_code == 404

    def test_unknown_member_is_422_even_for_a_hidden_report(self, world: World) -> None:
        created = hidden_from_nzl(world)
        for report_id in (created["id"], MISSING_ID):
            response = explain(world, "NZL", "NOR", report_id)
            assert response.status_code == 422
            assert response.json()["errors"][0]["loc"] == ["body", "member"]

    def test_unknown_field_or_wrong_type_is_422(self, world: World) -> None:
        for body in (
            {"member": "DEU", "report_id": MISSING_ID, "extra": 1},
            {"member": 7, "report_id": MISSING_ID},
            {"member": "DEU"},
        ):
            response = world.http.post(
                "/v1/policy/explain", json=body, headers=world.headers("ITA")
            )
            assert response.status_code == 422

    def test_token_without_policy_read_scope_is_forbidden(self, world: World) -> None:
        created = world.submit("ITA", releasable_to=["ALL"])
        response = world.http.post(
            "/v1/policy/explain",
            json={"member": "DEU", "report_id": created["id"]},
            headers=world.headers("ITA", scope="reports:read"),
        )
        assert response.status_code == 403

    def test_anonymous_caller_is_unauthorized(self, world: World) -> None:
        response = world.http.post(
            "/v1/policy/explain", json={"member": "DEU", "report_id": MISSING_ID}
        )
        assert response.status_code == 401

    def test_route_declares_its_errors(self, world: World) -> None:
        declared = world.app.openapi()["paths"]["/v1/policy/explain"]["post"]["responses"]
        assert {"401", "403", "404", "422"} <= declared.keys()
