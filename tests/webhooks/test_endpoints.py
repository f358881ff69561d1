"""The subscription API: create (secret shown once, URL checked), read, delete, rotate the secret,
ping, deliveries and retries; every other member's subscription is the 404 of a missing one."""

from __future__ import annotations

import base64
import functools
import json
import socket
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from app import bootstrap
from app.audit.models import AuditEntry
from app.auth.scopes import scopes_for_member
from app.config import PROJECT_ROOT, Settings
from app.db import transaction, utcnow
from app.keys.provider import LocalKeyring
from app.kit import outbound
from app.kit.jwt import SigningKey
from app.main import create_app
from app.members.service import add_client
from app.webhooks.models import Subscription
from app.webhooks.subscriptions import MAX_PER_MEMBER
from tests.conftest import World, drop_database, make_world, new_database_url
from tests.search.test_access_requests import own_entities
from tests.webhooks.conftest import Receiver, dispatch, dispatch_until, subscribe

MISSING = "00000000-0000-4000-8000-000000000000"
SUBSCRIPTION_KEYS = {
    "id",
    "url",
    "events",
    "topics",
    "format",
    "status",
    "disabled_reason",
    "created_at",
    "updated_at",
    "previous_secret_expires_at",
}


def _b64url(value: int) -> str:
    raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@functools.cache
def _rsa_key(bits: int = 2048) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def rsa_jwk(bits: int = 2048, **extra: Any) -> dict[str, Any]:
    numbers = _rsa_key(bits).public_key().public_numbers()
    return {"kty": "RSA", "n": _b64url(numbers.n), "e": _b64url(numbers.e), **extra}


def private_rsa_jwk() -> dict[str, Any]:
    p = _rsa_key().private_numbers()
    return rsa_jwk(
        d=_b64url(p.d), p=_b64url(p.p), q=_b64url(p.q), dp=_b64url(p.dmp1), dq=_b64url(p.dmq1)
    ) | {"qi": _b64url(p.iqmp)}


def ec_jwk() -> dict[str, Any]:
    numbers = ec.generate_private_key(ec.SECP256R1()).public_key().public_numbers()
    return {"kty": "EC", "crv": "P-256", "x": _b64url(numbers.x), "y": _b64url(numbers.y)}


def create(world: World, code: str, **body: Any) -> Any:
    return world.http.post("/v1/webhooks", json=body, headers=world.headers(code))


def call(world: World, code: str, method: str, path: str, **kwargs: Any) -> Any:
    return world.http.request(method, path, headers=world.headers(code), **kwargs)


def deliveries(world: World, code: str, sub_id: str, **params: Any) -> Any:
    return world.http.get(
        f"/v1/webhooks/{sub_id}/deliveries", params=params, headers=world.headers(code)
    )


def subscription_count(world: World, code: str | None = None) -> int:
    query = select(func.count()).select_from(Subscription)
    if code is not None:
        query = query.where(Subscription.member_code == code)
    with world.state.engine.connect() as conn:
        return int(conn.scalar(query) or 0)


def stored_row(world: World, sub_id: str) -> dict[str, Any]:
    with world.state.engine.connect() as conn:
        row = conn.execute(select(Subscription.__table__).where(Subscription.id == sub_id)).one()
    return dict(row._mapping)


def as_bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    return json.dumps(value, default=str).encode()


def secret_forms(secret: str) -> list[bytes]:
    """The ways a `whsec_` secret could sit in a row: as given, its base64, its key bytes."""
    encoded = secret.removeprefix("whsec_")
    raw = base64.b64decode(encoded)
    return [
        secret.encode(),
        encoded.encode(),
        raw,
        raw.hex().encode(),
        base64.urlsafe_b64encode(raw).rstrip(b"="),
    ]


def verifies(secret: str, received: Any) -> bool:
    try:
        Webhook(secret).verify(received.body, received.headers)
    except WebhookVerificationError:
        return False
    return True


def audit_actions(world: World, code: str, target: str | None = None) -> list[tuple[str, str]]:
    query = select(AuditEntry.action, AuditEntry.decision).where(AuditEntry.actor == code)
    if target is not None:
        query = query.where(AuditEntry.target == target)
    with world.state.engine.connect() as conn:
        return [(a, d) for a, d in conn.execute(query.order_by(AuditEntry.id))]


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def keys_in(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for key, inner in value.items():
            yield key
            yield from keys_in(inner)
    elif isinstance(value, list):
        for inner in value:
            yield from keys_in(inner)


# -- worlds with other settings ---------------------------------------------------------------


@pytest.fixture(scope="module")
def module_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """A world for this module's tests that refuse input and so change nothing."""
    w = make_world(tmp_path_factory.mktemp("webhooks"))
    yield w
    w.close()
    drop_database(w.settings.resolved_database_url)


@pytest.fixture(scope="module")
def standing(module_world: World) -> dict[str, Any]:
    """A DEU subscription of the module's world, never dispatched to."""
    return subscribe(module_world, "DEU", "http://127.0.0.1:9/hook")


@pytest.fixture(scope="module")
def private_off_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """Development, but with loopback and private targets refused, as in production."""
    w = make_world(tmp_path_factory.mktemp("private-off"), webhook_allow_private=False)
    yield w
    w.close()
    drop_database(w.settings.resolved_database_url)


def make_production_world(tmp_dir: Path) -> World:
    """A production-mode app (its own keyring, no development keys) with a client for DEU."""
    url = new_database_url(tmp_dir)
    data_dir = tmp_dir / "data"
    LocalKeyring.create(data_dir, development=False)
    settings = Settings(
        env="production",
        data_dir=data_dir,
        database_url=url,
        issuer="http://tearline.test",
        policy_dir=PROJECT_ROOT / "policies",
        webhook_dispatch_in_serve=False,
        allow_sqlite_in_production=True,
    )
    bootstrap.upgrade_database(url)
    state = bootstrap.build_state(settings)
    app = create_app(settings, state=state)
    http = TestClient(app, base_url="http://tearline.test")
    http.__enter__()
    world = World(app=app, http=http, state=state, settings=settings)
    with transaction(state.sessionmaker) as session:
        key = SigningKey.generate("deu-test-1")
        add_client(
            session,
            state.policy.bundle,
            client_id=world.client_id("DEU"),
            public_pem=key.public_pem(),
            kid=key.kid,
            scopes=list(scopes_for_member(False)),
        )
        world.keys["DEU"] = key
    return world


@pytest.fixture(scope="module")
def production_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    w = make_production_world(tmp_path_factory.mktemp("production"))
    yield w
    w.close()
    drop_database(w.settings.resolved_database_url)


# -- create ----------------------------------------------------------------------------------


class TestCreate:
    def test_create_answers_201_with_the_secret_and_where_to_find_it(
        self, fresh_world: World, receiver: Receiver
    ) -> None:
        world = fresh_world

        response = create(
            world, "DEU", url=receiver.url(), events=["report.created", "match.found"]
        )

        assert response.status_code == 201, response.text
        body = response.json()
        assert set(body) == {*SUBSCRIPTION_KEYS, "secret"}
        assert response.headers["location"] == f"/v1/webhooks/{body['id']}"
        assert body["url"] == receiver.url()
        assert body["events"] == ["report.created", "match.found"]
        assert (body["format"], body["status"], body["topics"]) == ("thin", "active", None)
        assert body["secret"].startswith("whsec_")
        assert len(base64.b64decode(body["secret"].removeprefix("whsec_"))) >= 24
        assert call(world, "DEU", "GET", response.headers["location"]).status_code == 200

    def test_each_subscription_gets_a_secret_of_its_own(
        self, fresh_world: World, receiver: Receiver
    ) -> None:
        secrets = {subscribe(fresh_world, "DEU", receiver.url())["secret"] for _ in range(3)}

        assert len(secrets) == 3

    def test_topics_and_the_jwe_format_are_kept(
        self, fresh_world: World, receiver: Receiver
    ) -> None:
        world = fresh_world

        body = subscribe(
            world,
            "DEU",
            receiver.url(),
            topics=["MOV", "REV.OIL"],
            format="jwe",
            encryption_jwk=rsa_jwk(kid="deu-enc-1"),
        )

        shown = call(world, "DEU", "GET", f"/v1/webhooks/{body['id']}").json()
        assert (shown["format"], shown["topics"]) == ("jwe", ["MOV", "REV.OIL"])
        stored = stored_row(world, body["id"])["encryption_jwk"]
        assert stored == rsa_jwk(kid="deu-enc-1")

    def test_the_secret_is_never_shown_again(self, fresh_world: World, receiver: Receiver) -> None:
        world = fresh_world
        created = subscribe(world, "DEU", receiver.url())
        secret = created["secret"]

        responses = [
            call(world, "DEU", "GET", "/v1/webhooks"),
            call(world, "DEU", "GET", f"/v1/webhooks/{created['id']}"),
            deliveries(world, "DEU", created["id"]),
        ]

        for response in responses:
            assert response.status_code == 200, response.text
            assert "secret" not in set(keys_in(response.json()))
            assert secret not in response.text
            assert secret.removeprefix("whsec_") not in response.text
        assert set(responses[1].json()) == SUBSCRIPTION_KEYS

    def test_the_stored_row_holds_no_plaintext_secret(
        self, fresh_world: World, receiver: Receiver
    ) -> None:
        world = fresh_world
        created = subscribe(world, "DEU", receiver.url())
        rotated = call(world, "DEU", "POST", f"/v1/webhooks/{created['id']}/rotate-secret")
        assert rotated.status_code == 200, rotated.text

        row = stored_row(world, created["id"])

        assert row["secret_ct"] is not None
        assert row["previous_ct"] is not None
        for secret in (created["secret"], rotated.json()["secret"]):
            for form in secret_forms(secret):
                for column, value in row.items():
                    assert form not in as_bytes(value), column

    def test_loopback_is_accepted_in_development(
        self, fresh_world: World, receiver: Receiver
    ) -> None:
        assert fresh_world.settings.allow_private_webhooks

        for url in (receiver.url(), f"http://localhost:{receiver.port}/hook"):
            assert create(fresh_world, "DEU", url=url, events=["report.created"]).status_code == 201

    def test_a_member_may_hold_25_subscriptions_and_the_26th_is_409(
        self, fresh_world: World, receiver: Receiver
    ) -> None:
        world = fresh_world
        for _ in range(MAX_PER_MEMBER):
            subscribe(world, "DEU", receiver.url())

        response = create(world, "DEU", url=receiver.url(), events=["report.created"])

        assert MAX_PER_MEMBER == 25
        assert response.status_code == 409, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        assert subscription_count(world, "DEU") == 25
        assert ("webhook.create", "deny") in audit_actions(world, "DEU", "webhook")
        # The bound is per member: another member still subscribes.
        assert create(world, "FRA", url=receiver.url(), events=["match.found"]).status_code == 201


GOOD = {"url": "http://127.0.0.1:9/hook", "events": ["report.created"]}
# Each: the field the problem names, and the body.
INVALID: dict[str, tuple[str, dict[str, Any]]] = {
    "unknown event type": ("events", {**GOOD, "events": ["report.deleted"]}),
    "no events": ("events", {**GOOD, "events": []}),
    "events not a list": ("events", {**GOOD, "events": "report.created"}),
    "an event named twice": ("events", {**GOOD, "events": ["report.created", "report.created"]}),
    "unknown topic": ("topics", {**GOOD, "topics": ["NOPE.NOPE"]}),
    "empty topic list": ("topics", {**GOOD, "topics": []}),
    "unknown format": ("format", {**GOOD, "format": "xml"}),
    "jwe without encryption_jwk": ("encryption_jwk", {**GOOD, "format": "jwe"}),
    "thin with encryption_jwk": (
        "encryption_jwk",
        {**GOOD, "format": "thin", "encryption_jwk": {"kty": "RSA"}},
    ),
    "an EC key": ("encryption_jwk", {**GOOD, "format": "jwe", "encryption_jwk": "ec"}),
    "a private RSA key": ("encryption_jwk", {**GOOD, "format": "jwe", "encryption_jwk": "private"}),
    "an RSA key of 1024 bits": (
        "encryption_jwk",
        {**GOOD, "format": "jwe", "encryption_jwk": "small"},
    ),
    "a key for another algorithm": (
        "encryption_jwk",
        {**GOOD, "format": "jwe", "encryption_jwk": "rsa1_5"},
    ),
    "a key for signing": ("encryption_jwk", {**GOOD, "format": "jwe", "encryption_jwk": "sig"}),
    "unknown field": ("member", {**GOOD, "member": "USA"}),
    "a secret of one's own": ("secret", {**GOOD, "secret": "whsec_" + "A" * 44}),
    "url too long": ("url", {**GOOD, "url": "http://127.0.0.1/" + "a" * 2048}),
    "empty url": ("url", {**GOOD, "url": ""}),
    "ftp scheme": ("url", {**GOOD, "url": "ftp://127.0.0.1/hook"}),
    "file scheme": ("url", {**GOOD, "url": "file:///etc/passwd"}),
    "javascript scheme": ("url", {**GOOD, "url": "javascript:alert(1)"}),
    "user and password": ("url", {**GOOD, "url": "http://user:pass@127.0.0.1/hook"}),
    "user only": ("url", {**GOOD, "url": "http://user@127.0.0.1/hook"}),
    "a backslash": ("url", {**GOOD, "url": "http://127.0.0.1\\@example.com/hook"}),
    "a space": ("url", {**GOOD, "url": "http://127.0.0.1/ho ok"}),
    "a fragment": ("url", {**GOOD, "url": "http://127.0.0.1/hook#x"}),
    "no host": ("url", {**GOOD, "url": "http:///hook"}),
    "a port out of range": ("url", {**GOOD, "url": "http://127.0.0.1:70000/hook"}),
}
JWKS: dict[str, Callable[[], dict[str, Any]]] = {
    "ec": ec_jwk,
    "private": private_rsa_jwk,
    "small": lambda: rsa_jwk(1024),
    "rsa1_5": lambda: rsa_jwk(alg="RSA1_5"),
    "sig": lambda: rsa_jwk(use="sig"),
}


class TestValidation:
    @pytest.mark.parametrize("case", sorted(INVALID))
    def test_an_invalid_subscription_is_a_422_problem_and_writes_nothing(
        self, world: World, case: str
    ) -> None:
        field, body = INVALID[case][0], dict(INVALID[case][1])
        if isinstance(body.get("encryption_jwk"), str):
            body["encryption_jwk"] = JWKS[body["encryption_jwk"]]()
        before = subscription_count(world)

        response = create(world, "JPN", **body)

        assert response.status_code == 422, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        problem = response.json()
        assert problem["status"] == 422
        assert problem["errors"][0]["loc"][:2] == ["body", field]
        assert "secret" not in problem
        assert subscription_count(world) == before

    def test_the_valid_body_they_are_made_from_is_accepted(self, module_world: World) -> None:
        assert create(module_world, "JPN", **GOOD).status_code == 201


# Each resolves (without DNS) to loopback, private, link-local, unspecified or mapped space.
NOT_PUBLIC = [
    "http://127.0.0.1/",
    "http://127.1/",
    "http://0x7f.1/",
    "http://0x7f000001/",
    "http://2130706433/",
    "http://017700000001/",
    "http://127.000.000.001/",
    "http://0.0.0.0/",
    "http://0/",
    "http://localhost:8080/",
    "http://LOCALHOST./hook",
    "http://[::1]/",
    "http://[::]/",
    "http://[0:0:0:0:0:0:0:1]/",
    "http://[::ffff:127.0.0.1]/",
    "http://[::ffff:7f00:1]/",
    "http://[::ffff:10.0.0.1]/",
    "http://[::127.0.0.1]/",
    "http://[64:ff9b::7f00:1]/",
    "http://[64:ff9b::a9fe:a9fe]/",
    "http://[2002:7f00:1::]/",
    "http://[fd00::1]/",
    "http://[fe80::1]/",
    "http://169.254.169.254/latest/meta-data/",
    "http://10.1.2.3/",
    "http://172.16.5.4/",
    "http://192.168.0.1/",
    "http://100.64.0.1/",
    "http://0xa9.0xfe.0xa9.0xfe/",
    "http://224.0.0.1/",
    "http://255.255.255.255/",
]


class TestTargets:
    @pytest.mark.parametrize("url", NOT_PUBLIC)
    def test_a_url_resolving_to_a_non_public_address_is_refused(
        self, private_off_world: World, url: str
    ) -> None:
        world = private_off_world
        before = subscription_count(world)

        response = create(world, "DEU", url=url, events=["report.created"])

        assert response.status_code == 422, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.json()["errors"][0]["loc"] == ["body", "url"]
        assert subscription_count(world) == before

    def test_a_refused_url_is_audited_as_a_denial(self, private_off_world: World) -> None:
        world = private_off_world
        before = audit_actions(world, "FRA", "webhook")

        create(world, "FRA", url="http://10.0.0.1/", events=["report.created"])

        assert audit_actions(world, "FRA", "webhook")[len(before) :] == [("webhook.create", "deny")]

    def test_a_public_address_is_accepted_when_private_ones_are_not(
        self, private_off_world: World
    ) -> None:
        response = create(
            private_off_world, "USA", url="http://8.8.8.8/hook", events=["report.created"]
        )

        assert response.status_code == 201, response.text

    def test_production_requires_https_and_refuses_private_targets(self, tmp_path: Path) -> None:
        settings = Settings(
            env="production",
            data_dir=tmp_path,
            database_url="postgresql+psycopg://tearline@db.invalid/tearline",
            issuer="https://tearline.example",
        )

        assert settings.require_https_webhooks
        assert not settings.allow_private_webhooks
        with pytest.raises(outbound.UnsafeTarget, match="https"):
            outbound.check_url("http://8.8.8.8/", require_https=settings.require_https_webhooks)
        with pytest.raises(outbound.UnsafeTarget, match="public"):
            outbound.check_url("https://127.0.0.1/", require_https=settings.require_https_webhooks)

    @pytest.mark.parametrize(
        ("url", "status"),
        [
            ("http://8.8.8.8/hook", 422),
            ("https://8.8.8.8/hook", 201),
            ("https://127.0.0.1/hook", 422),
            ("https://[::ffff:169.254.169.254]/", 422),
            ("https://localhost/hook", 422),
            ("http://127.0.0.1/hook", 422),
        ],
    )
    def test_a_production_service_takes_https_to_public_addresses_only(
        self, production_world: World, url: str, status: int
    ) -> None:
        assert not production_world.settings.is_development

        response = create(production_world, "DEU", url=url, events=["report.created"])

        assert response.status_code == status, response.text


# -- other members ---------------------------------------------------------------------------

ROUTES = [
    ("GET", "/v1/webhooks/{id}"),
    ("DELETE", "/v1/webhooks/{id}"),
    ("POST", "/v1/webhooks/{id}/rotate-secret"),
    ("POST", "/v1/webhooks/{id}/ping"),
    ("GET", "/v1/webhooks/{id}/deliveries"),
    ("POST", "/v1/webhooks/{id}/deliveries/{delivery}/retry"),
]


@pytest.fixture
def owned(fresh_world: World, receiver: Receiver) -> dict[str, Any]:
    """A DEU subscription with one finished delivery (a ping that succeeded)."""
    created = subscribe(fresh_world, "DEU", receiver.url())
    ping = call(fresh_world, "DEU", "POST", f"/v1/webhooks/{created['id']}/ping")
    dispatch(fresh_world)
    return {**created, "delivery": ping.json()["delivery_id"]}


def comparable(response: Any) -> tuple[int, str, dict[str, str]]:
    headers = {k: v for k, v in response.headers.items() if k != "x-request-id"}
    return response.status_code, response.text, headers


class TestOtherMembers:
    @pytest.mark.parametrize(("method", "path"), ROUTES)
    def test_another_members_subscription_is_the_404_of_a_missing_one(
        self, fresh_world: World, owned: dict[str, Any], method: str, path: str
    ) -> None:
        world = fresh_world
        before = stored_row(world, owned["id"])

        theirs = call(world, "FRA", method, path.format(id=owned["id"], delivery=owned["delivery"]))
        missing = call(world, "FRA", method, path.format(id=MISSING, delivery=owned["delivery"]))

        assert theirs.status_code == 404
        assert comparable(theirs) == comparable(missing)
        assert stored_row(world, owned["id"]) == before
        listed = deliveries(world, "DEU", owned["id"]).json()["items"]
        assert [(d["id"], d["status"]) for d in listed] == [(owned["delivery"], "succeeded")]

    def test_a_missing_delivery_of_ones_own_subscription_is_404(
        self, fresh_world: World, owned: dict[str, Any]
    ) -> None:
        response = call(
            fresh_world, "DEU", "POST", f"/v1/webhooks/{owned['id']}/deliveries/{MISSING}/retry"
        )

        assert response.status_code == 404

    def test_a_delivery_of_another_subscription_cannot_be_retried_through_ones_own(
        self, fresh_world: World, owned: dict[str, Any], receiver: Receiver
    ) -> None:
        world = fresh_world
        mine = subscribe(world, "FRA", receiver.url())

        response = call(
            world, "FRA", "POST", f"/v1/webhooks/{mine['id']}/deliveries/{owned['delivery']}/retry"
        )

        assert response.status_code == 404

    def test_the_list_shows_only_the_members_own_subscriptions(
        self, fresh_world: World, receiver: Receiver
    ) -> None:
        world = fresh_world
        mine = {subscribe(world, "DEU", receiver.url())["id"] for _ in range(2)}
        theirs = subscribe(world, "FRA", receiver.url())["id"]

        deu = call(world, "DEU", "GET", "/v1/webhooks").json()["items"]
        fra = call(world, "FRA", "GET", "/v1/webhooks").json()["items"]
        nzl = call(world, "NZL", "GET", "/v1/webhooks").json()["items"]

        assert {s["id"] for s in deu} == mine
        assert [s["id"] for s in fra] == [theirs]
        assert nzl == []
        assert all(set(s) == SUBSCRIPTION_KEYS for s in deu)

    def test_reading_another_members_subscription_is_audited_as_a_denial(
        self, fresh_world: World, owned: dict[str, Any]
    ) -> None:
        world = fresh_world
        target = f"webhook:{owned['id']}"

        call(world, "FRA", "GET", f"/v1/webhooks/{owned['id']}")
        deliveries(world, "FRA", owned["id"])

        assert audit_actions(world, "FRA", target) == [
            ("webhook.read", "deny"),
            ("webhook.deliveries", "deny"),
        ]

    def test_changing_another_members_subscription_is_audited_as_a_denial(
        self, fresh_world: World, owned: dict[str, Any]
    ) -> None:
        world = fresh_world
        for method, path in ROUTES:
            if method != "GET":
                call(world, "FRA", method, path.format(id=owned["id"], delivery=owned["delivery"]))

        assert audit_actions(world, "FRA", f"webhook:{owned['id']}") == [
            ("webhook.delete", "deny"),
            ("webhook.rotate_secret", "deny"),
            ("webhook.ping", "deny"),
            ("webhook.retry", "deny"),
        ]


# -- delete, rotate, ping --------------------------------------------------------------------


class TestDelete:
    def test_a_deleted_subscription_is_gone_with_its_deliveries(
        self, fresh_world: World, owned: dict[str, Any]
    ) -> None:
        world = fresh_world
        path = f"/v1/webhooks/{owned['id']}"

        response = call(world, "DEU", "DELETE", path)

        assert response.status_code == 204
        assert response.content == b""
        assert call(world, "DEU", "GET", path).status_code == 404
        assert call(world, "DEU", "DELETE", path).status_code == 404
        assert subscription_count(world, "DEU") == 0


class TestRotate:
    def test_rotation_gives_a_new_secret_and_keeps_the_old_for_the_default_overlap(
        self, fresh_world: World, receiver: Receiver
    ) -> None:
        world = fresh_world
        created = subscribe(world, "DEU", receiver.url())
        started = utcnow()

        response = call(world, "DEU", "POST", f"/v1/webhooks/{created['id']}/rotate-secret")

        assert response.status_code == 200, response.text
        body = response.json()
        assert set(body) == {"id", "secret", "previous_secret_expires_at"}
        assert body["id"] == created["id"]
        assert body["secret"].startswith("whsec_")
        assert body["secret"] != created["secret"]
        until = datetime.fromisoformat(body["previous_secret_expires_at"])
        overlap = (until - started).total_seconds()
        assert abs(overlap - world.settings.webhook_secret_overlap_seconds) < 30
        shown = call(world, "DEU", "GET", f"/v1/webhooks/{created['id']}").json()
        assert shown["previous_secret_expires_at"] == body["previous_secret_expires_at"]

    def test_an_overlap_of_0_ends_the_old_secret_at_once(
        self, fresh_world: World, receiver: Receiver
    ) -> None:
        world = fresh_world
        created = subscribe(world, "DEU", receiver.url())

        response = call(
            world,
            "DEU",
            "POST",
            f"/v1/webhooks/{created['id']}/rotate-secret",
            json={"overlap_seconds": 0},
        )

        assert response.status_code == 200, response.text
        assert response.json()["previous_secret_expires_at"] is None
        shown = call(world, "DEU", "GET", f"/v1/webhooks/{created['id']}").json()
        assert shown["previous_secret_expires_at"] is None

    @pytest.mark.parametrize("overlap", [-1, 7 * 86400 + 1, "60", 1.5])
    def test_an_invalid_overlap_is_a_422(
        self, module_world: World, standing: dict[str, Any], overlap: Any
    ) -> None:
        world, created = module_world, standing

        response = call(
            world,
            "DEU",
            "POST",
            f"/v1/webhooks/{created['id']}/rotate-secret",
            json={"overlap_seconds": overlap},
        )

        assert response.status_code == 422, response.text
        assert stored_row(world, created["id"])["secret_serial"] == 1

    def test_during_the_overlap_both_secrets_sign_and_after_it_only_the_new_one(
        self, fresh_world: World, receiver: Receiver
    ) -> None:
        world = fresh_world
        path = "/rotating"
        created = subscribe(world, "DEU", receiver.url(path))
        base = f"/v1/webhooks/{created['id']}"
        second = call(world, "DEU", "POST", f"{base}/rotate-secret").json()["secret"]
        call(world, "DEU", "POST", f"{base}/ping")
        dispatch(world)
        third = call(
            world, "DEU", "POST", f"{base}/rotate-secret", json={"overlap_seconds": 0}
        ).json()["secret"]
        call(world, "DEU", "POST", f"{base}/ping")
        dispatch(world)

        during, after = receiver.at(path)
        assert verifies(second, during)
        assert verifies(created["secret"], during)
        assert verifies(third, after)
        assert not verifies(second, after)
        assert not verifies(created["secret"], after)


class TestPing:
    def test_a_ping_is_queued_and_arrives_signed_as_webhook_ping(
        self, fresh_world: World, receiver: Receiver
    ) -> None:
        world = fresh_world
        created = subscribe(world, "DEU", receiver.url("/ping"))

        response = call(world, "DEU", "POST", f"/v1/webhooks/{created['id']}/ping")

        assert response.status_code == 202, response.text
        queued = response.json()
        assert queued["status"] == "pending"
        dispatch(world)
        (received,) = receiver.at("/ping")
        payload = Webhook(created["secret"]).verify(received.body, received.headers)
        assert payload["type"] == "webhook.ping"
        assert payload["data"] == {"webhook_id": created["id"]}
        assert set(payload) == {"id", "type", "timestamp", "data"}
        assert received.headers["webhook-id"] == queued["delivery_id"]
        assert not verifies(subscribe(world, "DEU", receiver.url())["secret"], received)

    def test_a_subscription_disabled_by_its_receiver_cannot_be_pinged_or_retried(
        self, fresh_world: World, receiver: Receiver
    ) -> None:
        world = fresh_world
        created = subscribe(world, "DEU", receiver.url("/gone"))
        base = f"/v1/webhooks/{created['id']}"
        receiver.answer("/gone", (410, {}, b""))
        delivery_id = call(world, "DEU", "POST", f"{base}/ping").json()["delivery_id"]
        dispatch(world)

        shown = call(world, "DEU", "GET", base).json()
        ping = call(world, "DEU", "POST", f"{base}/ping")
        retry = call(world, "DEU", "POST", f"{base}/deliveries/{delivery_id}/retry")

        assert (shown["status"], shown["disabled_reason"]) == ("disabled", "gone")
        assert ping.status_code == 409
        assert retry.status_code == 409
        assert len(receiver.at("/gone")) == 1


# -- deliveries ------------------------------------------------------------------------------


class TestDeliveries:
    def test_the_log_shows_each_attempt_but_never_what_the_receiver_answered(
        self, quick_world: World, receiver: Receiver
    ) -> None:
        world = quick_world
        flaky = subscribe(world, "DEU", receiver.url("/flaky"))
        dead = subscribe(world, "DEU", f"http://127.0.0.1:{closed_port()}/hook")
        receiver.answer("/flaky", (500, {"X-Debug": "INTERNAL-HEADER"}, b"INTERNAL-DETAILS-42"))
        report = world.submit("FRA", entities=own_entities())

        def settled() -> bool:
            statuses = [
                item["status"]
                for sub in (flaky, dead)
                for item in deliveries(world, "DEU", sub["id"]).json()["items"]
            ]
            return statuses == ["succeeded", "failed"]

        dispatch_until(world, settled)

        response = deliveries(world, "DEU", flaky["id"])
        assert response.status_code == 200, response.text
        (item,) = response.json()["items"]
        assert item["event_type"] == "report.created"
        assert (item["status"], item["attempts"], item["last_status"]) == ("succeeded", 2, 200)
        assert [(a["number"], a["status_code"], a["error"]) for a in item["attempt_log"]] == [
            (1, 500, None),
            (2, 200, None),
        ]
        assert all(a["duration_ms"] >= 0 for a in item["attempt_log"])
        (sent, _) = receiver.at("/flaky")
        assert item["event_id"] == sent.headers["webhook-id"] == sent.json["id"]
        assert sent.json["data"]["report_id"] == report["id"]

        failed = deliveries(world, "DEU", dead["id"]).json()["items"][0]
        assert failed["status"] == "failed"
        assert failed["attempts"] == len(world.settings.webhook_retry_schedule) + 1
        assert {a["error"] for a in failed["attempt_log"]} == {"connection refused"}
        assert {a["status_code"] for a in failed["attempt_log"]} == {None}

        for sub in (flaky, dead):
            text = deliveries(world, "DEU", sub["id"]).text
            assert "INTERNAL" not in text
            keys = set(keys_in(deliveries(world, "DEU", sub["id"]).json()))
            assert not {k for k in keys if "body" in k or "response" in k or "excerpt" in k}

    def test_pages_follow_the_cursor_newest_first_without_repeats(
        self, fresh_world: World, receiver: Receiver
    ) -> None:
        world = fresh_world
        created = subscribe(world, "DEU", receiver.url())
        pings = [
            call(world, "DEU", "POST", f"/v1/webhooks/{created['id']}/ping").json()["delivery_id"]
            for _ in range(5)
        ]
        listed: list[str] = []
        cursor: str | None = None
        pages = 0

        while True:
            params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
            body = deliveries(world, "DEU", created["id"], **params).json()
            listed += [d["id"] for d in body["items"]]
            pages += 1
            cursor = body["next_cursor"]
            if cursor is None:
                break

        assert pages == 3
        assert listed == pings[::-1]

    @pytest.mark.parametrize("cursor", ["nope", "1.AAAA", "x" * 513])
    def test_a_bad_cursor_is_a_422(
        self, module_world: World, standing: dict[str, Any], cursor: str
    ) -> None:
        response = deliveries(module_world, "DEU", standing["id"], cursor=cursor)

        assert response.status_code == 422, response.text
        assert response.headers["content-type"].startswith("application/problem+json")

    def test_the_status_filter_narrows_the_list(
        self, fresh_world: World, receiver: Receiver
    ) -> None:
        world = fresh_world
        created = subscribe(world, "DEU", receiver.url())
        base = f"/v1/webhooks/{created['id']}"
        done = call(world, "DEU", "POST", f"{base}/ping").json()["delivery_id"]
        dispatch(world)
        waiting = call(world, "DEU", "POST", f"{base}/ping").json()["delivery_id"]

        def ids(**params: Any) -> list[str]:
            response = deliveries(world, "DEU", created["id"], **params)
            assert response.status_code == 200, response.text
            return [d["id"] for d in response.json()["items"]]

        assert ids(status="succeeded") == [done]
        assert ids(status="pending") == [waiting]
        assert ids(status="failed") == []
        assert ids() == [waiting, done]
        for bad in ("withheld", "bogus"):
            assert deliveries(world, "DEU", created["id"], status=bad).status_code == 422

    @pytest.mark.parametrize("limit", [0, 101, -1])
    def test_a_limit_out_of_bounds_is_a_422(
        self, module_world: World, standing: dict[str, Any], limit: int
    ) -> None:
        assert deliveries(module_world, "DEU", standing["id"], limit=limit).status_code == 422


class TestRetry:
    def test_a_finished_delivery_is_sent_again_with_the_same_webhook_id(
        self, fresh_world: World, owned: dict[str, Any], receiver: Receiver
    ) -> None:
        world = fresh_world
        path = f"/v1/webhooks/{owned['id']}/deliveries/{owned['delivery']}/retry"

        response = call(world, "DEU", "POST", path)

        assert response.status_code == 202, response.text
        assert response.json() == {"delivery_id": owned["delivery"], "status": "pending"}
        again = call(world, "DEU", "POST", path)
        assert again.status_code == 409
        dispatch(world)
        first, second = receiver.at("/hook")
        assert first.headers["webhook-id"] == second.headers["webhook-id"] == owned["delivery"]
        assert verifies(owned["secret"], second)


# -- audit -----------------------------------------------------------------------------------


class TestAudit:
    def test_every_action_leaves_an_audit_entry(
        self, fresh_world: World, receiver: Receiver
    ) -> None:
        world = fresh_world
        created = subscribe(world, "DEU", receiver.url())
        base = f"/v1/webhooks/{created['id']}"
        call(world, "DEU", "GET", "/v1/webhooks")
        call(world, "DEU", "GET", base)
        call(world, "DEU", "POST", f"{base}/rotate-secret")
        delivery_id = call(world, "DEU", "POST", f"{base}/ping").json()["delivery_id"]
        dispatch(world)
        call(world, "DEU", "GET", f"{base}/deliveries")
        assert call(world, "DEU", "POST", f"{base}/deliveries/{delivery_id}/retry").is_success
        assert call(world, "DEU", "DELETE", base).status_code == 204
        assert call(world, "DEU", "GET", "/v1/sync").status_code == 200

        actions = audit_actions(world, "DEU")

        expected = [
            "webhook.create",
            "webhook.list",
            "webhook.read",
            "webhook.rotate_secret",
            "webhook.ping",
            "webhook.deliveries",
            "webhook.retry",
            "webhook.delete",
            "sync.read",
        ]
        mine = [(a, d) for a, d in actions if a in expected]
        assert mine == [(action, "allow") for action in expected]
        assert ("webhook.deliver", "allow") in actions
