"""Units of the reports service: request hashes, cursors, and the one readable statement."""

from __future__ import annotations

import base64
import json
import re
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, select

from app.config import PROJECT_ROOT
from app.db import transaction
from app.errors import Unprocessable
from app.policy.service import PolicyState
from app.reports import service
from app.reports.models import Report, ReportAccess
from app.reports.schemas import ReportIn
from tests.conftest import World, report_body


def payload(**overrides: Any) -> ReportIn:
    return ReportIn.model_validate(report_body(**overrides))


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@contextmanager
def statements(world: World) -> Iterator[list[str]]:
    """Collect the SQL the application sends while the block runs."""
    seen: list[str] = []

    def before(
        _conn: Any, _cursor: Any, statement: str, _params: Any, _context: Any, _many: bool
    ) -> None:
        seen.append(" ".join(statement.split()))

    engines = (world.state.db.engine, world.state.db.read_engine)
    for engine in engines:
        event.listen(engine, "before_cursor_execute", before)
    try:
        yield seen
    finally:
        for engine in engines:
            event.remove(engine, "before_cursor_execute", before)


def touches(statement: str, table: str) -> bool:
    return re.search(rf"\b(FROM|JOIN|INTO|UPDATE)\s+\"?{table}\"?(\s|$)", statement) is not None


class TestRequestHash:
    def test_same_request_gives_the_same_hash(self) -> None:
        assert service.request_hash(payload()) == service.request_hash(payload())

    def test_hash_is_a_sha256_hex_digest(self) -> None:
        assert re.fullmatch(r"[0-9a-f]{64}", service.request_hash(payload()))

    def test_field_order_of_the_request_does_not_matter(self) -> None:
        body = report_body(grading={"reliability": "C", "credibility": 3})
        reordered = dict(reversed(list(body.items())))
        reordered["grading"] = {"credibility": 3, "reliability": "C"}

        assert service.request_hash(ReportIn.model_validate(body)) == service.request_hash(
            ReportIn.model_validate(reordered)
        )

    def test_spelled_out_defaults_hash_like_omitted_ones(self) -> None:
        explicit = payload(
            tearline_to=["ALL"],
            tearline_classification="UNCLASSIFIED",
            tlp="AMBER",
            orcon=False,
            grading=None,
        )

        assert service.request_hash(explicit) == service.request_hash(payload())

    @pytest.mark.parametrize(
        "change",
        [
            {"title": "Another title"},
            {"body": "Another body."},
            {"summary": None},
            {"summary": "Another summary."},
            {"topics": ["MOV.HAW"]},
            {"classification": "SECRET"},
            {"releasable_to": ["STATES"]},
            {"tearline_to": ["CHAIRS"]},
            {"tearline_classification": "RESTRICTED"},
            {"tlp": "RED"},
            {"orcon": True},
            {"grading": {"reliability": "A", "credibility": 1}},
            {"entities": []},
            {"entities": [{"type": "person", "value": "Abu Bakr al-Example", "label": "x"}]},
        ],
        ids=lambda change: next(iter(change)),
    )
    def test_any_change_of_content_or_markings_changes_the_hash(
        self, change: dict[str, Any]
    ) -> None:
        assert service.request_hash(payload(**change)) != service.request_hash(payload())

    def test_hash_does_not_depend_on_the_text_encoding_of_the_client(self) -> None:
        raw = json.dumps(report_body(title="Ünïcödé تمويل"), ensure_ascii=True)
        escaped = ReportIn.model_validate_json(raw)

        assert service.request_hash(escaped) == service.request_hash(payload(title="Ünïcödé تمويل"))


class TestCursor:
    @pytest.mark.parametrize(
        "when",
        [
            datetime(2025, 3, 19, 9, 30, 0, 123456, tzinfo=UTC),
            datetime(2025, 3, 19, 9, 30, tzinfo=UTC),
            datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        ],
    )
    def test_cursor_round_trips_time_and_id(self, when: datetime) -> None:
        report_id = str(uuid.uuid4())
        cursor = service.encode_cursor(Report(id=report_id, updated_at=when))

        assert service.decode_cursor(cursor) == (when, report_id)

    def test_cursor_is_url_safe_and_unpadded(self) -> None:
        cursor = service.encode_cursor(Report(id=str(uuid.uuid4()), updated_at=datetime.now(UTC)))

        assert re.fullmatch(r"[A-Za-z0-9_-]+", cursor)

    def test_decoded_time_is_timezone_aware(self) -> None:
        when = datetime.now(UTC)
        stamp, _ = service.decode_cursor(service.encode_cursor(Report(id="x", updated_at=when)))

        assert stamp.utcoffset() == timedelta(0)

    @pytest.mark.parametrize(
        "junk",
        [
            "",
            "!!!!",
            "not a cursor",
            b64(b"\xff\xfe\xfd"),
            b64(b"null"),
            b64(b"{}"),
            b64(b"[]"),
            b64(b'["2025-03-19T09:30:00+00:00"]'),
            b64(b'["2025-03-19T09:30:00+00:00", "a", "b"]'),
            b64(b'["yesterday", "a"]'),
            b64(b'[20250319, "a"]'),
            b64(b'{"t": "2025-03-19T09:30:00+00:00", "id": "a"}'),
            b64(b'["2025-03-19T09:30:00", "a"]'),
        ],
        ids=[
            "empty",
            "not-base64",
            "spaces",
            "not-utf8",
            "null",
            "object",
            "empty-list",
            "one-part",
            "three-parts",
            "not-a-time",
            "number-time",
            "object-two-keys",
            "zone-less-time",
        ],
    )
    def test_junk_cursor_is_unprocessable(self, junk: str) -> None:
        with pytest.raises(Unprocessable) as refused:
            service.decode_cursor(junk)

        assert refused.value.status == 422
        assert refused.value.errors[0]["loc"] == ["query", "cursor"]


class TestReadableStatement:
    def test_statement_is_scoped_to_the_member_and_the_bundle_in_force(self, world: World) -> None:
        bundle_hash = world.state.policy.bundle.hash
        statement = service.readable_statement("DEU", bundle_hash)
        sql = str(statement.compile(compile_kwargs={"literal_binds": True}))

        assert "report_access.member_code = 'DEU'" in sql
        assert f"report_access.policy_hash = '{bundle_hash}'" in sql
        assert "report_access.level IN ('full', 'tearline')" in sql
        assert touches(sql, "reports")
        assert touches(sql, "report_versions")

    def test_read_checks_and_fetches_in_one_statement(self, world: World) -> None:
        created = world.submit("ITA")
        # Warm the member key cache and the token, so only the read itself is counted.
        assert world.get("DEU", created["id"]).status_code == 200

        with statements(world) as seen:
            response = world.get("DEU", created["id"])

        assert response.status_code == 200
        on_reports = [s for s in seen if touches(s, "reports")]
        assert len(on_reports) == 1, seen
        (read,) = on_reports
        assert read.startswith("SELECT")
        assert touches(read, "report_access")
        assert touches(read, "report_versions")
        # Nothing else looks at decisions or content: no check-then-fetch.
        others = [s for s in seen if s is not read]
        assert not [s for s in others if touches(s, "report_access")], others
        assert not [s for s in others if touches(s, "report_versions")], others
        writes = [s for s in others if not s.startswith(("SELECT", "BEGIN", "SAVEPOINT"))]
        assert all(touches(s, "audit_entries") for s in writes), writes

    def test_refused_read_is_the_same_single_statement(self, world: World) -> None:
        hidden = world.submit("ITA", releasable_to=["CHAIRS"], tearline_to=["CHAIRS"])
        assert world.get("DEU", hidden["id"]).status_code == 404

        with statements(world) as seen:
            response = world.get("DEU", hidden["id"])

        assert response.status_code == 404
        assert len([s for s in seen if touches(s, "reports")]) == 1, seen
        assert len([s for s in seen if touches(s, "report_access")]) == 1, seen

    def test_list_page_is_one_statement_on_reports(self, world: World) -> None:
        world.submit("ITA")
        world.submit("FRA")

        with statements(world) as seen:
            response = world.http.get(
                "/v1/reports", params={"limit": 10}, headers=world.headers("DEU")
            )

        assert response.status_code == 200
        assert len([s for s in seen if touches(s, "reports")]) == 1, seen


class TestListingPlan:
    def test_a_listing_page_reads_the_partial_index_in_order_without_sorting(
        self, world: World
    ) -> None:
        # The query plan, not the timing: a page must be one ordered range of the partial
        # index, never a sort of every report the member may read.
        world.submit("ITA")
        statement = service.readable_statement("DEU", world.state.policy.bundle.hash)
        page = statement.order_by(
            ReportAccess.report_updated_at.desc(), ReportAccess.report_id.desc()
        ).limit(51)
        with world.state.db.read_engine.connect() as conn:
            sql = str(page.compile(conn, compile_kwargs={"literal_binds": True}))
            if conn.dialect.name == "sqlite":
                plan = " ".join(
                    str(r[-1]) for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql)
                )
                assert "ix_report_access_readable" in plan
                assert "TEMP B-TREE" not in plan
            else:
                conn.exec_driver_sql("SET enable_seqscan = off")
                plan = " ".join(r[0] for r in conn.exec_driver_sql("EXPLAIN " + sql))
                assert "ix_report_access_readable" in plan
                assert "Sort" not in plan


class TestRedecideBatch:
    def test_batches_resume_in_id_order_and_decide_every_stale_report_once(
        self, fresh_world: World, tmp_path: Path
    ) -> None:
        created = sorted(fresh_world.submit("USA")["id"] for _ in range(5))
        policies = tmp_path / "policies"
        shutil.copytree(PROJECT_ROOT / "policies", policies)
        roster = policies / "roster.yaml"
        text = roster.read_text()
        at = text.index("clearance: ", text.index("- code: NLD"))
        roster.write_text(text[:at] + "clearance: RESTRICTED" + text[text.index("\n", at) :])
        policy = PolicyState.load(policies)
        decided: list[str] = []

        def on_decide(_session: Any, _state: Any, report: Any, grants: Any = None) -> Any:
            decided.append(report.id)
            return original(_session, _state, report, grants)

        original = service.decide_again
        after: str | None = None
        positions = []
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(service, "decide_again", on_decide)
            while True:
                with transaction(fresh_world.state.sessionmaker) as session:
                    ids = service.redecide_batch(session, policy, after, batch=2)
                if not ids:
                    break
                after = ids[-1]
                positions.append(after)

        assert sorted(decided) == decided == created
        assert positions == [created[1], created[3], created[4]]
        with transaction(fresh_world.state.sessionmaker) as session:
            assert not service.any_stale(session, policy)
            hashes = set(session.scalars(select(ReportAccess.policy_hash)))
        assert hashes == {policy.bundle.hash}
