"""Token verification outside HTTP: the verified-token cache and the active-client check."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, update

from app.auth.models import UsedAssertion
from app.auth.service import Principal, VerifiedTokens, confirm_active, verify_bearer
from app.db import transaction
from app.kit.jwt import TokenError
from app.members.service import revoke_client
from tests.conftest import World


class TestVerifiedTokens:
    def test_an_expired_entry_is_never_returned(self) -> None:
        cache = VerifiedTokens()
        cache.put("t", {"exp": time.time() - 1})
        assert cache.get("t") is None

    def test_a_live_entry_is_returned_for_the_exact_token_only(self) -> None:
        cache = VerifiedTokens()
        claims = {"exp": time.time() + 60, "sub": "ITA.test"}
        cache.put("abc", claims)
        assert cache.get("abc") == claims
        assert cache.get("abc ") is None
        assert cache.get("ABC") is None

    def test_the_cache_stays_bounded(self) -> None:
        cache = VerifiedTokens(max_entries=3)
        for i in range(10):
            cache.put(str(i), {"exp": time.time() + 60})
        assert sum(cache.get(str(i)) is not None for i in range(10)) <= 3

    def test_a_forged_token_is_not_accepted_because_a_real_one_is_cached(
        self, world: World
    ) -> None:
        cache = VerifiedTokens()
        token = world.token("DEU")
        args = {
            "issuer": world.issuer,
            "service_keys": world.state.verification_keys,
            "ttl": 900,
            "verified": cache,
        }
        assert verify_bearer(f"Bearer {token}", **args).member == "DEU"  # type: ignore[arg-type]
        forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
        with pytest.raises(TokenError):
            verify_bearer(f"Bearer {forged}", **args)  # type: ignore[arg-type]


class TestConfirmActive:
    def test_scopes_are_cut_to_what_the_client_holds_now(self, world: World) -> None:
        claimed = Principal(
            client_id="DEU.test", member="DEU", scopes=frozenset({"audit", "search"}), token_id="j"
        )
        with transaction(world.state.sessionmaker) as session:
            confirmed = confirm_active(session.connection(), claimed)
        assert confirmed.scopes == frozenset({"search"})

    def test_a_token_claiming_another_member_for_the_client_is_refused(self, world: World) -> None:
        claimed = Principal(client_id="DEU.test", member="FRA", scopes=frozenset(), token_id="j")
        with transaction(world.state.sessionmaker) as session, pytest.raises(TokenError):
            confirm_active(session.connection(), claimed)

    def test_a_revoked_client_is_refused(self, fresh_world: World) -> None:
        claimed = Principal(client_id="EU.test", member="EU", scopes=frozenset(), token_id="j")
        with transaction(fresh_world.state.sessionmaker) as session:
            revoke_client(session, "EU.test")
        with transaction(fresh_world.state.sessionmaker) as session, pytest.raises(TokenError):
            confirm_active(session.connection(), claimed)


class TestUsedAssertions:
    def test_expired_jtis_are_forgotten_when_the_client_next_gets_a_token(
        self, fresh_world: World
    ) -> None:
        world = fresh_world
        assert world.request_token("CAN").status_code == 200
        with transaction(world.state.sessionmaker) as session:
            session.execute(
                update(UsedAssertion)
                .where(UsedAssertion.client_id == "CAN.test")
                .values(expires_at=datetime.now(UTC) - timedelta(hours=1))
            )
        assert world.request_token("CAN").status_code == 200
        with transaction(world.state.sessionmaker) as session:
            left = session.scalars(
                select(UsedAssertion.expires_at).where(UsedAssertion.client_id == "CAN.test")
            ).all()
        assert len(left) == 1
        assert left[0] > datetime.now(UTC)
