"""Report content at rest, attacked in the real database: nothing in clear, nothing moved served.

These tests damage stored rows, so they run in a world of their own: a tampered report would
break every later listing of whoever may read it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import inspect, select, text, update

from app.db import transaction
from app.keys.service import field_aad
from app.kit.crypto import CorruptionError
from app.reports.models import ReportKey, ReportVersion
from tests.conftest import World, drop_database, make_world, report_body

PROBLEM = "application/problem+json"
CIPHERTEXT_COLUMNS = ("title_ct", "body_ct", "summary_ct", "entities_ct")
NONCE = 12
TAG = 16


@pytest.fixture(scope="module")
def vault(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    w = make_world(Path(tmp_path_factory.mktemp("vault")))
    yield w
    w.close()
    drop_database(w.settings.resolved_database_url)


def marked_report(**overrides: Any) -> dict[str, Any]:
    """A report whose every content field carries its own unique marker."""
    tag = uuid.uuid4().hex[:12].upper()
    fields: dict[str, Any] = {
        "title": f"TITLE{tag} hawala broker",
        "body": f"BODY{tag} settles through gold shipments.",
        "summary": f"SUMMARY{tag} gold settlement.",
        "entities": [
            {"type": "person", "value": f"PERSON{tag} al-Example"},
            {"type": "account", "value": f"ACCOUNT{tag}", "label": f"LABEL{tag}"},
        ],
    }
    fields.update(overrides)
    return report_body(**fields)


def secrets_of(body: dict[str, Any]) -> list[str]:
    values = [body["title"], body["body"], body["summary"]]
    for entity in body["entities"]:
        values.append(entity["value"])
        if "label" in entity:
            values.append(entity["label"])
    return values


def as_bytes(value: Any) -> bytes:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    return str(value).encode("utf-8", "surrogatepass")


KEY_COLUMNS = ("key_member", "key_version", "wrapped_data_key")


def stored_version(world: World, report_id: str) -> SimpleNamespace:
    """A report's one version as stored: its ciphertext row and its key row, side by side."""
    with transaction(world.state.sessionmaker) as session:
        version = session.scalars(
            select(ReportVersion).where(ReportVersion.report_id == report_id)
        ).one()
        key = session.scalars(select(ReportKey).where(ReportKey.report_id == report_id)).one()
        fields = {c: getattr(version, c) for c in ReportVersion.__table__.columns.keys()}  # noqa: SIM118 - names, not columns
        fields |= {c: getattr(key, c) for c in KEY_COLUMNS}
    return SimpleNamespace(**fields)


def rewrite(world: World, report_id: str, **values: Any) -> None:
    """Overwrite stored columns of a report's version (content or key) behind the service's back."""
    keys = {c: v for c, v in values.items() if c in KEY_COLUMNS}
    content = {c: v for c, v in values.items() if c not in KEY_COLUMNS}
    with transaction(world.state.sessionmaker) as session:
        if content:
            session.execute(
                update(ReportVersion).where(ReportVersion.report_id == report_id).values(**content)
            )
        if keys:
            session.execute(
                update(ReportKey).where(ReportKey.report_id == report_id).values(**keys)
            )


def flip_bit(blob: bytes, position: int) -> bytes:
    damaged = bytearray(blob)
    damaged[position] ^= 0x01
    return bytes(damaged)


def assert_refused(response: Any, submitted: dict[str, Any]) -> None:
    """Not served: a server-side problem naming corruption, with none of the content in it."""
    assert response.status_code == 500, response.text
    assert response.headers["content-type"] == PROBLEM
    assert "corrupt" in response.json()["type"]
    for secret in secrets_of(submitted):
        assert secret not in response.text


class TestContentAtRest:
    def test_version_row_holds_no_plaintext_in_any_column(self, vault: World) -> None:
        submitted = marked_report()
        created = vault.submit("ITA", **submitted)
        with transaction(vault.state.sessionmaker) as session:
            row = (
                session.execute(
                    text("SELECT * FROM report_versions WHERE report_id = :id"),
                    {"id": created["id"]},
                )
                .mappings()
                .one()
            )

        stored = b"\x00".join(as_bytes(v) for v in row.values())
        for secret in secrets_of(submitted):
            assert secret.encode() not in stored
            # Not merely re-encoded either: no column is the plaintext in another encoding.
            assert secret.encode("utf-16-le") not in stored

    def test_no_table_holds_report_content_in_clear(self, vault: World) -> None:
        submitted = marked_report()
        vault.submit("ITA", **submitted)
        vault.get("DEU", vault.submit("ITA", **submitted)["id"])
        tables = inspect(vault.state.engine).get_table_names()

        with transaction(vault.state.sessionmaker) as session:
            dump = b"".join(
                as_bytes(value)
                for table in tables
                for row in session.execute(text(f'SELECT * FROM "{table}"'))  # noqa: S608
                for value in row
            )

        for secret in secrets_of(submitted):
            assert secret.encode() not in dump

    def test_ciphertexts_carry_a_12_byte_nonce_and_a_16_byte_tag(self, vault: World) -> None:
        submitted = marked_report()
        created = vault.submit("ITA", **submitted)
        row = stored_version(vault, created["id"])

        for column, plain in (
            ("title_ct", submitted["title"]),
            ("body_ct", submitted["body"]),
            ("summary_ct", submitted["summary"]),
        ):
            blob = getattr(row, column)
            assert len(blob) == NONCE + len(plain.encode()) + TAG, column
        assert row.wrapped_data_key is not None
        assert len(row.wrapped_data_key) == NONCE + 32 + TAG

    def test_title_decrypts_only_under_its_own_report_version_and_field(self, vault: World) -> None:
        submitted = marked_report()
        created = vault.submit("ITA", **submitted)
        row = stored_version(vault, created["id"])
        with transaction(vault.state.sessionmaker) as session:
            key = vault.state.envelope.open_data_key(
                session,
                report_id=created["id"],
                version=1,
                originator="ITA",
                member_key_version=row.key_version,
                wrapped=row.wrapped_data_key,
            )
        aead = AESGCM(key.reveal())
        blob = row.title_ct
        assert blob is not None

        plain = aead.decrypt(
            blob[:NONCE], blob[NONCE:], field_aad(created["id"], 1, "ITA", "title")
        )
        assert plain.decode() == submitted["title"]
        for wrong in (
            field_aad(created["id"], 1, "ITA", "body"),
            field_aad(created["id"], 2, "ITA", "title"),
            field_aad(created["id"], 1, "DEU", "title"),
            field_aad(str(uuid.uuid4()), 1, "ITA", "title"),
        ):
            with pytest.raises(InvalidTag):
                aead.decrypt(blob[:NONCE], blob[NONCE:], wrong)

    def test_identical_reports_get_different_nonces(self, vault: World) -> None:
        submitted = marked_report()
        first = stored_version(vault, vault.submit("ITA", **submitted)["id"])
        second = stored_version(vault, vault.submit("ITA", **submitted)["id"])

        nonces = [
            getattr(row, column)[:NONCE]
            for row in (first, second)
            for column in (*CIPHERTEXT_COLUMNS, "wrapped_data_key")
        ]
        assert len(set(nonces)) == len(nonces)
        assert first.title_ct != second.title_ct

    def test_each_report_version_has_its_own_data_key(self, vault: World) -> None:
        submitted = marked_report()
        ids = [vault.submit("ITA", **submitted)["id"] for _ in range(3)]
        rows = [stored_version(vault, rid) for rid in ids]

        with transaction(vault.state.sessionmaker) as session:
            keys = [
                vault.state.envelope.open_data_key(
                    session,
                    report_id=rid,
                    version=row.version,
                    originator="ITA",
                    member_key_version=row.key_version,
                    wrapped=row.wrapped_data_key,
                ).reveal()
                for rid, row in zip(ids, rows, strict=True)
            ]
        assert len({row.wrapped_data_key for row in rows}) == 3
        assert len(set(keys)) == 3
        assert all(len(k) == 32 for k in keys)

    def test_wrapped_data_key_opens_only_for_its_own_report(self, vault: World) -> None:
        own = vault.submit("ITA", **marked_report())["id"]
        other = vault.submit("ITA", **marked_report())["id"]
        row = stored_version(vault, own)

        with (
            transaction(vault.state.sessionmaker) as session,
            pytest.raises(CorruptionError),
        ):
            vault.state.envelope.open_data_key(
                session,
                report_id=other,
                version=1,
                originator="ITA",
                member_key_version=row.key_version,
                wrapped=row.wrapped_data_key,
            )


# Where a flipped bit lands: in the nonce, in the ciphertext proper, in the tag.
POSITIONS = {"nonce": 0, "ciphertext": NONCE, "tag": -1}


class TestTamperedContentIsRefused:
    @pytest.mark.parametrize("position", POSITIONS.values(), ids=POSITIONS.keys())
    @pytest.mark.parametrize("column", [*CIPHERTEXT_COLUMNS, "wrapped_data_key"])
    def test_flipped_bit_is_refused_not_served(
        self, vault: World, column: str, position: int
    ) -> None:
        submitted = marked_report()
        created = vault.submit("ITA", **submitted)
        original = getattr(stored_version(vault, created["id"]), column)
        rewrite(vault, created["id"], **{column: flip_bit(original, position)})

        assert_refused(vault.get("ITA", created["id"]), submitted)
        assert_refused(vault.get("DEU", created["id"]), submitted)

    def test_tampered_summary_is_refused_to_a_tearline_reader(self, vault: World) -> None:
        submitted = marked_report()
        created = vault.submit("ITA", **submitted)
        original = stored_version(vault, created["id"]).summary_ct
        rewrite(vault, created["id"], summary_ct=flip_bit(original, NONCE + 1))

        assert_refused(vault.get("FATF", created["id"]), submitted)

    def test_truncated_ciphertext_is_refused(self, vault: World) -> None:
        submitted = marked_report()
        created = vault.submit("ITA", **submitted)
        original = stored_version(vault, created["id"]).title_ct
        assert original is not None
        rewrite(vault, created["id"], title_ct=original[: NONCE + 4])

        assert_refused(vault.get("ITA", created["id"]), submitted)

    @pytest.mark.parametrize("column", CIPHERTEXT_COLUMNS)
    def test_ciphertext_copied_from_another_report_is_refused(
        self, vault: World, column: str
    ) -> None:
        source = marked_report()
        target = marked_report()
        a = vault.submit("ITA", **source)
        b = vault.submit("ITA", **target)
        rewrite(vault, b["id"], **{column: getattr(stored_version(vault, a["id"]), column)})

        response = vault.get("ITA", b["id"])
        assert_refused(response, target)
        assert_refused(response, source)

    def test_whole_version_row_copied_from_another_report_is_refused(self, vault: World) -> None:
        source = marked_report()
        target = marked_report()
        a = vault.submit("ITA", **source)
        b = vault.submit("ITA", **target)
        row = stored_version(vault, a["id"])
        rewrite(
            vault,
            b["id"],
            wrapped_data_key=row.wrapped_data_key,
            **{column: getattr(row, column) for column in CIPHERTEXT_COLUMNS},
        )

        response = vault.get("ITA", b["id"])
        assert_refused(response, source)
        assert_refused(response, target)

    def test_wrapped_key_copied_from_another_report_is_refused(self, vault: World) -> None:
        target = marked_report()
        a = vault.submit("ITA", **marked_report())
        b = vault.submit("ITA", **target)
        rewrite(vault, b["id"], wrapped_data_key=stored_version(vault, a["id"]).wrapped_data_key)

        assert_refused(vault.get("ITA", b["id"]), target)

    @pytest.mark.parametrize(
        ("source", "destination"),
        [("title_ct", "body_ct"), ("body_ct", "title_ct"), ("summary_ct", "title_ct")],
    )
    def test_ciphertext_moved_to_another_field_is_refused(
        self, vault: World, source: str, destination: str
    ) -> None:
        submitted = marked_report()
        created = vault.submit("ITA", **submitted)
        row = stored_version(vault, created["id"])
        rewrite(vault, created["id"], **{destination: getattr(row, source)})

        assert_refused(vault.get("ITA", created["id"]), submitted)

    def test_ciphertexts_swapped_between_fields_are_refused(self, vault: World) -> None:
        submitted = marked_report()
        created = vault.submit("ITA", **submitted)
        row = stored_version(vault, created["id"])
        rewrite(vault, created["id"], title_ct=row.summary_ct, summary_ct=row.title_ct)

        assert_refused(vault.get("ITA", created["id"]), submitted)
        assert_refused(vault.get("FATF", created["id"]), submitted)

    def test_copy_to_another_originators_report_is_refused(self, vault: World) -> None:
        source = marked_report()
        target = marked_report()
        a = vault.submit("ITA", **source)
        b = vault.submit("FRA", **target)
        row = stored_version(vault, a["id"])
        rewrite(vault, b["id"], title_ct=row.title_ct, summary_ct=row.summary_ct)

        response = vault.get("FRA", b["id"])
        assert_refused(response, source)
        assert_refused(response, target)


class TestTamperedContentInListings:
    @pytest.mark.parametrize(
        ("column", "readers"),
        [("title_ct", ("ITA", "DEU")), ("summary_ct", ("ITA", "DEU", "FATF"))],
    )
    def test_listing_never_serves_tampered_content(
        self, fresh_world: World, column: str, readers: tuple[str, ...]
    ) -> None:
        submitted = marked_report()
        created = fresh_world.submit("ITA", **submitted)
        original = getattr(stored_version(fresh_world, created["id"]), column)
        rewrite(fresh_world, created["id"], **{column: flip_bit(original, NONCE + 2)})

        for code in readers:
            response = fresh_world.http.get("/v1/reports", headers=fresh_world.headers(code))
            assert_refused(response, submitted)
