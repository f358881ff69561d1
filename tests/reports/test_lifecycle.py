"""A report's life after submission: versions, revocation, purge and its access log."""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import event, select

from app.audit.models import AuditEntry
from app.db import transaction
from app.keys.service import field_aad
from app.kit import crypto
from app.kit.crypto import CorruptionError
from app.reports.models import Report, ReportAccess, ReportKey, ReportVersion
from tests.conftest import World, report_body

MISSING = "00000000-0000-4000-8000-000000000000"


def put(world: World, code: str, report_id: str, if_match: str | None, **fields: Any) -> Any:
    headers = world.headers(code)
    if if_match is not None:
        headers["If-Match"] = if_match
    return world.http.put(f"/v1/reports/{report_id}", json=report_body(**fields), headers=headers)


def revoke(world: World, code: str, report_id: str, reason: str = "superseded") -> Any:
    return world.http.post(
        f"/v1/reports/{report_id}/revoke", json={"reason": reason}, headers=world.headers(code)
    )


def purge(world: World, code: str, report_id: str) -> Any:
    return world.http.delete(f"/v1/reports/{report_id}", headers=world.headers(code))


def versions_of(world: World, report_id: str) -> list[SimpleNamespace]:
    """Each version's stored ciphertext row and key row, side by side, oldest first."""
    with transaction(world.state.sessionmaker) as session:
        rows = session.execute(
            select(ReportVersion, ReportKey)
            .join(
                ReportKey,
                (ReportKey.report_id == ReportVersion.report_id)
                & (ReportKey.version == ReportVersion.version),
            )
            .where(ReportVersion.report_id == report_id)
            .order_by(ReportVersion.version)
        ).all()
        return [
            SimpleNamespace(
                version=v.version,
                title_ct=v.title_ct,
                body_ct=v.body_ct,
                key_version=k.key_version,
                wrapped_data_key=k.wrapped_data_key,
                destroyed_at=k.destroyed_at,
            )
            for v, k in rows
        ]


def readers_of(world: World, report_id: str) -> dict[str, str]:
    with transaction(world.state.sessionmaker) as session:
        rows = session.execute(
            select(ReportAccess.member_code, ReportAccess.level).where(
                ReportAccess.report_id == report_id
            )
        ).all()
    return dict(rows)


def actions_on(world: World, report_id: str) -> list[tuple[str, str]]:
    with transaction(world.state.sessionmaker) as session:
        rows = session.execute(
            select(AuditEntry.action, AuditEntry.decision)
            .where(AuditEntry.target == f"report:{report_id}")
            .order_by(AuditEntry.id)
        ).all()
    return [(a, d) for a, d in rows]


def listed(world: World, code: str) -> set[str]:
    response = world.http.get("/v1/reports?limit=100", headers=world.headers(code))
    assert response.status_code == 200
    return {item["id"] for item in response.json()["items"]}


class TestUpdate:
    def test_an_update_makes_the_next_version_and_decides_access_again(self, world: World) -> None:
        created = world.submit("USA", releasable_to=["ALL"], title="First take")
        assert world.get("DEU", created["id"]).json()["access"] == "full"

        response = put(
            world, "USA", created["id"], '"1"', releasable_to=["CHAIRS"], title="Second take"
        )

        assert response.status_code == 200, response.text
        assert response.headers["etag"] == '"2"'
        body = response.json()
        assert body["version"] == 2
        assert body["title"] == "Second take"
        assert "DEU" not in body["audience"]["full"]
        assert "ITA" in body["audience"]["full"]
        assert world.get("DEU", created["id"]).json()["access"] == "tearline"
        assert world.get("ITA", created["id"]).json()["title"] == "Second take"
        assert ("report.update", "allow") in actions_on(world, created["id"])

    def test_each_version_has_a_data_key_of_its_own(self, world: World) -> None:
        created = world.submit("USA")
        assert put(world, "USA", created["id"], '"1"').status_code == 200

        first, second = versions_of(world, created["id"])

        assert first.wrapped_data_key != second.wrapped_data_key
        assert first.body_ct != second.body_ct

    def test_get_gives_the_etag_that_if_match_expects(self, world: World) -> None:
        created = world.submit("USA")
        etag = world.get("USA", created["id"]).headers["etag"]

        assert put(world, "USA", created["id"], etag).status_code == 200
        assert world.get("USA", created["id"]).headers["etag"] == '"2"'

    def test_a_stale_if_match_is_refused_with_412_and_changes_nothing(self, world: World) -> None:
        created = world.submit("USA")
        assert put(world, "USA", created["id"], '"1"').status_code == 200

        stale = put(world, "USA", created["id"], '"1"', title="Lost update")

        assert stale.status_code == 412
        assert stale.headers["content-type"].startswith("application/problem+json")
        assert len(versions_of(world, created["id"])) == 2
        assert world.get("USA", created["id"]).json()["title"] != "Lost update"
        assert ("report.update", "deny") in actions_on(world, created["id"])

    @pytest.mark.parametrize("if_match", ["1", '"x"', 'W/"1"', '"01x"'])
    def test_an_if_match_that_names_no_version_is_refused(
        self, world: World, if_match: str
    ) -> None:
        created = world.submit("USA")

        assert put(world, "USA", created["id"], if_match).status_code == 412

    def test_if_match_star_asks_only_that_the_report_exist(self, world: World) -> None:
        created = world.submit("USA")

        assert put(world, "USA", created["id"], "*").status_code == 200

    def test_an_update_without_if_match_is_refused_with_428(self, world: World) -> None:
        created = world.submit("USA")

        response = put(world, "USA", created["id"], None)

        assert response.status_code == 428
        assert len(versions_of(world, created["id"])) == 1

    def test_an_invalid_update_writes_nothing(self, world: World) -> None:
        created = world.submit("USA")

        response = put(world, "USA", created["id"], '"1"', topics=["NOT.A.TOPIC"])

        assert response.status_code == 422
        assert len(versions_of(world, created["id"])) == 1

    def test_another_member_gets_403_if_it_can_read_and_404_if_it_cannot(
        self, world: World
    ) -> None:
        created = world.submit("USA", releasable_to=["CHAIRS"], summary=None)

        assert put(world, "ITA", created["id"], '"1"').status_code == 403
        hidden = put(world, "NZL", created["id"], '"1"')
        missing = put(world, "NZL", MISSING, '"1"')
        assert hidden.status_code == missing.status_code == 404
        assert hidden.json() == missing.json()
        assert len(versions_of(world, created["id"])) == 1

    def test_a_revoked_report_cannot_be_changed(self, world: World) -> None:
        created = world.submit("USA")
        assert revoke(world, "USA", created["id"]).status_code == 200

        assert put(world, "USA", created["id"], '"1"').status_code == 409

    def test_of_two_concurrent_updates_of_one_version_exactly_one_wins(self, world: World) -> None:
        created = world.submit("USA")
        world.token("USA")

        with ThreadPoolExecutor(4) as pool:
            statuses = sorted(
                pool.map(
                    lambda n: (
                        put(world, "USA", created["id"], '"1"', title=f"take {n}").status_code
                    ),
                    range(4),
                )
            )

        assert statuses == [200, 412, 412, 412]
        assert len(versions_of(world, created["id"])) == 2

    def test_an_update_racing_a_revocation_never_brings_the_report_back(self, world: World) -> None:
        created = world.submit("USA")
        world.token("USA")

        with ThreadPoolExecutor(2) as pool:
            updating = pool.submit(put, world, "USA", created["id"], '"1"')
            revoking = pool.submit(revoke, world, "USA", created["id"])
            outcomes = {updating.result().status_code, revoking.result().status_code}

        assert outcomes <= {200, 409}
        assert world.get("USA", created["id"]).json()["status"] == "revoked"
        assert world.get("DEU", created["id"]).status_code == 404


class TestVersions:
    def test_the_originator_reads_every_version_with_its_markings(self, world: World) -> None:
        created = world.submit("USA", title="v1", classification="RESTRICTED")
        put(world, "USA", created["id"], '"1"', title="v2", classification="SECRET")

        response = world.http.get(
            f"/v1/reports/{created['id']}/versions", headers=world.headers("USA")
        )

        assert response.status_code == 200
        items = response.json()["items"]
        assert [(i["version"], i["title"]) for i in items] == [(2, "v2"), (1, "v1")]
        assert [i["markings"]["classification"] for i in items] == ["SECRET", "RESTRICTED"]
        assert items[1]["entities"] == report_body()["entities"]
        assert ("report.versions", "allow") in actions_on(world, created["id"])

    def test_readers_other_than_the_originator_never_see_earlier_versions(
        self, world: World
    ) -> None:
        created = world.submit("USA", releasable_to=["ALL"])

        response = world.http.get(
            f"/v1/reports/{created['id']}/versions", headers=world.headers("DEU")
        )

        assert response.status_code == 403


class TestRevoke:
    def test_a_revoked_report_is_gone_for_everyone_else_at_once(self, world: World) -> None:
        created = world.submit("USA", releasable_to=["ALL"])
        assert world.get("DEU", created["id"]).status_code == 200
        assert created["id"] in listed(world, "DEU")

        response = revoke(world, "USA", created["id"], reason="source compromised")

        assert response.status_code == 200
        assert response.json()["status"] == "revoked"
        assert world.get("DEU", created["id"]).status_code == 404
        assert created["id"] not in listed(world, "DEU")
        assert readers_of(world, created["id"]) == {"USA": "full"}
        assert world.get("USA", created["id"]).json()["status"] == "revoked"

    def test_revoking_twice_is_harmless(self, world: World) -> None:
        created = world.submit("USA")
        assert revoke(world, "USA", created["id"]).status_code == 200

        again = revoke(world, "USA", created["id"])

        assert again.status_code == 200
        assert again.json()["status"] == "revoked"

    def test_the_reason_is_audited_as_a_digest_never_in_clear(self, world: World) -> None:
        created = world.submit("USA")
        reason = "source ALPHA in Mosul compromised"

        assert revoke(world, "USA", created["id"], reason=reason).status_code == 200

        with transaction(world.state.sessionmaker) as session:
            reasons = session.scalars(
                select(AuditEntry.reasons).where(
                    AuditEntry.target == f"report:{created['id']}",
                    AuditEntry.action == "report.revoke",
                )
            ).one()
        assert not any("Mosul" in r for r in reasons)
        digest = hashlib.sha256(reason.encode()).hexdigest()[:32]
        assert f"reason_sha256:{digest}" in reasons

    def test_a_revocation_needs_a_reason(self, world: World) -> None:
        created = world.submit("USA")

        response = world.http.post(
            f"/v1/reports/{created['id']}/revoke", json={}, headers=world.headers("USA")
        )

        assert response.status_code == 422
        assert world.get("USA", created["id"]).json()["status"] == "active"


class TestPurge:
    def test_after_a_purge_no_copy_of_the_ciphertext_can_be_decrypted(self, world: World) -> None:
        created = world.submit("USA", title="To be shredded")
        put(world, "USA", created["id"], '"1"', title="Also shredded")
        copies = versions_of(world, created["id"])
        assert all(v.title_ct for v in copies)

        response = purge(world, "USA", created["id"])

        assert response.status_code == 204
        envelope = world.state.envelope
        for copy, stored in zip(copies, versions_of(world, created["id"]), strict=True):
            # Every key the service holds now, against the ciphertext kept from before.
            assert stored.wrapped_data_key is None
            assert stored.destroyed_at is not None
            assert stored.title_ct is None
            assert copy.title_ct is not None
            with world.state.db.read_engine.connect() as conn, pytest.raises(CorruptionError):
                envelope.open_data_key(
                    conn,
                    report_id=created["id"],
                    version=copy.version,
                    originator="USA",
                    member_key_version=copy.key_version,
                    wrapped=stored.wrapped_data_key,
                )
            # Before the purge the same call opened it: the key, not the code path, is gone.
            with world.state.db.read_engine.connect() as conn:
                key = envelope.open_data_key(
                    conn,
                    report_id=created["id"],
                    version=copy.version,
                    originator="USA",
                    member_key_version=copy.key_version,
                    wrapped=copy.wrapped_data_key,
                )
            aad = field_aad(created["id"], copy.version, "USA", "title")
            assert crypto.aead_decrypt(key, copy.title_ct, aad).decode() in {
                "To be shredded",
                "Also shredded",
            }

    def test_a_purged_report_leaves_a_tombstone_for_its_originator_only(self, world: World) -> None:
        created = world.submit("USA", releasable_to=["ALL"])

        assert purge(world, "USA", created["id"]).status_code == 204

        tombstone = world.get("USA", created["id"])
        assert tombstone.status_code == 200
        assert tombstone.json()["status"] == "purged"
        assert "title" not in tombstone.json()
        assert tombstone.json()["summary"] is None
        assert world.get("DEU", created["id"]).status_code == 404
        with transaction(world.state.sessionmaker) as session:
            assert session.get(Report, created["id"]) is not None
        versions = world.http.get(
            f"/v1/reports/{created['id']}/versions", headers=world.headers("USA")
        ).json()["items"]
        assert versions[0]["title"] is None
        assert versions[0]["body"] is None
        assert ("report.purge", "allow") in actions_on(world, created["id"])

    def test_purging_twice_is_harmless_and_a_purged_report_cannot_change(
        self, world: World
    ) -> None:
        created = world.submit("USA")
        assert purge(world, "USA", created["id"]).status_code == 204

        assert purge(world, "USA", created["id"]).status_code == 204
        assert put(world, "USA", created["id"], '"1"').status_code == 409
        assert revoke(world, "USA", created["id"]).status_code == 409

    def test_only_the_originator_can_purge(self, world: World) -> None:
        created = world.submit("USA", releasable_to=["CHAIRS"], summary=None)

        assert purge(world, "ITA", created["id"]).status_code == 403
        assert purge(world, "NZL", created["id"]).status_code == 404
        assert world.get("ITA", created["id"]).status_code == 200


class TestAccessLog:
    def test_the_originator_sees_who_read_when_at_which_level_and_why(self, world: World) -> None:
        created = world.submit("USA", releasable_to=["ITA"], tearline_to=["ALL"])
        world.http.get(
            f"/v1/reports/{created['id']}",
            headers=world.headers("ITA", **{"Tearline-Purpose": "case 42"}),
        )
        world.get("DEU", created["id"])
        world.get("NZL", MISSING)  # someone else's miss is not in this log

        response = world.http.get(
            f"/v1/reports/{created['id']}/access-log", headers=world.headers("USA")
        )

        assert response.status_code == 200
        items = response.json()["items"]
        reads = [(i["member"], i["level"], i["purpose"]) for i in items]
        assert reads == [("DEU", "tearline", None), ("ITA", "full", "case 42")]

    def test_the_access_log_pages_newest_first_without_repeats(self, world: World) -> None:
        created = world.submit("USA", releasable_to=["ALL"])
        for code in ("ITA", "DEU", "FRA", "GBR"):
            world.get(code, created["id"])
        url = f"/v1/reports/{created['id']}/access-log?limit=2"

        seen: list[str] = []
        cursor: str | None = None
        while True:
            page = world.http.get(
                url + (f"&cursor={cursor}" if cursor else ""), headers=world.headers("USA")
            ).json()
            seen += [i["member"] for i in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break

        assert seen == ["GBR", "FRA", "DEU", "ITA"]

    @pytest.mark.parametrize("cursor", ["abc", "%C2%B2", "-1", "1" * 19])
    def test_a_bad_cursor_is_a_422(self, world: World, cursor: str) -> None:
        created = world.submit("USA")

        response = world.http.get(
            f"/v1/reports/{created['id']}/access-log?cursor={cursor}",
            headers=world.headers("USA"),
        )

        assert response.status_code == 422


class TestNoExistenceOracle:
    @pytest.mark.parametrize(
        ("method", "suffix", "body"),
        [
            ("PUT", "", report_body()),
            ("POST", "/revoke", {"reason": "x"}),
            ("DELETE", "", None),
            ("GET", "/versions", None),
            ("GET", "/access-log", None),
        ],
    )
    def test_missing_and_hidden_reports_take_the_same_statements(
        self, world: World, method: str, suffix: str, body: Any
    ) -> None:
        hidden = world.submit("USA", releasable_to=["CHAIRS"], summary=None)["id"]
        world.token("NZL")

        def statements_for(report_id: str) -> tuple[int, Any]:
            seen: list[str] = []

            def count(*_: Any) -> None:
                seen.append("x")

            engines = (world.state.db.engine, world.state.db.read_engine)
            for engine in engines:
                event.listen(engine, "before_cursor_execute", count)
            try:
                response = world.http.request(
                    method,
                    f"/v1/reports/{report_id}{suffix}",
                    json=body,
                    headers={**world.headers("NZL"), "If-Match": '"1"'},
                )
            finally:
                for engine in engines:
                    event.remove(engine, "before_cursor_execute", count)
            return len(seen), response

        hidden_count, hidden_response = statements_for(hidden)
        missing_count, missing_response = statements_for(MISSING)

        assert hidden_response.status_code == missing_response.status_code == 404
        assert hidden_response.json() == missing_response.json()
        assert hidden_count == missing_count
