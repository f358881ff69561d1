"""Rate limits per client and route family: 429 with Retry-After, on record, families apart."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from app.audit.models import AuditEntry
from app.auth.client import make_assertion
from app.db import transaction
from app.kit.jwt import SigningKey
from tests.conftest import ASSERTION_TYPE, World, drop_database, make_world


@pytest.fixture
def limited(tmp_path: Path) -> Iterator[World]:
    """Two reads, two writes and one export per client and minute."""
    w = make_world(
        tmp_path, read_rate_per_minute=2, write_rate_per_minute=2, export_rate_per_minute=1
    )
    yield w
    w.close()
    drop_database(w.settings.resolved_database_url)


def _refusals(world: World, client: str) -> list[list[str]]:
    with transaction(world.state.sessionmaker) as session:
        rows = session.scalars(
            select(AuditEntry).where(AuditEntry.action == "rate.limit", AuditEntry.client == client)
        ).all()
        return [list(r.reasons) for r in rows]


class TestRouteFamilies:
    def test_reads_beyond_the_rate_get_429_with_retry_after_and_are_recorded(
        self, limited: World
    ) -> None:
        headers = limited.headers("DEU")
        statuses = [limited.http.get("/v1/reports", headers=headers).status_code for _ in range(3)]

        assert statuses == [200, 200, 429]
        refused = limited.http.get("/v1/reports", headers=headers)
        assert refused.headers["content-type"].startswith("application/problem+json")
        assert int(refused.headers["retry-after"]) >= 1
        assert _refusals(limited, "DEU.test") == [["family:read"], ["family:read"]]

    def test_each_client_has_its_own_bucket(self, limited: World) -> None:
        for _ in range(2):
            limited.http.get("/v1/reports", headers=limited.headers("DEU"))
        assert limited.http.get("/v1/reports", headers=limited.headers("FRA")).status_code == 200

    def test_writes_and_reads_are_counted_apart(self, limited: World) -> None:
        headers = limited.headers("FRA")
        for _ in range(2):
            assert limited.http.get("/v1/reports", headers=headers).status_code == 200
        assert limited.submit("FRA")["id"]
        limited.submit("FRA")
        body = limited.http.post("/v1/reports/preview", json={"title": "x"}, headers=headers)
        assert body.status_code == 429
        assert _refusals(limited, "FRA.test") == [["family:write"]]

    def test_audit_exports_have_their_own_smaller_rate(self, limited: World) -> None:
        headers = limited.headers("USA", scope="audit")
        first = limited.http.get("/v1/audit/export", headers=headers)
        second = limited.http.get("/v1/audit/export", headers=headers)

        assert (first.status_code, second.status_code) == (200, 429)
        assert limited.http.get("/v1/audit/entries", headers=headers).status_code == 200


@pytest.fixture
def token_limited(tmp_path: Path) -> Iterator[World]:
    """Two tokens per client and minute; five token requests per address and minute."""
    w = make_world(tmp_path, token_rate_per_minute=2, token_address_rate_per_minute=5)
    yield w
    w.close()
    drop_database(w.settings.resolved_database_url)


def _token_form(assertion: str) -> dict[str, str]:
    return {
        "grant_type": "client_credentials",
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": assertion,
    }


class TestTokenEndpoint:
    def test_tokens_beyond_the_clients_rate_get_429_slow_down_and_are_recorded(
        self, token_limited: World
    ) -> None:
        world = token_limited
        statuses = [world.request_token("DEU").status_code for _ in range(3)]
        assert statuses == [200, 200, 429]
        refused = world.request_token("DEU")
        assert refused.json()["error"] == "slow_down"
        assert int(refused.headers["retry-after"]) >= 1
        assert refused.headers["cache-control"] == "no-store"
        with transaction(world.state.sessionmaker) as session:
            reasons = session.scalars(
                select(AuditEntry.reasons).where(
                    AuditEntry.action == "auth.token",
                    AuditEntry.decision == "deny",
                    AuditEntry.client == "DEU.test",
                )
            ).all()
        assert [list(r) for r in reasons] == [["slow_down", "rate_limited"]] * 2
        # Another client is not affected.
        assert world.request_token("FRA").status_code == 200

    def test_assertions_a_stranger_forges_in_a_clients_name_do_not_spend_its_budget(
        self, token_limited: World
    ) -> None:
        world = token_limited
        stranger = SigningKey.generate(world.keys["ITA"].kid)
        forged = make_assertion(world.client_id("ITA"), stranger, world.issuer)
        for _ in range(3):
            assert world.http.post("/v1/auth/token", data=_token_form(forged)).status_code == 401
        assert world.request_token("ITA").status_code == 200

    def test_requests_beyond_the_addresss_rate_get_429_whoever_they_name(
        self, token_limited: World
    ) -> None:
        world = token_limited
        statuses = [
            world.request_token(code).status_code for code in ("DEU", "FRA", "ITA", "USA", "ESP")
        ]
        assert statuses == [200] * 5
        refused = world.request_token("NLD")
        assert refused.status_code == 429
        assert refused.json()["error"] == "slow_down"
        with transaction(world.state.sessionmaker) as session:
            reasons = session.scalars(
                select(AuditEntry.reasons).where(AuditEntry.action == "rate.limit")
            ).all()
        assert [list(r) for r in reasons] == [["family:token_address"]]
