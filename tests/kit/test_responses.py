"""A serialised response model is byte for byte what FastAPI itself would have sent."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import FastAPI, Response
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from app.kit.responses import serialized
from app.reports.schemas import Audience, ReportOut


def _report(title: str | None, body: str | None, audience: bool) -> ReportOut:
    out = ReportOut(
        id="0b6f4a52-3f0e-4d1e-9a53-2d4c1c8e2f10",
        version=2,
        originator="ITA",
        status="active",
        created_at=datetime(2026, 11, 29, 12, 0, 0, 123456, tzinfo=UTC),
        updated_at=datetime(2026, 11, 29, 12, 0, 1, tzinfo=UTC),
        classification="CONFIDENTIAL",
        tlp="AMBER",
        orcon=False,
        topics=["MOV.HAW"],
        grading=None,
        access="full",
        summary=None,
    )
    # Set after construction, as report_out does: unset fields stay out of the answer.
    if title is not None:
        out.title = title
    if body is not None:
        out.body = body
    if audience:
        out.audience = Audience(full=["ITA", "USA"], tearline=[])
    return out


def _clients(model: ReportOut) -> tuple[TestClient, TestClient]:
    theirs, ours = FastAPI(), FastAPI()

    @theirs.get("/r", response_model=ReportOut, response_model_exclude_unset=True)
    def framework() -> ReportOut:
        return model

    @ours.get("/r", response_model=ReportOut)
    def direct() -> Response:
        return serialized(model, headers={"ETag": '"2"'})

    return TestClient(theirs), TestClient(ours)


@settings(max_examples=40, deadline=None)
@given(
    title=st.one_of(st.none(), st.text(max_size=40)),
    body=st.one_of(st.none(), st.text(max_size=200)),
    audience=st.booleans(),
)
def test_the_bytes_equal_fastapis_own_serialisation(
    title: str | None, body: str | None, audience: bool
) -> None:
    model = _report(title, body, audience)
    theirs, ours = _clients(model)
    expected, got = theirs.get("/r"), ours.get("/r")
    assert got.content == expected.content
    assert got.headers["content-type"] == expected.headers["content-type"]
    assert got.headers["etag"] == '"2"'
    assert got.status_code == 200


def test_fields_never_set_are_absent() -> None:
    body = serialized(_report(None, None, audience=False)).body
    assert b'"title"' not in body
    assert b'"audience"' not in body
    assert b'"summary":null' in body
