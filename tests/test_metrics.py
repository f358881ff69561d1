"""`GET /metrics`: request counts and latencies by route template, the database's gauges,
delivery and checkpoint counters, and nothing confidential in any of it."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from starlette.routing import Route

from app.audit import tree
from app.audit.maintainer import Maintainer
from app.db import make_read_engine
from app.metrics import CONTENT_TYPE, UNMATCHED
from app.webhooks.dispatcher import Dispatcher
from tests.conftest import World, report_body
from tests.webhooks.conftest import Receiver, dispatch, receiver, subscribe

__all__ = ["receiver"]  # the fixture, shared with tests/webhooks

REPORT_ROUTE = "/v1/reports/{report_id}"
# The labels a Tearline metric may carry, and the values each may take besides route templates.
LABELS = {"route", "method", "status", "level", "outcome"}
LEVELS = {"full", "tearline", "hit"}
OUTCOMES = {"succeeded", "failed"}
METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other"}


class Scrape:
    """One answer of `GET /metrics`, parsed."""

    def __init__(self, world: World) -> None:
        response = world.http.get("/metrics")
        assert response.status_code == 200, response.text
        self.text = response.text
        self.families: dict[str, Metric] = {
            family.name: family for family in text_string_to_metric_families(response.text)
        }

    def value(self, sample: str, **labels: str) -> float:
        """The value of one sample; 0 when the series does not exist (yet)."""
        for family in self.families.values():
            for s in family.samples:
                if s.name == sample and s.labels == labels:
                    return float(s.value)
        return 0.0

    def requests(self, route: str, method: str, status: int) -> float:
        return self.value(
            "tearline_http_requests_total", route=route, method=method, status=str(status)
        )


def route_templates(world: World) -> set[str]:
    paths = set(world.app.openapi()["paths"])
    return paths | {r.path for r in world.app.routes if isinstance(r, Route)}


class TestRequestMetrics:
    def test_a_report_read_is_counted_under_its_route_template_with_its_status(
        self, world: World
    ) -> None:
        report = world.submit("USA", releasable_to=["ALL"])
        before = Scrape(world)
        assert world.get("DEU", report["id"]).status_code == 200
        assert world.get("DEU", report["id"]).status_code == 200
        assert world.get("DEU", str(uuid.uuid4())).status_code == 404
        after = Scrape(world)
        for status, count in ((200, 2), (404, 1)):
            grown = after.requests(REPORT_ROUTE, "GET", status)
            assert grown - before.requests(REPORT_ROUTE, "GET", status) == count
        assert report["id"] not in after.text

    def test_latency_is_a_histogram_per_route_template(self, world: World) -> None:
        report = world.submit("USA", releasable_to=["ALL"])
        labels = {"route": REPORT_ROUTE, "method": "GET"}
        before = Scrape(world)
        for _ in range(3):
            world.get("DEU", report["id"])
        after = Scrape(world)
        name = "tearline_http_request_duration_seconds"
        assert after.families[name].type == "histogram"
        count = after.value(f"{name}_count", **labels)
        assert count - before.value(f"{name}_count", **labels) == 3
        assert after.value(f"{name}_bucket", **labels, le="+Inf") == count
        assert after.value(f"{name}_sum", **labels) > before.value(f"{name}_sum", **labels)

    def test_an_unknown_path_is_counted_under_a_fixed_label(self, world: World) -> None:
        secret_path = f"/v1/nothing/{uuid.uuid4()}"
        before = Scrape(world)
        assert world.http.get(secret_path).status_code == 404
        after = Scrape(world)
        assert after.requests(UNMATCHED, "GET", 404) - before.requests(UNMATCHED, "GET", 404) == 1
        assert secret_path not in after.text

    def test_documentation_pages_are_counted_under_their_path(self, world: World) -> None:
        before = Scrape(world)
        assert world.http.get("/openapi.json").status_code == 200
        after = Scrape(world)
        grown = after.requests("/openapi.json", "GET", 200)
        assert grown - before.requests("/openapi.json", "GET", 200) == 1

    def test_an_unknown_method_is_counted_as_other(self, world: World) -> None:
        before = Scrape(world)
        assert world.http.request("BREW", "/healthz").status_code == 405
        after = Scrape(world)
        grown = after.requests("/healthz", "other", 405)
        assert grown - before.requests("/healthz", "other", 405) == 1
        assert "BREW" not in after.text


class TestNothingConfidential:
    def test_no_id_token_or_member_text_appears_in_the_output(self, world: World) -> None:
        marker = uuid.uuid4().hex
        fields = {
            "title": f"Title {marker}",
            "body": f"Body {marker}",
            "summary": f"Summary {marker}",
            "entities": [{"type": "person", "value": f"Person {marker}", "label": f"L{marker}"}],
        }
        created = world.http.post(
            "/v1/reports",
            json=report_body(releasable_to=["ALL"], **fields),
            headers=world.headers("USA", **{"Idempotency-Key": f"key-{marker}"}),
        )
        assert created.status_code == 201, created.text
        report_id = created.json()["id"]
        read = world.http.get(
            f"/v1/reports/{report_id}",
            headers=world.headers("DEU", **{"Tearline-Purpose": f"purpose {marker}"}),
        )
        assert read.status_code == 200
        world.http.post(
            "/v1/search",
            json={"entities": [{"type": "person", "value": f"Person {marker}"}], "purpose": marker},
            headers=world.headers("DEU"),
        )
        text = Scrape(world).text
        for secret in (marker, report_id, world.token("USA"), world.token("DEU")):
            assert secret not in text

    def test_tearline_metrics_carry_only_bounded_labels(self, world: World) -> None:
        world.submit("USA", releasable_to=["ALL"])
        world.http.get(f"/v1/reports/{uuid.uuid4()}/access-log")
        templates = route_templates(world) | {UNMATCHED}
        allowed = {
            "route": templates,
            "method": METHODS,
            "level": LEVELS,
            "outcome": OUTCOMES,
            "status": {"pending", "sending"} | {str(code) for code in range(100, 600)},
        }
        scrape = Scrape(world)
        tearline = [f for name, f in scrape.families.items() if name.startswith("tearline_")]
        assert tearline
        for family in tearline:
            for sample in family.samples:
                labels = {k: v for k, v in sample.labels.items() if k != "le"}
                assert labels.keys() <= LABELS, sample
                for key, value in labels.items():
                    assert value in allowed[key], sample


class TestDatabaseGauges:
    def test_audit_log_and_outbox_backlog_follow_a_submitted_report(
        self, fresh_world: World
    ) -> None:
        before = Scrape(fresh_world)
        assert before.value("tearline_database_up") == 1
        fresh_world.submit("USA", releasable_to=["ALL"])
        after = Scrape(fresh_world)
        with fresh_world.state.engine.connect() as conn:
            log_size = tree.log_size(conn)
        assert after.value("tearline_audit_log_entries") == log_size
        assert log_size > before.value("tearline_audit_log_entries")
        waiting = after.value("tearline_webhook_events_waiting")
        assert waiting >= before.value("tearline_webhook_events_waiting") + 1
        decided = sum(after.value("tearline_report_access_decisions", level=x) for x in LEVELS)
        assert decided > sum(
            before.value("tearline_report_access_decisions", level=x) for x in LEVELS
        )
        asyncio.run(Dispatcher(fresh_world.state).prepare())
        assert Scrape(fresh_world).value("tearline_webhook_events_waiting") == 0

    def test_tree_size_and_checkpoints_follow_the_maintainer(self, fresh_world: World) -> None:
        fresh_world.submit("USA", releasable_to=["ALL"])
        before = Scrape(fresh_world)
        assert before.value("tearline_audit_tree_size") == 0
        assert before.value("tearline_audit_checkpoint_tree_size") == 0

        async def catch_up() -> None:
            keeper = Maintainer(fresh_world.state)
            while (progress := await keeper.step()) is not None and progress.pending:
                pass

        asyncio.run(catch_up())
        after = Scrape(fresh_world)
        size = after.value("tearline_audit_tree_size")
        assert size >= before.value("tearline_audit_log_entries")
        assert after.value("tearline_audit_checkpoint_tree_size") == size
        issued = after.value("tearline_audit_checkpoints_issued_total")
        assert issued - before.value("tearline_audit_checkpoints_issued_total") == 1

    def test_without_the_database_the_request_metrics_still_render(
        self, world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        world.http.get("/healthz")
        unreachable = make_read_engine(f"sqlite:///{(tmp_path / 'gone' / 'x.db').as_posix()}")
        monkeypatch.setattr(world.state.db, "read_engine", unreachable)
        try:
            scrape = Scrape(world)
        finally:
            unreachable.dispose()
        assert scrape.value("tearline_database_up") == 0
        assert scrape.requests("/healthz", "GET", 200) >= 1
        assert "tearline_audit_log_entries" not in scrape.families
        assert "tearline_webhook_events_waiting" not in scrape.families


class TestDeliveryOutcomes:
    def test_the_dispatcher_counts_attempts_by_outcome(
        self, fresh_world: World, receiver: Receiver
    ) -> None:
        subscribe(fresh_world, "DEU", receiver.url("/ok"))
        subscribe(fresh_world, "FRA", receiver.url("/bad"))
        receiver.answer("/bad", (500, {}, b"down"))
        fresh_world.submit("USA", releasable_to=["ALL"])
        asyncio.run(Dispatcher(fresh_world.state).prepare())
        queued = Scrape(fresh_world)
        assert queued.value("tearline_webhook_deliveries_queued", status="pending") == 2
        dispatcher = dispatch(fresh_world)
        after = Scrape(fresh_world)
        succeeded = after.value("tearline_webhook_attempts_total", outcome="succeeded")
        failed = after.value("tearline_webhook_attempts_total", outcome="failed")
        assert (succeeded, failed) == (1, 1)
        assert (dispatcher.tally.succeeded, dispatcher.tally.failed) == (1, 1)
        # The failed one waits for its retry.
        assert after.value("tearline_webhook_deliveries_queued", status="pending") == 1
        assert after.value("tearline_webhook_deliveries_queued", status="sending") == 0


class TestRoute:
    def test_metrics_is_public_and_answers_in_the_prometheus_text_format(
        self, world: World
    ) -> None:
        response = world.http.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"] == CONTENT_TYPE
        assert CONTENT_TYPE == "text/plain; version=0.0.4; charset=utf-8"
        names = {f.name for f in text_string_to_metric_families(response.text)}
        assert {"tearline_http_requests", "tearline_database_up"} <= names

    def test_the_openapi_document_declares_it_as_a_service_route_answering_text(
        self, world: World
    ) -> None:
        op = world.app.openapi()["paths"]["/metrics"]["get"]
        assert op["tags"] == ["service"]
        assert "security" not in op
        assert list(op["responses"]["200"]["content"]) == [CONTENT_TYPE]

    def test_each_app_has_a_registry_of_its_own(self, world: World, fresh_world: World) -> None:
        assert world.state.metrics.registry is not fresh_world.state.metrics.registry
        before = Scrape(fresh_world).requests("/healthz", "GET", 200)
        world.http.get("/healthz")
        assert Scrape(fresh_world).requests("/healthz", "GET", 200) == before
