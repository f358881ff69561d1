"""The request deadline: 503 for an answer that has not started in time, never a cut stream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from fastapi.testclient import TestClient

from app.middleware import DeadlineMiddleware, RequestIdMiddleware
from tests.conftest import World, drop_database, make_world


def _app(seconds: float) -> FastAPI:
    app = FastAPI()
    app.add_middleware(DeadlineMiddleware, seconds=seconds)
    app.add_middleware(RequestIdMiddleware)
    finished: list[str] = []
    app.state.finished = finished

    @app.get("/slow")
    async def slow() -> dict[str, str]:
        await asyncio.sleep(2)
        finished.append("slow")
        return {"done": "late"}

    @app.get("/quick")
    async def quick() -> dict[str, str]:
        return {"done": "now"}

    @app.get("/stream")
    async def stream() -> StreamingResponse:
        async def parts() -> AsyncIterator[bytes]:
            for i in range(4):
                yield f"part {i}\n".encode()
                await asyncio.sleep(0.1)

        return StreamingResponse(parts(), media_type="text/plain")

    return app


class TestDeadline:
    def test_an_answer_not_started_in_time_is_a_503_problem_and_the_work_stops(self) -> None:
        app = _app(0.2)
        with TestClient(app) as client:
            response = client.get("/slow")
        assert response.status_code == 503
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.headers["retry-after"] == "1"
        assert response.headers["x-request-id"]
        assert app.state.finished == []

    def test_a_quick_answer_is_untouched(self) -> None:
        with TestClient(_app(0.2)) as client:
            response = client.get("/quick")
        assert response.status_code == 200
        assert response.json() == {"done": "now"}

    def test_a_stream_that_started_in_time_is_never_cut(self) -> None:
        with TestClient(_app(0.2)) as client:
            response = client.get("/stream")
        assert response.status_code == 200
        assert response.text == "".join(f"part {i}\n" for i in range(4))


@pytest.fixture
def hurried(tmp_path: Path) -> Iterator[World]:
    w = make_world(tmp_path, request_timeout_seconds=0.3)
    yield w
    w.close()
    drop_database(w.settings.resolved_database_url)


def test_a_slow_database_read_through_the_api_is_a_counted_503(
    hurried: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    world = hurried
    report_id = world.submit("DEU")["id"]
    original = world.state.db.read

    async def slow_read(work: object) -> object:
        await asyncio.sleep(2)
        return await original(work)  # type: ignore[arg-type]

    monkeypatch.setattr(world.state.db, "read", slow_read)
    response = world.get("ITA", report_id)
    monkeypatch.undo()

    assert response.status_code == 503
    assert response.headers["content-type"].startswith("application/problem+json")
    metrics = world.http.get("/metrics").text
    assert 'route="/v1/reports/{report_id}",status="503"' in metrics
    assert world.get("ITA", report_id).status_code == 200
