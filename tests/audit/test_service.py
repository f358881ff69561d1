"""Audit entries: one per decision, in the action's transaction, with no content and no tokens."""

from __future__ import annotations

import re
import uuid
from typing import Any

import pytest
from sqlalchemy import func, select, text

from app.audit import service as audit
from app.audit.models import AuditEntry
from app.auth.client import make_assertion
from app.db import transaction
from tests.conftest import ASSERTION_TYPE, World, report_body

CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def entries_of(world: World, response: Any) -> list[AuditEntry]:
    """The entries written by the request that produced `response`, oldest first."""
    request_id = response.headers["x-request-id"]
    with transaction(world.state.sessionmaker) as session:
        rows = list(
            session.scalars(
                select(AuditEntry)
                .where(AuditEntry.request_id == request_id)
                .order_by(AuditEntry.id)
            )
        )
        session.expunge_all()
    return rows


def only_entry(world: World, response: Any) -> AuditEntry:
    entries = entries_of(world, response)
    assert len(entries) == 1, [(e.action, e.decision) for e in entries]
    return entries[0]


def last_entry_id(world: World) -> int:
    with transaction(world.state.sessionmaker) as session:
        return int(session.scalar(select(func.max(AuditEntry.id))) or 0)


def raw_entries_after(world: World, entry_id: int) -> list[str]:
    """Every column of every later entry, as the text the database holds."""
    with transaction(world.state.sessionmaker) as session:
        rows = session.execute(
            text("SELECT * FROM audit_entries WHERE id > :id ORDER BY id"), {"id": entry_id}
        ).all()
    return [" | ".join(str(value) for value in row) for row in rows]


def policy_hash(world: World) -> str:
    return world.state.policy.bundle.hash


def chairs_only(**overrides: Any) -> dict[str, Any]:
    return report_body(releasable_to=["CHAIRS"], tearline_to=["CHAIRS"], **overrides)


def token_request(world: World, assertion: str) -> Any:
    return world.http.post(
        "/v1/auth/token",
        data={
            "grant_type": "client_credentials",
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": assertion,
        },
    )


class TestEncodeControls:
    @pytest.mark.parametrize(
        ("raw", "encoded"),
        [
            ("a\x07b", "a\\u0007b"),
            ("line\nforged", "line\\u000aforged"),
            ("\r\n", "\\u000d\\u000a"),
            ("tab\t", "tab\\u0009"),
            ("nul\x00", "nul\\u0000"),
            ("del\x7f", "del\\u007f"),
            ("c1\x85\x9b", "c1\\u0085\\u009b"),
            ("sep\u2028\u2029", "sep\\u2028\\u2029"),
        ],
        ids=["bel", "lf", "crlf", "tab", "nul", "del", "c1", "unicode-separators"],
    )
    def test_control_characters_become_visible_escapes(self, raw: str, encoded: str) -> None:
        assert audit.encode_controls(raw) == encoded

    @pytest.mark.parametrize(
        "plain", ["checking a lead", "Ünïcödé", "تمويل الإرهاب", 'quote " and \\ slash', ""]
    )
    def test_printable_text_is_kept_as_is(self, plain: str) -> None:
        assert audit.encode_controls(plain) == plain


class TestRecordRefusal:
    def test_refusal_survives_the_rollback_of_its_request(self, world: World) -> None:
        target = f"test:{uuid.uuid4().hex}"

        def refuse_then_fail() -> None:
            with transaction(world.state.sessionmaker) as session:
                audit.record(session, audit.ANONYMOUS, audit.Entry("test.act", "allow", target))
                audit.record_refusal(
                    session, audit.ANONYMOUS, audit.Entry("test.deny", "deny", target)
                )
                raise RuntimeError

        with pytest.raises(RuntimeError):
            refuse_then_fail()

        with transaction(world.state.sessionmaker) as session:
            kept = session.scalars(select(AuditEntry.action).where(AuditEntry.target == target))
            assert list(kept) == ["test.deny"]

    def test_refusal_in_a_committed_request_is_written_once(self, world: World) -> None:
        target = f"test:{uuid.uuid4().hex}"
        with transaction(world.state.sessionmaker) as session:
            audit.record_refusal(session, audit.ANONYMOUS, audit.Entry("test.deny", "deny", target))

        with transaction(world.state.sessionmaker) as session:
            count = session.scalar(
                select(func.count()).select_from(AuditEntry).where(AuditEntry.target == target)
            )
            assert count == 1


class TestRecordedActions:
    def test_token_issue_is_recorded(self, world: World) -> None:
        response = world.request_token("DEU")
        assert response.status_code == 200

        entry = only_entry(world, response)
        assert (entry.action, entry.decision) == ("auth.token", "allow")
        assert (entry.actor, entry.client) == ("DEU", "DEU.test")
        assert entry.target == "client:DEU.test"
        assert entry.request_id == response.headers["x-request-id"]
        assert "scope:reports:read" in entry.reasons

    def test_token_failure_is_recorded_without_identity(self, world: World) -> None:
        assertion = make_assertion(world.client_id("DEU"), world.keys["DEU"], "http://elsewhere")
        response = token_request(world, assertion)
        assert response.status_code == 401

        entry = only_entry(world, response)
        assert (entry.action, entry.decision) == ("auth.token", "deny")
        assert entry.actor is None
        assert "invalid_client" in entry.reasons

    def test_replayed_assertion_is_recorded_as_a_failure(self, world: World) -> None:
        assertion = world.assertion("DEU")
        assert token_request(world, assertion).status_code == 200
        response = token_request(world, assertion)
        assert response.status_code == 401

        entry = only_entry(world, response)
        assert (entry.action, entry.decision) == ("auth.token", "deny")

    def test_report_create_is_recorded(self, world: World) -> None:
        # Entities of its own: the shared world's other reports would raise match alerts.
        own = [{"type": "person", "value": f"Person {uuid.uuid4().hex}"}]
        response = world.http.post(
            "/v1/reports", json=report_body(entities=own), headers=world.headers("ITA")
        )
        assert response.status_code == 201

        entry = only_entry(world, response)
        assert (entry.action, entry.decision) == ("report.create", "allow")
        assert (entry.actor, entry.client) == ("ITA", "ITA.test")
        assert entry.target == f"report:{response.json()['id']}"
        assert entry.policy_hash == policy_hash(world)
        assert "version:1" in entry.reasons

    def test_read_is_recorded_with_its_level(self, world: World) -> None:
        created = world.submit("ITA")
        full = world.get("DEU", created["id"])
        tearline = world.get("FATF", created["id"])

        for response, member, level in ((full, "DEU", "full"), (tearline, "FATF", "tearline")):
            entry = only_entry(world, response)
            assert (entry.action, entry.decision) == ("report.read", "allow")
            assert (entry.actor, entry.client) == (member, f"{member}.test")
            assert entry.target == f"report:{created['id']}"
            assert f"level:{level}" in entry.reasons
            assert entry.policy_hash == policy_hash(world)
            assert entry.request_id == response.headers["x-request-id"]

    def test_read_of_a_hidden_report_is_recorded_as_a_denial(self, world: World) -> None:
        hidden = world.submit("ITA", **chairs_only())
        response = world.get("DEU", hidden["id"])
        assert response.status_code == 404

        entry = only_entry(world, response)
        assert (entry.action, entry.decision) == ("report.read", "deny")
        assert (entry.actor, entry.client) == ("DEU", "DEU.test")
        assert entry.target == f"report:{hidden['id']}"
        assert "level:none" in entry.reasons
        assert entry.policy_hash == policy_hash(world)

    def test_read_of_an_unknown_report_is_recorded_like_a_hidden_one(self, world: World) -> None:
        unknown = str(uuid.uuid4())
        response = world.get("DEU", unknown)

        entry = only_entry(world, response)
        assert (entry.action, entry.decision, entry.target) == (
            "report.read",
            "deny",
            f"report:{unknown}",
        )

    def test_list_records_the_listing_and_each_listed_report(self, world: World) -> None:
        world.submit("ITA")
        world.submit("FRA")
        response = world.http.get("/v1/reports", params={"limit": 5}, headers=world.headers("DEU"))
        listed = [item["id"] for item in response.json()["items"]]
        assert listed

        entries = entries_of(world, response)
        lists = [e for e in entries if e.action == "report.list"]
        items = [e for e in entries if e.action == "report.list_item"]
        assert len(lists) == 1
        assert len(entries) == 1 + len(items)
        assert lists[0].reasons == [f"items:{len(listed)}"]
        assert sorted(e.target or "" for e in items) == sorted(f"report:{i}" for i in listed)
        for entry in entries:
            assert entry.decision == "allow"
            assert (entry.actor, entry.client) == ("DEU", "DEU.test")
            assert entry.policy_hash == policy_hash(world)

    def test_preview_is_recorded(self, world: World) -> None:
        response = world.http.post(
            "/v1/reports/preview", json=report_body(), headers=world.headers("ITA")
        )
        assert response.status_code == 200

        entry = only_entry(world, response)
        assert (entry.action, entry.decision) == ("report.preview", "allow")
        assert (entry.actor, entry.client) == ("ITA", "ITA.test")
        assert entry.policy_hash == policy_hash(world)

    def test_missing_scope_is_recorded_as_a_denial(self, world: World) -> None:
        response = world.http.post(
            "/v1/reports", json=report_body(), headers=world.headers("ITA", scope="reports:read")
        )
        assert response.status_code == 403

        entry = only_entry(world, response)
        assert (entry.action, entry.decision) == ("auth.scope", "deny")
        assert (entry.actor, entry.client) == ("ITA", "ITA.test")
        assert entry.target == "route:POST /v1/reports"
        assert entry.reasons == ["missing:reports:write"]

    def test_rejected_token_is_recorded_anonymously(self, world: World) -> None:
        response = world.http.get("/v1/reports", headers={"Authorization": "Bearer not.a.token"})
        assert response.status_code == 401

        entry = only_entry(world, response)
        assert (entry.action, entry.decision) == ("auth.reject", "deny")
        assert (entry.actor, entry.client) == (None, None)
        assert entry.target == "route:GET /v1/reports"

    def test_request_id_of_the_entry_is_the_one_answered(self, world: World) -> None:
        supplied = f"trace-{uuid.uuid4().hex}"
        response = world.http.get(
            f"/v1/reports/{uuid.uuid4()}",
            headers=world.headers("DEU", **{"X-Request-Id": supplied}),
        )

        assert response.headers["x-request-id"] == supplied
        assert only_entry(world, response).request_id == supplied

    def test_unsafe_request_id_is_replaced_before_it_reaches_the_entry(self, world: World) -> None:
        response = world.http.get(
            f"/v1/reports/{uuid.uuid4()}",
            headers=world.headers("DEU", **{"X-Request-Id": "forged id;\tinjected"}),
        )

        request_id = response.headers["x-request-id"]
        assert request_id != "forged id;\tinjected"
        assert only_entry(world, response).request_id == request_id

    @pytest.mark.parametrize(
        "path", ["/v1/reports/%07bell", "/v1/reports/a%0Aforged", "/v1/reports/%1B%5B31m"]
    )
    def test_control_characters_in_a_requested_id_are_encoded(
        self, world: World, path: str
    ) -> None:
        response = world.http.get(path, headers=world.headers("DEU"))
        assert response.status_code == 404

        entry = only_entry(world, response)
        assert entry.target is not None
        assert entry.target == audit.encode_controls(entry.target)

    def test_control_characters_in_a_refused_path_are_encoded(self, world: World) -> None:
        response = world.http.get(
            "/v1/reports/a%0Aforged", headers={"Authorization": "Bearer nope"}
        )
        assert response.status_code == 401

        entry = only_entry(world, response)
        assert entry.target is not None
        assert entry.target == audit.encode_controls(entry.target)


class TestEntriesHoldNoContent:
    def test_no_entry_holds_report_content_or_a_token(self, world: World) -> None:
        tag = uuid.uuid4().hex[:12].upper()
        markers = {
            "title": f"TITLE{tag}",
            "body": f"BODY{tag}",
            "summary": f"SUMMARY{tag}",
            "entity": f"ENTITY{tag}",
            "label": f"LABEL{tag}",
        }
        body = report_body(
            title=markers["title"],
            body=markers["body"],
            summary=markers["summary"],
            entities=[{"type": "person", "value": markers["entity"], "label": markers["label"]}],
        )
        start = last_entry_id(world)
        idem = {"Idempotency-Key": uuid.uuid4().hex}

        created = world.http.post("/v1/reports", json=body, headers=world.headers("ITA", **idem))
        assert created.status_code == 201
        replay = world.http.post("/v1/reports", json=body, headers=world.headers("ITA", **idem))
        assert replay.status_code == 201
        report_id = created.json()["id"]
        assert world.get("DEU", report_id).status_code == 200
        assert world.get("FATF", report_id).status_code == 200
        assert world.get("GBR", report_id).status_code == 200
        preview = world.http.post("/v1/reports/preview", json=body, headers=world.headers("ITA"))
        assert preview.status_code == 200
        listing = world.http.get("/v1/reports", headers=world.headers("DEU"))
        assert listing.status_code == 200
        refused = world.http.post(
            "/v1/reports", json={**body, "topics": ["NOPE.NOPE"]}, headers=world.headers("ITA")
        )
        assert refused.status_code == 422
        scope_refused = world.http.post(
            "/v1/reports", json=body, headers=world.headers("ITA", scope="reports:read")
        )
        assert scope_refused.status_code == 403
        bad_token = f"{world.token('DEU')}x"
        assert (
            world.http.get("/v1/reports", headers={"Authorization": f"Bearer {bad_token}"})
        ).status_code == 401
        issued = world.request_token("GBR")
        assert issued.status_code == 200

        entries = raw_entries_after(world, start)
        assert len(entries) >= 10
        secrets = [
            *markers.values(),
            world.token("ITA"),
            world.token("DEU"),
            world.token("ITA", scope="reports:read"),
            bad_token,
            issued.json()["access_token"],
        ]
        for secret in secrets:
            for entry in entries:
                assert secret not in entry
        # Not even a recognisable part of a token (its signature).
        for token in secrets[len(markers) :]:
            signature = token.rsplit(".", 1)[-1]
            assert all(signature not in entry for entry in entries)


class TestPurpose:
    def test_purpose_is_recorded_with_the_read(self, world: World) -> None:
        created = world.submit("ITA")
        response = world.http.get(
            f"/v1/reports/{created['id']}",
            headers=world.headers("DEU", **{"Tearline-Purpose": "case 2024/17 sanctions review"}),
        )
        assert response.status_code == 200

        assert only_entry(world, response).purpose == "case 2024/17 sanctions review"

    def test_purpose_is_recorded_with_a_denial(self, world: World) -> None:
        hidden = world.submit("ITA", **chairs_only())
        response = world.http.get(
            f"/v1/reports/{hidden['id']}",
            headers=world.headers("DEU", **{"Tearline-Purpose": "curious"}),
        )
        assert response.status_code == 404

        entry = only_entry(world, response)
        assert (entry.decision, entry.purpose) == ("deny", "curious")

    @pytest.mark.parametrize(
        ("sent", "recorded"),
        [
            (b"a\x07b", "a\\u0007b"),
            (b"tab\tbed", "tab\\u0009bed"),
            (b"del\x7f", "del\\u007f"),
            (b"esc\x1b[31mred", "esc\\u001b[31mred"),
        ],
        ids=["bel", "tab", "del", "ansi"],
    )
    def test_control_characters_in_the_purpose_are_encoded(
        self, world: World, sent: bytes, recorded: str
    ) -> None:
        created = world.submit("ITA")
        headers: dict[str, Any] = {**world.headers("DEU"), "Tearline-Purpose": sent}
        response = world.http.get(f"/v1/reports/{created['id']}", headers=headers)
        assert response.status_code == 200

        assert only_entry(world, response).purpose == recorded

    def test_no_control_character_reaches_the_recorded_purpose(self, world: World) -> None:
        created = world.submit("ITA")
        sent = bytes(range(1, 32)) + b"\x7f" + bytes(range(0x80, 0xA0))
        headers: dict[str, Any] = {**world.headers("DEU"), "Tearline-Purpose": sent}
        response = world.http.get(f"/v1/reports/{created['id']}", headers=headers)
        assert response.status_code == 200

        purpose = only_entry(world, response).purpose
        assert purpose is not None
        assert not CONTROL.search(purpose), repr(purpose)

    @pytest.mark.parametrize("hidden", [False, True], ids=["allowed", "denied"])
    def test_longest_purpose_of_control_characters_is_recorded(
        self, world: World, hidden: bool
    ) -> None:
        created = world.submit("ITA", **(chairs_only() if hidden else {}))
        headers: dict[str, Any] = {**world.headers("DEU"), "Tearline-Purpose": b"\x07" * 200}
        response = world.http.get(f"/v1/reports/{created['id']}", headers=headers)

        assert response.status_code == (404 if hidden else 200)
        assert only_entry(world, response).purpose == "\\u0007" * 200

    def test_purpose_over_200_characters_is_refused(self, world: World) -> None:
        created = world.submit("ITA")
        response = world.http.get(
            f"/v1/reports/{created['id']}",
            headers=world.headers("DEU", **{"Tearline-Purpose": "p" * 201}),
        )

        assert response.status_code == 422
        assert response.headers["content-type"] == "application/problem+json"
