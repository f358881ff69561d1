"""Fuzzing: schemathesis over the whole OpenAPI document, as several members (issue 7).

Every operation the app serves in `/openapi.json` gets cases schemathesis generates from the
document, valid ones and invalid ones, each sent with a valid bearer token of one of several
members: the chair USA (every scope, `audit` among them), the state DEU and the body FATF
(RESTRICTED clearance). So the requests get past authentication and reach validation and the
handlers; path parameters are often the ids of reports, access requests, webhooks and deliveries
those members made, so handlers also work on things that exist instead of answering 404. Each
response must be no server error, have a declared status code, content type and headers, and
conform to its declared schema (security.md, "Input and limits").

Bounded for `make test`: 50 examples per operation (some 20 s a backend on two cores),
derandomized, so every run sends the same requests. A heavier run, for bench-like use, sets the
examples per operation (500: some 3 min on SQLite, 5 on PostgreSQL):

    TEARLINE_FUZZ_EXAMPLES=500 .venv/bin/pytest -p no:xdist tests/test_fuzz.py

(with TEARLINE_TEST_BACKEND / TEARLINE_TEST_DATABASE_URL as for the rest of the suite).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import APIOperation, Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.specs.openapi.schemas import OpenApiSchema

from tests.conftest import World, drop_database, make_world, report_body

EXAMPLES = int(os.environ.get("TEARLINE_FUZZ_EXAMPLES", "50"))
MEMBERS = ("USA", "DEU", "FATF")
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    # Each example is a request through the whole app; a slow one is no sign of a bad strategy.
    suppress_health_check=[HealthCheck.too_slow],
)
# The token, not a generated Authorization header, is what every request carries: a missing or
# forged token only ever meets the one 401 (tests/auth/test_endpoints.py attacks that).
SCHEMATHESIS_CONFIG = schemathesis.Config.from_dict(
    {"generation": {"with-security-parameters": False}}
)
# Nothing can reach the port: the dispatcher is off in test worlds (tests never leave the machine).
WEBHOOK = {"url": "http://127.0.0.1:9/hook", "events": ["report.created"]}


class Tokens:
    """A token per member, fetched again a minute before it expires (a long run outlives one)."""

    def __init__(self, world: World) -> None:
        self._world = world
        self._held: dict[str, tuple[str, float]] = {}

    def headers(self, code: str) -> dict[str, str]:
        token, renew_at = self._held.get(code, ("", 0.0))
        if time.monotonic() >= renew_at:
            response = self._world.request_token(code)
            assert response.status_code == 200, response.text
            body = response.json()
            token = body["access_token"]
            self._held[code] = (token, time.monotonic() + body["expires_in"] - 60)
        return {"Authorization": f"Bearer {token}"}


def created(world: World, code: str, path: str, json: dict[str, Any] | None = None) -> Any:
    response = world.http.post(path, json=json, headers=world.headers(code))
    assert response.status_code in {201, 202}, response.text
    return response.json()


def seed(world: World) -> dict[str, list[str]]:
    """Things of each member's to aim path parameters at, by parameter name."""
    ids: dict[str, list[str]] = {
        "report_id": [],
        "request_id": [],
        "webhook_id": [],
        "delivery_id": [],
    }
    private: dict[str, str] = {}
    for code in MEMBERS:
        ids["report_id"].append(world.submit(code, classification="RESTRICTED")["id"])
        # Read in full by its originator only: the others see a tearline and may ask for more.
        private[code] = world.submit(code, releasable_to=[code])["id"]
        ids["report_id"].append(private[code])
        hook = created(world, code, "/v1/webhooks", WEBHOOK)
        ids["webhook_id"].append(hook["id"])
        ping = created(world, code, f"/v1/webhooks/{hook['id']}/ping")
        ids["delivery_id"].append(ping["delivery_id"])
    for code, other in zip(MEMBERS, MEMBERS[1:] + MEMBERS[:1], strict=True):
        path = f"/v1/reports/{private[other]}/access-requests"
        ids["request_id"].append(created(world, code, path, {"justification": "Same IBAN."})["id"])
    return ids


@pytest.fixture(scope="module")
def fuzz_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """A world of its own: the fuzzer creates reports, webhooks and requests by the hundred."""
    world = make_world(tmp_path_factory.mktemp("fuzz"))
    yield world
    # schemathesis serves the app through its own ASGI client, which started the app's lifespan
    # a second time over the same state (start-up is idempotent); end it before the database.
    asgi.shutdown_lifespans()
    world.close()
    drop_database(world.settings.resolved_database_url)


@pytest.fixture(scope="module")
def api(fuzz_world: World) -> OpenApiSchema:
    """The document as the app serves it."""
    return schemathesis.openapi.from_asgi(
        "/openapi.json", fuzz_world.app, config=SCHEMATHESIS_CONFIG
    )


@pytest.fixture(scope="module")
def ids(fuzz_world: World) -> dict[str, list[str]]:
    return seed(fuzz_world)


@pytest.fixture(scope="module")
def tokens(fuzz_world: World) -> Tokens:
    return Tokens(fuzz_world)


def operations_of(api: OpenApiSchema) -> list[APIOperation]:
    """Every operation of the document; a document with none, or one it cannot read, fails."""
    found, broken = [], []
    for result in api.get_all_operations():
        if isinstance(result, Ok):
            found.append(result.ok())
        else:
            broken.append(result.err())
    if broken:
        pytest.fail(f"operations schemathesis cannot read: {broken}")
    if not found:
        pytest.fail("the OpenAPI document has no operations: nothing would be fuzzed")
    # Deletions last, so the other operations still find the seeded things alive.
    return sorted(found, key=lambda operation: operation.method.upper() == "DELETE")


def accepted_bodies(ids: dict[str, list[str]]) -> dict[str, list[dict[str, Any]]]:
    """Bodies the service accepts, for operations whose generated bodies never can.

    The document cannot list the taxonomy's topic codes, the roster or a reachable URL, so a
    generated report, webhook or search is refused (422) before its handler has run; these let
    the success answers be checked against their schemas too.
    """
    return {
        "POST /v1/reports": [
            report_body(),
            report_body(
                classification="SECRET",
                releasable_to=["STATES"],
                tlp="RED",
                orcon=True,
                grading={"reliability": "B", "credibility": 2},
                summary=None,
            ),
        ],
        "POST /v1/reports/preview": [report_body()],
        "POST /v1/webhooks": [WEBHOOK],
        "POST /v1/search": [
            {"entities": [{"type": "iban", "value": "IQ98NBIQ850123456789012"}], "purpose": "42"}
        ],
        "POST /v1/policy/explain": [
            {"member": code, "report_id": report_id}
            for code in MEMBERS
            for report_id in ids["report_id"]
        ],
    }


def cases(operation: APIOperation, ids: dict[str, list[str]]) -> st.SearchStrategy[Case]:
    """Valid and invalid cases; where every path parameter can name a seeded thing, also those."""
    strategies = [operation.as_strategy(mode) for mode in GenerationMode]
    bodies = accepted_bodies(ids).get(operation.label)
    if bodies:
        strategies.append(
            st.sampled_from(bodies).flatmap(
                lambda body: operation.as_strategy(GenerationMode.POSITIVE, body=body)
            )
        )
    names = [parameter.name for parameter in operation.path_parameters]
    if names and all(name in ids for name in names):
        existing = st.fixed_dictionaries({name: st.sampled_from(ids[name]) for name in names})
        strategies += [
            existing.flatmap(
                lambda fixed, mode=mode: operation.as_strategy(mode, path_parameters=fixed)
            )
            for mode in GenerationMode
        ]
    return st.one_of(strategies)


def fuzz(operation: APIOperation, ids: dict[str, list[str]], tokens: Tokens) -> None:
    @FUZZ_SETTINGS
    @given(case=cases(operation, ids), member=st.sampled_from(MEMBERS))
    def run(case: Case, member: str) -> None:
        case.call_and_validate(headers=tokens.headers(member), checks=CHECKS)

    run()


class TestWholeDocument:
    def test_every_operation_answers_each_member_as_documented(
        self,
        api: OpenApiSchema,
        ids: dict[str, list[str]],
        tokens: Tokens,
        subtests: pytest.Subtests,
    ) -> None:
        for operation in operations_of(api):
            with subtests.test(operation=operation.label):
                fuzz(operation, ids, tokens)

    def test_a_document_without_operations_fails_rather_than_passes(self) -> None:
        empty = schemathesis.openapi.from_dict(
            {"openapi": "3.1.0", "info": {"title": "Tearline", "version": "0"}, "paths": {}},
            config=SCHEMATHESIS_CONFIG,
        )

        with pytest.raises(pytest.fail.Exception, match="no operations"):
            operations_of(empty)
