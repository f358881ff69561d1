"""Structured logs: JSON lines with request ids, and no secret or content in any of them."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app import logs
from app.middleware import request_id_var
from app.reports import service as reports
from app.search import service as search
from tests.conftest import World, report_body


class Captured(logging.Handler):
    """Every record of every logger, formatted as the service writes it."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logs.JSONFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def captured() -> Iterator[Captured]:
    handler = Captured()
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield handler
    root.removeHandler(handler)
    root.setLevel(level)


class TestFormat:
    def test_a_line_is_one_json_object_with_the_request_id(self, captured: Captured) -> None:
        token = request_id_var.set("req-1")
        try:
            logging.getLogger("tearline.test").warning("done %d", 3, extra={"count": 3})
        finally:
            request_id_var.reset(token)
        (line,) = captured.lines
        entry = json.loads(line)
        assert entry["level"] == "warning"
        assert entry["logger"] == "tearline.test"
        assert entry["message"] == "done 3"
        assert entry["request_id"] == "req-1"
        assert entry["count"] == 3
        assert "\n" not in line

    def test_an_exception_is_logged_by_type_and_frames_never_by_its_text(
        self, captured: Captured
    ) -> None:
        try:
            raise ValueError("IQ98NBIQ850123456789012 was the input")
        except ValueError:
            logging.getLogger("tearline.test").exception("failed")
        (line,) = captured.lines
        entry = json.loads(line)
        assert entry["exception"]["type"] == "ValueError"
        assert any("test_logs.py" in frame for frame in entry["exception"]["frames"])
        assert "IQ98" not in line

    def test_extras_outside_the_safe_list_are_dropped(self, captured: Captured) -> None:
        logging.getLogger("tearline.test").info("x", extra={"title": "secret title"})
        assert "secret title" not in captured.lines[0]

    def test_control_characters_cannot_forge_a_line(self, captured: Captured) -> None:
        logging.getLogger("tearline.test").info("a\nb\r\u2028c")
        (line,) = captured.lines
        assert "\n" not in line
        assert json.loads(line)["message"] == "a\nb\r\u2028c"

    def test_access_lines_keep_the_path_but_not_the_query(self, captured: Captured) -> None:
        logging.getLogger("uvicorn.access").info(
            '%s - "%s %s HTTP/%s" %d', "1.2.3.4:5", "GET", "/v1/reports?q=secret", "1.1", 200
        )
        (line,) = captured.lines
        assert json.loads(line)["message"] == '1.2.3.4:5 - "GET /v1/reports HTTP/1.1" 200'

    def test_configure_routes_every_logger_to_json_on_stderr(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        root = logging.getLogger()
        saved = (list(root.handlers), root.level)
        monkeypatch.setattr(sys, "stderr", sys.stderr)
        try:
            logs.configure("info")
            logging.getLogger("uvicorn.error").info("started")
            err = capsys.readouterr().err.strip().splitlines()
        finally:
            root.handlers[:] = saved[0]
            root.setLevel(saved[1])
        assert json.loads(err[-1])["message"] == "started"


# -- nothing secret reaches a log line, an error body or an exception message -------------

# A marker that cannot occur by chance; Hypothesis varies what surrounds it.
MARK = "ZQXSECRET"
secrets = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12
).map(lambda s: f"{s}{MARK}{s[::-1]}")


def _requests(world: World, secret: str) -> list[httpx.Response]:
    """Requests that put `secret` where content, entities, tokens and raw bodies go."""
    http = TestClient(world.app, base_url=world.issuer, raise_server_exceptions=False)
    headers = world.headers("DEU")
    bad_iban = {"type": "iban", "value": f"IQ00{secret}"}
    # Headers carry visible ASCII only (the client refuses anything else); the marker stays.
    in_header = "".join(c for c in secret if 33 <= ord(c) < 127)
    return [
        http.post(
            "/v1/reports",
            json=report_body(title=secret, body=secret, summary=secret, entities=[bad_iban]),
            headers=headers,
        ),
        http.post("/v1/reports", json=report_body(title=secret, topics=[secret]), headers=headers),
        http.post(
            "/v1/reports",
            content=('{"title": "' + secret + '", ').encode(),
            headers={**headers, "content-type": "application/json"},
        ),
        http.get("/v1/reports", headers={"authorization": f"Bearer {in_header}"}),
        http.get("/v1/reports", headers={"authorization": f"Bearer a.{in_header}.b"}),
        http.post(
            "/v1/search",
            json={"purpose": secret, "entities": [{"type": "email", "value": secret}]},
            headers=world.headers("DEU", scope="search"),
        ),
        http.post(
            "/v1/reports",
            json=report_body(entities=[{"type": "person", "value": secret}]),
            headers=headers,
        ),
    ]


class TestNothingSecretIsLogged:
    @settings(
        max_examples=20,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )
    @given(secret=secrets)
    def test_content_entities_and_tokens_stay_out_of_logs_and_error_bodies(
        self, world: World, captured: Captured, secret: str
    ) -> None:
        captured.lines.clear()
        for response in _requests(world, secret):
            if response.status_code >= 300:
                assert MARK not in response.text
                assert all(MARK not in v for v in response.headers.values())
        assert not any(MARK in line for line in captured.lines)

    @pytest.mark.parametrize("where", ["report", "search"])
    def test_an_unexpected_error_carrying_content_is_logged_without_it(
        self, world: World, captured: Captured, monkeypatch: pytest.MonkeyPatch, where: str
    ) -> None:
        secret = f"title {MARK} IQ98NBIQ850123456789012"

        def explode(*_args: Any, **_kwargs: Any) -> Any:
            raise RuntimeError(secret)

        http = TestClient(world.app, base_url=world.issuer, raise_server_exceptions=False)
        if where == "report":
            monkeypatch.setattr(reports, "create", explode)
            response = http.post(
                "/v1/reports", json=report_body(title=secret), headers=world.headers("DEU")
            )
        else:
            monkeypatch.setattr(search, "search", explode)
            response = http.post(
                "/v1/search",
                json={"purpose": "x", "entities": [{"type": "email", "value": "a@b.example"}]},
                headers=world.headers("DEU", scope="search"),
            )
        assert response.status_code == 500
        assert MARK not in response.text
        errors = [json.loads(line) for line in captured.lines if MARK not in line]
        assert len(errors) == len(captured.lines)
        assert any(e.get("error_type") == "RuntimeError" for e in errors)
