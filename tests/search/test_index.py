"""The blind index: keyed digests per entity type, written with the report, rebuilt on rotation."""

from __future__ import annotations

import hashlib
import random

import pytest
from sqlalchemy import func, select, text

from app.db import transaction
from app.errors import Unprocessable
from app.kit import crypto
from app.reports.models import Report
from app.search.index import BlindIndex
from app.search.models import EntityIndex
from tests.conftest import World, report_body
from tests.search.test_access_requests import own_entities


def valid_iban(rng: random.Random | None = None) -> str:
    """A random Iraqi IBAN with correct mod-97 check digits."""
    rng = rng or random.Random()
    bban = "NBIQ" + "".join(rng.choice("0123456789") for _ in range(15))
    digits = "".join(str(int(c, 36)) for c in bban + "IQ00")
    return f"IQ{98 - int(digits) % 97:02d}{bban}"


def index_rows(world: World, report_id: str) -> list[tuple[str, bytes, str]]:
    with transaction(world.state.sessionmaker) as session:
        rows = session.execute(
            select(EntityIndex.entity_type, EntityIndex.digest, EntityIndex.key_id)
            .where(EntityIndex.report_id == report_id)
            .order_by(EntityIndex.entity_type, EntityIndex.digest)
        ).all()
    return [tuple(r) for r in rows]  # type: ignore[misc]


class TestBlindIndex:
    def test_the_same_text_digests_differently_per_entity_type(self) -> None:
        index = BlindIndex(crypto.new_key())
        assert index.entry("account", "ABC123").digest != index.entry("document", "ABC123").digest

    def test_spellings_of_one_entity_share_one_digest(self) -> None:
        index = BlindIndex(crypto.new_key())
        iban = valid_iban()
        spaced = " ".join(iban[i : i + 4] for i in range(0, len(iban), 4)).lower()
        assert index.entry("iban", iban) == index.entry("iban", spaced)
        assert index.entry("phone", "+964 770 123 4567") == index.entry(
            "phone", "00964-770-1234567"
        )

    def test_another_key_gives_other_digests_and_another_key_id(self) -> None:
        one, two = BlindIndex(crypto.new_key()), BlindIndex(crypto.new_key())
        assert one.key_id != two.key_id
        assert (
            one.entry("person", "Abu Example").digest != two.entry("person", "Abu Example").digest
        )

    def test_digest_is_not_a_plain_hash_of_the_value(self) -> None:
        index = BlindIndex(crypto.new_key())
        digest = index.entry("email", "broker@example.org").digest
        assert digest != hashlib.sha256(b"broker@example.org").digest()
        assert len(digest) == 32

    def test_invalid_entities_are_named_by_position_without_their_value(self) -> None:
        index = BlindIndex(crypto.new_key())

        class E:
            def __init__(self, type_: str, value: str) -> None:
                self.type, self.value = type_, value

        with pytest.raises(Unprocessable) as caught:
            index.entries([E("person", "Ok Name"), E("iban", "IQ00NBIQ000000000000001")], ("body",))
        assert [e["loc"] for e in caught.value.errors] == [["body", "1", "value"]]
        assert "IQ00" not in str(caught.value.body())

    def test_repr_shows_no_key(self) -> None:
        key = crypto.new_key()
        assert key.reveal().hex() not in repr(BlindIndex(key))


class TestIndexRows:
    def test_a_report_is_indexed_in_its_own_transaction_without_values(self, world: World) -> None:
        iban = valid_iban()
        created = world.submit(
            "DEU",
            entities=[
                {"type": "iban", "value": iban},
                {"type": "person", "value": "Abu Bakr al-Example"},
                {"type": "person", "value": "abou bakr el example"},  # the same person
            ],
        )
        rows = index_rows(world, created["id"])
        assert sorted(t for t, _, _ in rows) == ["iban", "person"]
        assert {k for _, _, k in rows} == {world.state.blind_index.key_id}
        with transaction(world.state.sessionmaker) as session:
            dump = session.execute(
                text("SELECT * FROM entity_index WHERE report_id = :id"), {"id": created["id"]}
            ).all()
        assert iban.encode() not in b"".join(
            v if isinstance(v, bytes) else str(v).encode() for row in dump for v in row
        )

    def test_each_row_carries_its_reports_originator(self, world: World) -> None:
        created = world.submit("JPN", entities=own_entities())
        with transaction(world.state.sessionmaker) as session:
            originators = session.scalars(
                select(EntityIndex.originator).where(EntityIndex.report_id == created["id"])
            ).all()
        assert originators
        assert set(originators) == {"JPN"}

    def test_an_invalid_iban_is_refused_and_nothing_is_written(self, world: World) -> None:
        with transaction(world.state.sessionmaker) as session:
            before = session.scalar(select(func.count()).select_from(Report))
        response = world.http.post(
            "/v1/reports",
            json=report_body(entities=[{"type": "iban", "value": "IQ12NBIQ000000000000001"}]),
            headers=world.headers("DEU"),
        )
        assert response.status_code == 422
        assert response.json()["errors"][0]["loc"] == ["body", "entities", "0", "value"]
        assert "IQ12NBIQ" not in response.text
        with transaction(world.state.sessionmaker) as session:
            assert session.scalar(select(func.count()).select_from(Report)) == before

    def test_a_new_version_replaces_the_rows_and_a_purge_drops_them(self, world: World) -> None:
        first, second = valid_iban(), valid_iban()
        created = world.submit("DEU", entities=[{"type": "iban", "value": first}])
        index = world.state.blind_index
        updated = world.http.put(
            f"/v1/reports/{created['id']}",
            json=report_body(entities=[{"type": "iban", "value": second}]),
            headers={**world.headers("DEU"), "If-Match": '"1"'},
        )
        assert updated.status_code == 200, updated.text
        assert [d for _, d, _ in index_rows(world, created["id"])] == [
            index.entry("iban", second).digest
        ]
        purged = world.http.delete(f"/v1/reports/{created['id']}", headers=world.headers("DEU"))
        assert purged.status_code == 204
        assert index_rows(world, created["id"]) == []
