"""Bad input of any kind gets a 4xx problem document, echoes nothing, and writes nothing."""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from app.db import transaction
from app.errors import database_unavailable
from tests.conftest import World, report_body

PROBLEM = "application/problem+json"
WRITTEN_TABLES = ("reports", "report_versions", "report_access", "report_topics")
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def http(world: World) -> Iterator[TestClient]:
    """A client that shows a server error as a 500 response instead of raising it."""
    with TestClient(
        world.app, base_url="http://tearline.test", raise_server_exceptions=False
    ) as client:
        yield client


def row_counts(world: World) -> dict[str, int]:
    with transaction(world.state.sessionmaker) as session:
        return {
            t: int(session.scalar(text(f"SELECT count(*) FROM {t}")) or 0)  # noqa: S608 - constant
            for t in WRITTEN_TABLES
        }


def assert_problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    problem: dict[str, Any] = response.json()
    assert problem["status"] == status
    assert isinstance(problem["type"], str)
    assert isinstance(problem["title"], str)
    return problem


def with_entity(**fields: Any) -> list[dict[str, Any]]:
    return [{"type": "person", "value": "Someone", **fields}]


# Each case is a report body that must be refused with 422 before anything is stored.
INVALID_BODIES: dict[str, dict[str, Any]] = {
    # wrong types: the models are strict, nothing is coerced
    "orcon-as-string": report_body(orcon="true"),
    "orcon-as-number": report_body(orcon=1),
    "credibility-as-string": report_body(grading={"reliability": "A", "credibility": "3"}),
    "credibility-as-float": report_body(grading={"reliability": "A", "credibility": 3.0}),
    "title-as-number": report_body(title=5),
    "topics-as-string": report_body(topics="MOV.HAW"),
    "releasable-to-as-string": report_body(releasable_to="ALL"),
    "entities-as-object": report_body(entities={"type": "person", "value": "x"}),
    "grading-as-list": report_body(grading=["A", 1]),
    "classification-as-number": report_body(classification=2),
    # unknown fields, at the top and nested
    "unknown-top-level-field": report_body(originator="USA"),
    "unknown-status-field": report_body(status="revoked"),
    "unknown-grading-field": report_body(
        grading={"reliability": "A", "credibility": 1, "source": "x"}
    ),
    "unknown-entity-field": report_body(entities=with_entity(confidence=1)),
    # codes the policy bundle does not know
    "unknown-topic": report_body(topics=["REV.NOPE"]),
    "branch-as-topic": report_body(topics=["REV"]),
    "unknown-member-releasable": report_body(releasable_to=["XXX"]),
    "unknown-member-tearline": report_body(tearline_to=["ALL", "XXX"]),
    "lower-case-group": report_body(releasable_to=["all"]),
    # list sizes
    "zero-topics": report_body(topics=[]),
    "eleven-topics": report_body(
        topics=[
            "REV.OIL",
            "REV.NAT",
            "REV.AGR",
            "REV.ANT",
            "REV.EXT",
            "REV.BANK",
            "REV.CONF",
            "REV.KFR",
            "REV.DON",
            "REV.ONL",
            "REV.FTF",
        ]
    ),
    "duplicate-topics": report_body(topics=["REV.OIL", "REV.OIL"]),
    "empty-releasable-to": report_body(releasable_to=[]),
    "201-entities": report_body(
        entities=[{"type": "person", "value": f"p{i}"} for i in range(201)]
    ),
    # string lengths
    "empty-title": report_body(title=""),
    "title-201": report_body(title="t" * 201),
    "empty-body": report_body(body=""),
    "body-100001": report_body(body="b" * 100_001),
    "summary-2001": report_body(summary="s" * 2001),
    "entity-value-501": report_body(entities=with_entity(value="v" * 501)),
    "empty-entity-value": report_body(entities=with_entity(value="")),
    # closed vocabularies
    "bad-entity-type": report_body(entities=with_entity(type="pet")),
    "tearline-classification-confidential": report_body(tearline_classification="CONFIDENTIAL"),
    "bad-classification": report_body(classification="TOP SECRET"),
    "bad-tlp": report_body(tlp="AMBER_STRICT"),
    "tlp-with-prefix": report_body(tlp="TLP:RED"),
    "credibility-7": report_body(grading={"reliability": "A", "credibility": 7}),
    "credibility-0": report_body(grading={"reliability": "A", "credibility": 0}),
    "reliability-g": report_body(grading={"reliability": "G", "credibility": 1}),
    # required fields
    "missing-title": {k: v for k, v in report_body().items() if k != "title"},
    "missing-classification": {k: v for k, v in report_body().items() if k != "classification"},
    "null-body": report_body(body=None),
}

MALFORMED_JSON: dict[str, bytes] = {
    "truncated": b'{"title": "x", "body": ',
    "trailing-comma": b'{"title": "x",}',
    "single-quotes": b"{'title': 'x'}",
    "empty": b"",
    "not-json": b"hello",
    "array": b"[]",
    "null": b"null",
    "string": b'"report"',
    "nan": b'{"title": NaN}',
}


class TestInvalidReportBodies:
    @pytest.mark.parametrize("body", INVALID_BODIES.values(), ids=INVALID_BODIES.keys())
    def test_invalid_report_is_a_422_problem_and_writes_nothing(
        self, world: World, http: TestClient, body: dict[str, Any]
    ) -> None:
        before = row_counts(world)
        response = http.post("/v1/reports", json=body, headers=world.headers("ITA"))

        problem = assert_problem(response, 422)
        assert problem["errors"]
        for error in problem["errors"]:
            assert set(error) == {"loc", "msg", "type"}
        assert row_counts(world) == before

    @pytest.mark.parametrize("raw", MALFORMED_JSON.values(), ids=MALFORMED_JSON.keys())
    def test_malformed_json_is_a_422_problem_and_writes_nothing(
        self, world: World, http: TestClient, raw: bytes
    ) -> None:
        before = row_counts(world)
        response = http.post(
            "/v1/reports",
            content=raw,
            headers=world.headers("ITA", **{"Content-Type": "application/json"}),
        )

        problem = assert_problem(response, 422)
        assert problem["errors"]
        assert row_counts(world) == before

    @pytest.mark.parametrize(
        ("path", "raw"),
        [
            ("/v1/reports", b'{"title": "\xff\xfe"}'),
            ("/v1/reports", b"\xff\x07"),
            ("/v1/search", b"\xff"),
            ("/v1/webhooks", b'{"url": "\xc3"}'),
        ],
        ids=["report-string", "report-bytes", "search", "webhook"],
    )
    def test_a_body_that_is_not_utf8_is_a_422_problem_and_writes_nothing(
        self, world: World, http: TestClient, path: str, raw: bytes
    ) -> None:
        # FastAPI answers an undecodable body with an undeclared 400 of its own (found by
        # tests/test_fuzz.py); it is invalid input, so the declared 422 like malformed JSON.
        before = row_counts(world)
        response = http.post(
            path, content=raw, headers=world.headers("ITA", **{"Content-Type": "application/json"})
        )

        problem = assert_problem(response, 422)
        assert problem["errors"] == [
            {"loc": ["body"], "msg": "Unparsable body", "type": "body_unparsable"}
        ]
        assert row_counts(world) == before

    def test_a_body_that_is_not_json_is_refused_and_writes_nothing(
        self, world: World, http: TestClient
    ) -> None:
        before = row_counts(world)
        response = http.post(
            "/v1/reports",
            content=json.dumps(report_body()).encode(),
            headers=world.headers("ITA", **{"Content-Type": "text/plain"}),
        )

        assert 400 <= response.status_code < 500
        assert response.headers["content-type"] == PROBLEM
        assert row_counts(world) == before

    @pytest.mark.parametrize(
        "key",
        ["has space", "tab\there", "k" * 256, "ünïcode", ""],
        ids=["space", "tab", "too-long", "non-ascii", "empty"],
    )
    def test_invalid_idempotency_key_is_a_422_problem(
        self, world: World, http: TestClient, key: str
    ) -> None:
        before = row_counts(world)
        # Sent as bytes: the client would refuse to encode a non-ASCII str itself.
        headers: dict[str, Any] = {**world.headers("ITA"), "Idempotency-Key": key.encode()}
        response = http.post("/v1/reports", json=report_body(), headers=headers)

        assert_problem(response, 422)
        assert row_counts(world) == before


class TestOversizedBodies:
    def test_body_over_1_mib_with_content_length_is_a_413_problem(
        self, world: World, http: TestClient
    ) -> None:
        before = row_counts(world)
        raw = json.dumps(report_body(body="x" * (MIB + 1))).encode()
        response = http.post(
            "/v1/reports",
            content=raw,
            headers=world.headers("ITA", **{"Content-Type": "application/json"}),
        )

        assert_problem(response, 413)
        assert row_counts(world) == before

    def test_streamed_body_over_1_mib_is_a_413_problem(
        self, world: World, http: TestClient
    ) -> None:
        def chunks() -> Iterator[bytes]:
            yield b'{"title": "x", "body": "'
            for _ in range(20):
                yield b"x" * 64 * 1024
            yield b'"}'

        before = row_counts(world)
        response = http.post(
            "/v1/reports",
            content=chunks(),
            headers=world.headers("ITA", **{"Content-Type": "application/json"}),
        )

        assert "content-length" not in {k.lower() for k in response.request.headers}
        assert_problem(response, 413)
        assert row_counts(world) == before

    def test_lying_content_length_is_not_trusted(self, world: World, http: TestClient) -> None:
        before = row_counts(world)
        response = http.post(
            "/v1/reports",
            content=b"{}",
            headers=world.headers(
                "ITA", **{"Content-Type": "application/json", "Content-Length": "nonsense"}
            ),
        )

        assert 400 <= response.status_code < 500
        assert response.headers["content-type"] == PROBLEM
        assert row_counts(world) == before

    def test_body_just_under_the_limit_is_judged_on_its_content(
        self, world: World, http: TestClient
    ) -> None:
        # Over the 100 000-character body limit but under 1 MiB: a validation error, not 413.
        response = http.post(
            "/v1/reports", json=report_body(body="x" * 500_000), headers=world.headers("ITA")
        )

        assert_problem(response, 422)


MARKER = "MRK" + uuid.uuid4().hex[:10].upper()

# Bad requests that carry the marker in a submitted value.
ECHO_CASES: dict[str, dict[str, Any]] = {
    "title-too-long": report_body(title=MARKER + "x" * 200),
    "summary-too-long": report_body(summary=MARKER + "s" * 2000),
    "entity-value-too-long": report_body(entities=with_entity(value=MARKER + "v" * 500)),
    "unknown-topic": report_body(topics=[MARKER]),
    "unknown-member": report_body(releasable_to=[MARKER]),
    "code-too-long": report_body(releasable_to=[MARKER * 2]),
    "bool-as-string": report_body(orcon=MARKER),
    "bad-reliability": report_body(grading={"reliability": MARKER, "credibility": 1}),
    "bad-entity-type": report_body(entities=with_entity(type=MARKER)),
    "bad-tlp": report_body(tlp=MARKER),
    "unknown-field-value": report_body(extra=MARKER),
    "valid-title-bad-elsewhere": report_body(title=MARKER, topics=["REV.NOPE"]),
}


class TestErrorsNeverEchoInput:
    @pytest.mark.parametrize("body", ECHO_CASES.values(), ids=ECHO_CASES.keys())
    def test_refused_value_is_not_in_the_answer(
        self, world: World, http: TestClient, body: dict[str, Any]
    ) -> None:
        response = http.post("/v1/reports", json=body, headers=world.headers("ITA"))

        assert_problem(response, 422)
        assert MARKER not in response.text
        assert MARKER not in str(response.headers)

    def test_malformed_json_is_not_echoed(self, world: World, http: TestClient) -> None:
        response = http.post(
            "/v1/reports",
            content=f'{{"title": "{MARKER}", "body": {MARKER}}}'.encode(),
            headers=world.headers("ITA", **{"Content-Type": "application/json"}),
        )

        assert_problem(response, 422)
        assert MARKER not in response.text

    def test_bad_query_value_is_not_echoed(self, world: World, http: TestClient) -> None:
        response = http.get(
            "/v1/reports", params={"limit": MARKER, "cursor": MARKER}, headers=world.headers("ITA")
        )

        assert_problem(response, 422)
        assert MARKER not in response.text

    def test_bad_header_value_is_not_echoed(self, world: World, http: TestClient) -> None:
        response = http.post(
            "/v1/reports",
            json=report_body(),
            headers=world.headers("ITA", **{"Idempotency-Key": f"{MARKER} {MARKER}"}),
        )

        assert_problem(response, 422)
        assert MARKER not in response.text

    def test_conflicting_retry_is_not_echoed(self, world: World, http: TestClient) -> None:
        headers = world.headers("ITA", **{"Idempotency-Key": uuid.uuid4().hex})
        assert http.post("/v1/reports", json=report_body(), headers=headers).status_code == 201
        response = http.post("/v1/reports", json=report_body(title=MARKER), headers=headers)

        assert_problem(response, 409)
        assert MARKER not in response.text


class TestFrameworkErrors:
    @pytest.mark.parametrize(
        ("method", "path"),
        [("GET", "/v1/nothing-here"), ("POST", "/nothing"), ("GET", "/v1/reports/a/b/c")],
    )
    def test_unknown_route_is_a_404_problem(
        self, world: World, http: TestClient, method: str, path: str
    ) -> None:
        response = http.request(method, path, headers=world.headers("ITA"))

        problem = assert_problem(response, 404)
        assert problem["detail"] == "No such resource."

    def test_unknown_route_looks_like_an_unknown_report(
        self, world: World, http: TestClient
    ) -> None:
        route = http.get("/v1/nothing-here", headers=world.headers("ITA"))
        report = http.get(f"/v1/reports/{uuid.uuid4()}", headers=world.headers("ITA"))

        assert route.content == report.content

    def test_unsupported_method_is_a_405_problem(self, world: World, http: TestClient) -> None:
        response = http.patch("/v1/reports", json={}, headers=world.headers("ITA"))

        assert_problem(response, 405)

    def test_missing_token_is_a_401_problem_with_a_challenge(self, http: TestClient) -> None:
        response = http.post("/v1/reports", json=report_body())

        assert_problem(response, 401)
        assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'


JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=30)
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=25,
)
REPORT_FIELDS = (
    "title",
    "body",
    "summary",
    "topics",
    "classification",
    "releasable_to",
    "tearline_to",
    "tearline_classification",
    "tlp",
    "orcon",
    "grading",
    "entities",
)


class TestArbitraryJson:
    @settings(
        max_examples=60,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(payload=JSON_VALUES)
    def test_arbitrary_json_is_a_client_error(
        self, world: World, http: TestClient, payload: Any
    ) -> None:
        response = http.post("/v1/reports", json=payload, headers=world.headers("ITA"))

        assert 400 <= response.status_code < 500, response.text
        assert response.headers["content-type"] == PROBLEM

    @settings(
        max_examples=60,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(
        field=st.sampled_from(REPORT_FIELDS),
        value=JSON_VALUES,
        target=st.sampled_from(["/v1/reports", "/v1/reports/preview"]),
    )
    def test_one_arbitrary_field_in_a_valid_report_never_breaks_the_server(
        self, world: World, http: TestClient, field: str, value: Any, target: str
    ) -> None:
        response = http.post(
            target, json=report_body(**{field: value}), headers=world.headers("ITA")
        )

        # A value may happen to be valid (a string title, a null summary): then 2xx is right.
        assert response.status_code < 500, response.text
        if response.status_code >= 400:
            assert response.headers["content-type"] == PROBLEM


class TestDatabaseUnavailable:
    """Only "not available now" becomes a 503 to retry; a fault of ours stays a 500."""

    @staticmethod
    def _operational(orig: BaseException) -> OperationalError:
        return OperationalError("SELECT 1", None, orig)

    def test_a_busy_sqlite_database_is_unavailable(self) -> None:
        assert database_unavailable(
            self._operational(sqlite3.OperationalError("database is locked"))
        )

    def test_a_missing_table_is_a_fault_not_an_outage(self) -> None:
        missing = self._operational(sqlite3.OperationalError("no such table: reports"))
        assert not database_unavailable(missing)

    def test_an_exhausted_pool_is_unavailable(self) -> None:
        assert database_unavailable(PoolTimeout("QueuePool limit reached"))

    def test_postgresql_sqlstates_decide(self) -> None:
        class Shutdown(psycopg.errors.AdminShutdown):
            pass

        class Cancelled(psycopg.errors.QueryCanceled):
            pass

        assert database_unavailable(self._operational(Shutdown("terminating connection")))
        assert not database_unavailable(self._operational(Cancelled("canceling statement")))

    def test_a_refused_connection_without_sqlstate_is_unavailable(self) -> None:
        refused = psycopg.OperationalError("connection refused")
        assert database_unavailable(self._operational(refused))
