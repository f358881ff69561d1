"""Service signing keys: published before they sign, kept for verification once retired."""

from __future__ import annotations

from datetime import timedelta

import pytest

from app.audit import checkpoints
from app.db import utcnow
from app.keys import signing
from app.keys.provider import LocalKeyring
from app.keys.signing import ServiceKeys
from app.kit import jwt
from tests.conftest import World


def _keyring(world: World) -> LocalKeyring:
    keyring = world.state.keys
    assert isinstance(keyring, LocalKeyring)
    return keyring


def _kid_of(token: str) -> str:
    header, _ = jwt.peek_unverified(token)
    return str(header["kid"])


def _published(world: World) -> list[str]:
    response = world.http.get("/.well-known/jwks.json")
    assert response.status_code == 200
    return [k["kid"] for k in response.json()["keys"]]


def _later(monkeypatch: pytest.MonkeyPatch) -> None:
    """As if the few seconds between two looks at the keyring file were over."""
    moment = signing._monotonic() + signing.RECHECK_SECONDS + 1
    monkeypatch.setattr(signing, "_monotonic", lambda: moment)


def _retire_current(world: World, monkeypatch: pytest.MonkeyPatch) -> str:
    """Activate a new signing key and retire the one in use; the processes have looked again.
    The new key's id."""
    keyring = _keyring(world)
    new = keyring.add_signing_key(utcnow() - timedelta(hours=1))
    keyring.retire_signing_key(world.state.signing_key.kid, utcnow())
    _later(monkeypatch)
    return new


class TestRotation:
    def test_a_new_key_is_published_before_it_signs(
        self, fresh_world: World, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        world = fresh_world
        old = world.state.signing_key.kid
        new = _keyring(world).add_signing_key(utcnow() + timedelta(hours=1))
        _later(monkeypatch)

        assert set(_published(world)) == {old, new}
        assert _kid_of(world.request_token("ITA").json()["access_token"]) == old
        # Once its time has come, it signs.
        assert world.state.service_keys.current(utcnow() + timedelta(hours=2)).kid == new

    def test_an_active_new_key_signs_tokens_and_the_old_one_still_verifies(
        self, fresh_world: World, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        world = fresh_world
        old_token = world.token("ITA")
        old = _kid_of(old_token)
        new = _keyring(world).add_signing_key(utcnow() - timedelta(seconds=1))
        _later(monkeypatch)

        fresh_token = world.request_token("USA").json()["access_token"]

        assert _kid_of(fresh_token) == new
        assert new != old
        assert _published(world)[0] == new
        for token in (old_token, fresh_token):
            response = world.http.get("/v1/reports", headers={"Authorization": f"Bearer {token}"})
            assert response.status_code == 200

    def test_another_process_verifies_a_kid_it_has_not_seen_yet_at_once(
        self, fresh_world: World
    ) -> None:
        world = fresh_world
        other = ServiceKeys(LocalKeyring.load(_keyring(world).path.parent, False))
        kid = _keyring(world).add_signing_key(utcnow())
        # No waiting for the next look at the file: an unknown kid makes it look now.
        found = other.resolve(kid)
        assert found is not None
        assert found.kid == kid
        assert other.resolve("no-such-kid") is None


class TestRetirement:
    def test_a_retired_key_stays_published_and_verifies_what_it_signed(
        self, fresh_world: World, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        world = fresh_world
        old = world.state.signing_key
        stamp = utcnow()
        signed = checkpoints.SignedCheckpoint(
            1, b"\x01" * 32, stamp, checkpoints.sign(old, 1, b"\x01" * 32, stamp)
        ).public()
        new = _retire_current(world, monkeypatch)
        keyring = _keyring(world)

        assert world.state.signing_key.kid == new
        assert old.kid in _published(world)
        assert [k for k, _ in keyring.service_signing_keys()] == [new]
        reloaded = LocalKeyring.load(keyring.path.parent, False)
        [retired] = [e for e in reloaded.signing_entries() if e.kid == old.kid]
        assert retired.private_pem is None
        assert retired.retired_at is not None
        parsed = checkpoints.parse(signed, world.state.verification_keys)
        assert parsed.tree_size == 1

    def test_the_only_signing_key_cannot_be_retired(self, fresh_world: World) -> None:
        keyring = _keyring(fresh_world)
        with pytest.raises(Exception, match="only signing key"):
            keyring.retire_signing_key(fresh_world.state.signing_key.kid, utcnow())


class TestRetiredKeys:
    def test_a_token_signed_with_a_retired_key_is_refused(
        self, fresh_world: World, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        world = fresh_world
        old = world.state.signing_key
        _retire_current(world, monkeypatch)
        # A stolen copy of the retired private key mints a token as the service would.
        now = int(utcnow().timestamp())
        claims = {
            "iss": world.issuer,
            "sub": world.client_id("ITA"),
            "client_id": world.client_id("ITA"),
            "member": "ITA",
            "aud": f"{world.issuer}/v1",
            "scope": "reports:read",
            "jti": "stolen",
            "iat": now,
            "exp": now + 300,
        }
        forged = jwt.sign(claims, old, typ="at+jwt")
        response = world.http.get("/v1/reports", headers={"Authorization": f"Bearer {forged}"})
        assert response.status_code == 401
        assert old.kid in _published(world)


class TestUnreadableKeyring:
    def test_a_keyring_broken_on_disk_leaves_the_keys_in_use(
        self, fresh_world: World, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        world = fresh_world
        token = world.token("ITA")
        path = _keyring(world).path
        path.write_text(path.read_text().replace("{", "[", 1))
        _later(monkeypatch)
        # Still verifies and signs with what it held; the next good file is read again.
        listed = world.http.get("/v1/reports", headers={"Authorization": f"Bearer {token}"})
        assert listed.status_code == 200
        assert world.request_token("USA").status_code == 200
