"""Test worlds: a migrated database (SQLite or PostgreSQL), the real app, a client per member.

`make test` runs the suite with TEARLINE_TEST_BACKEND=sqlite, then with =postgres when
TEARLINE_TEST_DATABASE_URL is set. Asking for PostgreSQL without a reachable server fails loudly
instead of skipping, so CI can never pass without having run on it.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from app import bootstrap
from app.auth.client import make_assertion
from app.auth.scopes import scopes_for_member
from app.config import PROJECT_ROOT, Settings
from app.db import transaction
from app.kit.jwt import SigningKey
from app.main import create_app
from app.members.service import add_client
from app.state import AppState

BACKEND = os.environ.get("TEARLINE_TEST_BACKEND", "sqlite")
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def _postgres_admin_url() -> str:
    url = os.environ.get("TEARLINE_TEST_DATABASE_URL")
    if not url:
        pytest.fail("TEARLINE_TEST_BACKEND=postgres needs TEARLINE_TEST_DATABASE_URL")
    return url


def new_database_url(tmp_dir: Path) -> str:
    """A fresh, empty database of the configured backend."""
    if BACKEND == "sqlite":
        return f"sqlite:///{(tmp_dir / f'{uuid.uuid4().hex}.db').as_posix()}"
    if BACKEND != "postgres":
        pytest.fail(f"unknown TEARLINE_TEST_BACKEND {BACKEND!r}")
    admin = make_url(_postgres_admin_url())
    name = f"tearline_t_{uuid.uuid4().hex[:16]}"
    engine = create_engine(admin, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return admin.set(database=name).render_as_string(hide_password=False)


def drop_database(url: str) -> None:
    """Remove a database made by new_database_url (PostgreSQL only; SQLite files go with tmp)."""
    if not url.startswith("postgresql"):
        return
    target = make_url(url)
    admin = make_url(_postgres_admin_url())
    engine = create_engine(admin, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{target.database}" WITH (FORCE)'))
    engine.dispose()


@dataclass
class World:
    """A running app on its own database, with one registered client per member."""

    app: FastAPI
    http: TestClient
    state: AppState
    settings: Settings
    keys: dict[str, SigningKey] = field(default_factory=dict)
    _tokens: dict[tuple[str, str], str] = field(default_factory=dict)

    @property
    def issuer(self) -> str:
        return self.state.issuer

    def client_id(self, code: str) -> str:
        return f"{code}.test"

    def assertion(self, code: str, **overrides: Any) -> str:
        return make_assertion(self.client_id(code), self.keys[code], self.issuer, **overrides)

    def request_token(self, code: str, scope: str | None = None) -> Any:
        form = {
            "grant_type": "client_credentials",
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": self.assertion(code),
        }
        if scope is not None:
            form["scope"] = scope
        return self.http.post("/v1/auth/token", data=form)

    def token(self, code: str, scope: str | None = None) -> str:
        cache_key = (code, scope or "")
        if cache_key not in self._tokens:
            response = self.request_token(code, scope)
            assert response.status_code == 200, response.text
            self._tokens[cache_key] = response.json()["access_token"]
        return self._tokens[cache_key]

    def headers(self, code: str, scope: str | None = None, **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(code, scope)}", **extra}

    def submit(self, code: str, **fields: Any) -> dict[str, Any]:
        response = self.http.post(
            "/v1/reports", json=report_body(**fields), headers=self.headers(code)
        )
        assert response.status_code == 201, response.text
        body: dict[str, Any] = response.json()
        return body

    def get(self, code: str, report_id: str) -> Any:
        return self.http.get(f"/v1/reports/{report_id}", headers=self.headers(code))

    def close(self) -> None:
        self.http.__exit__(None, None, None)
        self.state.db.dispose()


def report_body(**overrides: Any) -> dict[str, Any]:
    """A valid report submission; keyword arguments replace fields."""
    body: dict[str, Any] = {
        "title": "Hawala network moving oil proceeds",
        "body": "Broker in Gaziantep settles with Mosul counterpart via gold shipments.",
        "summary": "A hawala network settles oil proceeds through gold.",
        "topics": ["MOV.HAW", "REV.OIL"],
        "classification": "CONFIDENTIAL",
        "releasable_to": ["ALL"],
        "entities": [
            {"type": "person", "value": "Abu Bakr al-Example"},
            {"type": "iban", "value": "IQ98NBIQ850123456789012", "label": "settlement"},
        ],
    }
    body.update(overrides)
    return body


def make_world(tmp_dir: Path, database_url: str | None = None, **settings_overrides: Any) -> World:
    """Build a world: migrations, app start-up, one client per roster member."""
    tmp_dir.mkdir(parents=True, exist_ok=True)
    url = database_url or new_database_url(tmp_dir)
    settings_overrides.setdefault("policy_dir", PROJECT_ROOT / "policies")
    # Tests that deliver webhooks drive a dispatcher themselves, step by step.
    settings_overrides.setdefault("webhook_dispatch_in_serve", False)
    # Likewise the audit tree and its checkpoints (see tests/audit/conftest.py: maintain).
    settings_overrides.setdefault("audit_tree_in_serve", False)
    # The suite makes many requests per client and minute; tests of the limits set their own.
    for family in ("read", "write", "export", "token", "token_address"):
        settings_overrides.setdefault(f"{family}_rate_per_minute", 1_000_000)
    settings = Settings(
        env="development",
        data_dir=tmp_dir / "data",
        database_url=url,
        issuer="http://tearline.test",
        **settings_overrides,
    )
    bootstrap.upgrade_database(url)
    state = bootstrap.build_state(settings)
    app = create_app(settings, state=state)
    http = TestClient(app, base_url="http://tearline.test")
    http.__enter__()
    world = World(app=app, http=http, state=state, settings=settings)
    with transaction(state.sessionmaker) as session:
        for code, member in state.policy.bundle.members.items():
            key = SigningKey.generate(f"{code.lower()}-test-1")
            add_client(
                session,
                state.policy.bundle,
                client_id=world.client_id(code),
                public_pem=key.public_pem(),
                kid=key.kid,
                scopes=list(scopes_for_member(member.is_chair)),
            )
            world.keys[code] = key
    return world


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """One world shared by the tests that only add their own reports."""
    tmp_dir = tmp_path_factory.mktemp("world")
    w = make_world(tmp_dir)
    yield w
    w.close()
    drop_database(w.settings.resolved_database_url)


@pytest.fixture
def fresh_world(tmp_path: Path) -> Iterator[World]:
    """A world of its own, for tests that count or list everything."""
    w = make_world(tmp_path)
    yield w
    w.close()
    drop_database(w.settings.resolved_database_url)


@pytest.fixture
def policies(tmp_path: Path) -> Path:
    """A copy of the shipped bundle that the test may change."""
    target = tmp_path / "policies"
    shutil.copytree(PROJECT_ROOT / "policies", target)
    return target


@pytest.fixture
def reloadable(tmp_path: Path, policies: Path) -> Iterator[World]:
    """A world serving the bundle in `policies`."""
    world = make_world(tmp_path / "world", policy_dir=policies)
    yield world
    world.close()
    drop_database(world.settings.resolved_database_url)
