"""The reports API through HTTP: create, preview, idempotent retries, reads and listings."""

from __future__ import annotations

import threading
import uuid
from datetime import datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, text

from app.db import transaction
from app.reports.models import IdempotencyKey
from tests.conftest import World, report_body

PROBLEM = "application/problem+json"
CONTENT_TABLES = ("reports", "report_versions", "report_access", "report_topics")

# api.md, "A report as a reader sees it".
READER_FIELDS = {
    "id",
    "version",
    "originator",
    "status",
    "created_at",
    "updated_at",
    "classification",
    "tlp",
    "orcon",
    "topics",
    "grading",
    "access",
    "summary",
}
FULL_FIELDS = READER_FIELDS | {"title", "body", "entities"}
ORIGINATOR_FIELDS = FULL_FIELDS | {
    "releasable_to",
    "tearline_to",
    "tearline_classification",
    "audience",
}
# Headers that legitimately differ between two otherwise identical answers.
VARYING_HEADERS = {"x-request-id", "date"}


def row_counts(world: World, *tables: str) -> dict[str, int]:
    with transaction(world.state.sessionmaker) as session:
        return {
            t: int(session.scalar(text(f"SELECT count(*) FROM {t}")) or 0)  # noqa: S608 - constant
            for t in tables
        }


def idempotency_rows(world: World, key: str) -> int:
    with transaction(world.state.sessionmaker) as session:
        return int(
            session.scalar(
                select(func.count()).select_from(IdempotencyKey).where(IdempotencyKey.key == key)
            )
            or 0
        )


def chairs_only(**overrides: Any) -> dict[str, Any]:
    """A report neither releasable nor tearlined to anyone but the chairs."""
    return report_body(releasable_to=["CHAIRS"], tearline_to=["CHAIRS"], **overrides)


def list_reports(world: World, code: str, **params: Any) -> httpx.Response:
    return world.http.get("/v1/reports", params=params, headers=world.headers(code))


def all_pages(world: World, code: str, limit: int, **params: Any) -> list[list[str]]:
    pages: list[list[str]] = []
    cursor: str | None = None
    while True:
        query = {"limit": limit, **params}
        if cursor is not None:
            query["cursor"] = cursor
        response = list_reports(world, code, **query)
        assert response.status_code == 200, response.text
        page = response.json()
        pages.append([item["id"] for item in page["items"]])
        cursor = page["next_cursor"]
        if cursor is None:
            return pages
        assert len(pages) < 50, "pagination does not terminate"


def stamp(value: str) -> datetime:
    return datetime.fromisoformat(value)


class TestCreateReport:
    def test_create_answers_201_with_location_and_the_originator_view(self, world: World) -> None:
        submitted = report_body(grading={"reliability": "B", "credibility": 2}, tlp="GREEN")
        response = world.http.post("/v1/reports", json=submitted, headers=world.headers("ITA"))

        assert response.status_code == 201, response.text
        created = response.json()
        assert response.headers["location"] == f"/v1/reports/{created['id']}"
        assert uuid.UUID(created["id"])
        assert set(created) == ORIGINATOR_FIELDS
        assert created["version"] == 1
        assert created["originator"] == "ITA"
        assert created["status"] == "active"
        assert created["access"] == "full"
        for name in ("title", "body", "summary", "topics", "classification", "entities"):
            assert created[name] == submitted[name]
        assert created["grading"] == {"reliability": "B", "credibility": 2}
        assert created["tlp"] == "GREEN"
        assert created["orcon"] is False
        assert created["releasable_to"] == ["ALL"]
        assert created["tearline_to"] == ["ALL"]
        assert created["tearline_classification"] == "UNCLASSIFIED"
        assert created["created_at"] == created["updated_at"]
        assert stamp(created["created_at"]).utcoffset() is not None

    def test_create_reports_who_will_be_able_to_read_it(self, world: World) -> None:
        created = world.submit("ITA")

        audience = created["audience"]
        assert {"ITA", "DEU", "SAU", "EU"} <= set(audience["full"])
        # RESTRICTED-cleared bodies cannot take a CONFIDENTIAL report, only its tearline.
        assert {"FATF", "MENAFATF", "EGMONT", "INTERPOL"} <= set(audience["tearline"])
        assert not set(audience["full"]) & set(audience["tearline"])
        assert audience["full"] == sorted(audience["full"])

    def test_audience_of_a_chairs_only_report_is_the_chairs(self, world: World) -> None:
        created = world.submit("ITA", **chairs_only())

        assert created["audience"] == {"full": ["ITA", "SAU", "USA"], "tearline": []}

    def test_create_stores_one_report_with_its_rows(self, world: World) -> None:
        before = row_counts(world, *CONTENT_TABLES)
        world.submit("ITA")
        after = row_counts(world, *CONTENT_TABLES)

        assert after["reports"] == before["reports"] + 1
        assert after["report_versions"] == before["report_versions"] + 1
        assert after["report_topics"] == before["report_topics"] + 2
        assert after["report_access"] > before["report_access"]

    def test_create_without_write_scope_is_forbidden_and_writes_nothing(self, world: World) -> None:
        before = row_counts(world, *CONTENT_TABLES)
        response = world.http.post(
            "/v1/reports", json=report_body(), headers=world.headers("ITA", scope="reports:read")
        )

        assert response.status_code == 403
        assert response.headers["content-type"] == PROBLEM
        assert row_counts(world, *CONTENT_TABLES) == before


class TestPreviewReport:
    def test_preview_shows_the_audience_a_create_would_have(self, world: World) -> None:
        body = report_body(classification="SECRET", releasable_to=["STATES"])
        preview = world.http.post("/v1/reports/preview", json=body, headers=world.headers("ITA"))
        created = world.http.post("/v1/reports", json=body, headers=world.headers("ITA"))

        assert preview.status_code == 200, preview.text
        assert preview.json() == {"audience": created.json()["audience"]}

    def test_preview_stores_nothing(self, world: World) -> None:
        tables = (*CONTENT_TABLES, "idempotency_keys")
        before = row_counts(world, *tables)
        response = world.http.post(
            "/v1/reports/preview",
            json=report_body(),
            headers=world.headers("ITA", **{"Idempotency-Key": uuid.uuid4().hex}),
        )

        assert response.status_code == 200, response.text
        assert row_counts(world, *tables) == before

    @pytest.mark.parametrize(
        "overrides",
        [
            {"topics": ["NOPE.NOPE"]},
            {"releasable_to": ["XXX"]},
            {"title": ""},
            {"orcon": "yes"},
            {"unknown": 1},
        ],
        ids=["unknown-topic", "unknown-member", "empty-title", "wrong-type", "unknown-field"],
    )
    def test_preview_refuses_what_create_refuses_with_the_same_errors(
        self, world: World, overrides: dict[str, Any]
    ) -> None:
        body = report_body(**overrides)
        before = row_counts(world, *CONTENT_TABLES)
        preview = world.http.post("/v1/reports/preview", json=body, headers=world.headers("ITA"))
        create = world.http.post("/v1/reports", json=body, headers=world.headers("ITA"))

        assert preview.status_code == create.status_code == 422
        assert preview.headers["content-type"] == PROBLEM
        assert preview.json()["errors"] == create.json()["errors"]
        assert row_counts(world, *CONTENT_TABLES) == before


class TestIdempotentCreate:
    def test_retry_with_the_same_key_returns_the_same_report_once(self, world: World) -> None:
        key = uuid.uuid4().hex
        headers = world.headers("ITA", **{"Idempotency-Key": key})
        first = world.http.post("/v1/reports", json=report_body(), headers=headers)
        before = row_counts(world, *CONTENT_TABLES)
        retry = world.http.post("/v1/reports", json=report_body(), headers=headers)

        assert first.status_code == retry.status_code == 201
        assert "idempotent-replayed" not in first.headers
        assert retry.headers["idempotent-replayed"] == "true"
        assert retry.headers["location"] == first.headers["location"]
        assert retry.json() == first.json()
        assert row_counts(world, *CONTENT_TABLES) == before
        assert idempotency_rows(world, key) == 1

    def test_the_same_key_with_another_body_is_a_conflict(self, world: World) -> None:
        key = uuid.uuid4().hex
        headers = world.headers("ITA", **{"Idempotency-Key": key})
        first = world.http.post("/v1/reports", json=report_body(), headers=headers)
        before = row_counts(world, *CONTENT_TABLES)
        other = world.http.post("/v1/reports", json=report_body(title="Other"), headers=headers)

        assert first.status_code == 201
        assert other.status_code == 409
        assert other.headers["content-type"] == PROBLEM
        assert other.json()["status"] == 409
        assert "Other" not in other.text
        assert row_counts(world, *CONTENT_TABLES) == before

    def test_the_same_key_from_another_client_is_its_own_request(self, world: World) -> None:
        key = uuid.uuid4().hex
        ita = world.http.post(
            "/v1/reports",
            json=chairs_only(),
            headers=world.headers("ITA", **{"Idempotency-Key": key}),
        )
        deu = world.http.post(
            "/v1/reports",
            json=chairs_only(),
            headers=world.headers("DEU", **{"Idempotency-Key": key}),
        )

        assert ita.status_code == deu.status_code == 201
        assert "idempotent-replayed" not in deu.headers
        assert deu.json()["id"] != ita.json()["id"]
        assert deu.json()["originator"] == "DEU"

    def test_concurrent_requests_with_one_key_create_exactly_one_report(self, world: World) -> None:
        """Every racer gets either the report (201, the same id) or 409 Conflict.

        SQLite serialises writers, so the losers see the stored key and replay (201). On
        PostgreSQL the losers may pass the replay lookup before the winner commits; their insert
        of the key then waits for the winner and conflicts, which is answered with 409 and rolls
        their report back. Either way exactly one report exists.
        """
        key = uuid.uuid4().hex
        headers = world.headers("ITA", **{"Idempotency-Key": key})
        racers = 6
        barrier = threading.Barrier(racers)
        responses: list[httpx.Response] = []
        lock = threading.Lock()

        def post() -> None:
            barrier.wait()
            response = world.http.post("/v1/reports", json=report_body(), headers=headers)
            with lock:
                responses.append(response)

        before = row_counts(world, "reports")
        threads = [threading.Thread(target=post) for _ in range(racers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)

        assert len(responses) == racers
        statuses = sorted(r.status_code for r in responses)
        assert set(statuses) <= {201, 409}, [r.text for r in responses]
        created = [r for r in responses if r.status_code == 201]
        assert created
        assert len({r.json()["id"] for r in created}) == 1
        assert sum("idempotent-replayed" not in r.headers for r in created) == 1
        for conflict in (r for r in responses if r.status_code == 409):
            assert conflict.headers["content-type"] == PROBLEM
        assert row_counts(world, "reports")["reports"] == before["reports"] + 1
        assert idempotency_rows(world, key) == 1


class TestGetReport:
    def test_full_reader_sees_content_but_not_the_markings_of_release(self, world: World) -> None:
        created = world.submit("ITA", grading={"reliability": "A", "credibility": 1})
        response = world.get("DEU", created["id"])

        assert response.status_code == 200, response.text
        report = response.json()
        assert set(report) == FULL_FIELDS
        assert report["access"] == "full"
        for name in FULL_FIELDS - {"access"}:
            assert report[name] == created[name], name

    def test_tearline_reader_sees_metadata_and_summary_only(self, world: World) -> None:
        created = world.submit("ITA")
        response = world.get("FATF", created["id"])

        assert response.status_code == 200, response.text
        report = response.json()
        assert set(report) == READER_FIELDS
        assert report["access"] == "tearline"
        assert report["summary"] == created["summary"]
        for secret in (created["title"], created["body"], "IQ98NBIQ850123456789012"):
            assert secret not in response.text

    def test_originator_sees_markings_and_audience(self, world: World) -> None:
        created = world.submit("ITA")
        response = world.get("ITA", created["id"])

        assert response.status_code == 200
        assert response.json() == created

    def test_report_without_summary_has_a_null_summary(self, world: World) -> None:
        created = world.submit("ITA", summary=None)
        report = world.get("DEU", created["id"]).json()

        assert report["summary"] is None
        assert set(report) == FULL_FIELDS


class TestHiddenReportLooksAbsent:
    @pytest.mark.parametrize(
        "absent_id",
        [
            "random-uuid",
            "not-a-report-id",
            "x" * 200,
            "%00",
        ],
        ids=["random-uuid", "non-uuid", "long", "nul"],
    )
    def test_hidden_report_answers_exactly_like_an_absent_one(
        self, world: World, absent_id: str
    ) -> None:
        hidden = world.submit("ITA", **chairs_only())
        if absent_id == "random-uuid":
            absent_id = str(uuid.uuid4())

        denied = world.get("DEU", hidden["id"])
        missing = world.get("DEU", absent_id)

        assert denied.status_code == missing.status_code == 404
        assert denied.headers["content-type"] == PROBLEM
        assert denied.content == missing.content
        assert set(denied.headers) == set(missing.headers)
        for name in set(denied.headers) - VARYING_HEADERS:
            assert denied.headers[name] == missing.headers[name], name
        assert hidden["title"] not in denied.text

    def test_hidden_report_is_readable_by_those_it_was_released_to(self, world: World) -> None:
        hidden = world.submit("ITA", **chairs_only())

        assert world.get("USA", hidden["id"]).json()["access"] == "full"

    def test_hit_level_is_not_enough_to_read(self, world: World) -> None:
        # FATF is cleared RESTRICTED; with no summary there is no tearline for it.
        created = world.submit("ITA", summary=None)

        assert world.get("FATF", created["id"]).status_code == 404


class TestListReports:
    def test_list_is_newest_first_without_body_or_entities(self, world: World) -> None:
        older = world.submit("ITA")
        newer = world.submit("FRA")
        response = list_reports(world, "DEU", limit=100)

        assert response.status_code == 200, response.text
        items = response.json()["items"]
        ids = [i["id"] for i in items]
        assert ids.index(newer["id"]) < ids.index(older["id"])
        stamps = [(stamp(i["updated_at"]), i["id"]) for i in items]
        assert stamps == sorted(stamps, reverse=True)
        for item in items:
            assert "body" not in item
            assert "entities" not in item
            assert "audience" not in item

    def test_list_items_show_title_only_at_full(self, world: World) -> None:
        created = world.submit("ITA")
        full = next(
            i for i in list_reports(world, "DEU").json()["items"] if i["id"] == created["id"]
        )
        tearline = next(
            i for i in list_reports(world, "FATF").json()["items"] if i["id"] == created["id"]
        )

        assert set(full) == READER_FIELDS | {"title"}
        assert full["title"] == created["title"]
        assert set(tearline) == READER_FIELDS
        assert tearline["access"] == "tearline"
        assert tearline["summary"] == created["summary"]

    def test_list_never_shows_a_hidden_report(self, world: World) -> None:
        hidden = world.submit("ITA", **chairs_only())
        response = list_reports(world, "DEU", limit=100)

        assert hidden["id"] not in {i["id"] for i in response.json()["items"]}
        assert hidden["id"] in {i["id"] for i in list_reports(world, "SAU").json()["items"]}

    def test_limit_caps_the_page(self, world: World) -> None:
        world.submit("ITA")
        world.submit("ITA")
        page = list_reports(world, "DEU", limit=1).json()

        assert len(page["items"]) == 1
        assert page["next_cursor"]

    def test_cursor_pages_cover_every_readable_report_once(self, fresh_world: World) -> None:
        w = fresh_world
        expected = [w.submit(code)["id"] for code in ("ITA", "DEU", "FRA", "ITA", "GBR", "DEU")]
        w.submit("ITA", **chairs_only())
        expected.append(w.submit("USA")["id"])
        newest_first = list(reversed(expected))

        pages = all_pages(w, "DEU", limit=3)

        assert [len(p) for p in pages] == [3, 3, 1]
        assert [rid for page in pages for rid in page] == newest_first
        assert [i["id"] for i in list_reports(w, "DEU").json()["items"]] == newest_first

    def test_exact_multiple_of_limit_ends_without_an_empty_page(self, fresh_world: World) -> None:
        w = fresh_world
        expected = [w.submit("ITA")["id"] for _ in range(4)]

        pages = all_pages(w, "DEU", limit=2)

        assert [rid for page in pages for rid in page] == list(reversed(expected))
        assert all(pages), pages

    def test_reports_created_while_paging_do_not_shift_later_pages(
        self, fresh_world: World
    ) -> None:
        w = fresh_world
        expected = [w.submit("ITA")["id"] for _ in range(5)]
        first = list_reports(w, "DEU", limit=2).json()
        w.submit("ITA")
        w.submit("FRA")
        rest = all_pages(w, "DEU", limit=2, cursor=first["next_cursor"])

        seen = [i["id"] for i in first["items"]] + [rid for page in rest for rid in page]
        assert seen == list(reversed(expected))

    def test_topic_filter_keeps_reports_with_that_topic(self, world: World) -> None:
        match = world.submit("ITA", topics=["REV.ANT", "MOV.CASH"])
        other = world.submit("ITA", topics=["REV.KFR"])
        items = list_reports(world, "DEU", topic="REV.ANT", limit=100).json()["items"]

        ids = {i["id"] for i in items}
        assert match["id"] in ids
        assert other["id"] not in ids
        assert all("REV.ANT" in i["topics"] for i in items)

    def test_originator_filter_keeps_that_originators_reports(self, world: World) -> None:
        match = world.submit("JPN")
        other = world.submit("ITA")
        items = list_reports(world, "DEU", originator="JPN", limit=100).json()["items"]

        ids = {i["id"] for i in items}
        assert match["id"] in ids
        assert other["id"] not in ids
        assert {i["originator"] for i in items} == {"JPN"}

    def test_classification_filter_keeps_that_classification(self, world: World) -> None:
        match = world.submit("ITA", classification="SECRET")
        other = world.submit("ITA", classification="RESTRICTED")
        items = list_reports(world, "DEU", classification="SECRET", limit=100).json()["items"]

        ids = {i["id"] for i in items}
        assert match["id"] in ids
        assert other["id"] not in ids
        assert {i["classification"] for i in items} == {"SECRET"}

    def test_status_filter_keeps_that_status(self, world: World) -> None:
        created = world.submit("ITA")
        active = list_reports(world, "DEU", status="active", limit=100).json()["items"]
        revoked = list_reports(world, "DEU", status="revoked", limit=100).json()["items"]

        assert created["id"] in {i["id"] for i in active}
        assert {i["status"] for i in active} == {"active"}
        assert created["id"] not in {i["id"] for i in revoked}

    def test_updated_since_keeps_reports_updated_at_or_after(self, world: World) -> None:
        older = world.submit("ITA")
        newer = world.submit("ITA")
        items = list_reports(world, "DEU", updated_since=newer["updated_at"], limit=100).json()[
            "items"
        ]

        ids = {i["id"] for i in items}
        assert newer["id"] in ids
        assert older["id"] not in ids
        assert all(stamp(i["updated_at"]) >= stamp(newer["updated_at"]) for i in items)

    @pytest.mark.parametrize(
        "params",
        [
            {"cursor": "not a cursor"},
            {"cursor": "!!!!"},
            {"cursor": ""},
            {"cursor": "WyJ5ZXN0ZXJkYXkiLCAieCJd"},  # ["yesterday", "x"]
            {"cursor": "WyIyMDIwLTAxLTAxVDAwOjAwOjAwIiwgIngiXQ"},  # a zone-less time
            {"topic": "NOPE.NOPE"},
            {"topic": "REV"},  # a branch, not a leaf
            {"originator": "XXX"},
            {"classification": "TOP SECRET"},
            {"status": "deleted"},
            {"updated_since": "yesterday"},
            {"updated_since": "2020-01-01T00:00:00"},  # RFC 3339 times carry a zone
            {"limit": 0},
            {"limit": 101},
            {"limit": -1},
            {"limit": "ten"},
        ],
        ids=lambda p: "-".join(f"{k}={v}" for k, v in p.items())[:40],
    )
    def test_invalid_query_is_a_422_problem(self, world: World, params: dict[str, Any]) -> None:
        response = list_reports(world, "DEU", **params)

        assert response.status_code == 422, response.text
        assert response.headers["content-type"] == PROBLEM
        assert response.json()["errors"]

    def test_limit_of_100_is_allowed(self, world: World) -> None:
        response = list_reports(world, "DEU", limit=100)

        assert response.status_code == 200
        assert len(response.json()["items"]) <= 100
