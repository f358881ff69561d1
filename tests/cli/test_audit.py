"""`tearline audit verify` and `tearline audit export`, run in-process on a world's database and
data directory (its keyring holds the service key the checkpoints are signed with)."""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import pytest
from sqlalchemy import Table, delete, select, update

from app.audit import service as audit
from app.audit.models import AuditEntry, AuditNode, AuditTree, Checkpoint
from app.db import transaction, utcnow
from app.kit import jwt
from app.kit.jwt import SigningKey
from tests.audit.conftest import audit_get, maintain_all
from tests.audit.test_verify import as_dba, run_verify
from tests.cli import invoke
from tests.conftest import World

entries = cast(Table, AuditEntry.__table__)
stored_checkpoints = cast(Table, Checkpoint.__table__)

SUMMARY = re.compile(
    r"^(ok|\d+ findings): ([\d,]+) entries, ([\d,]+) stored and ([\d,]+) saved checkpoints, "
    r"[\d,]+ tree nodes checked in [\d.]+ s \([\d,]+ entries/s\)$"
)
CSV_HEADER = (
    "index,time,actor,client,action,target,decision,reasons,policy_hash,purpose,request_id,"
    "leaf_hash"
)
# Columns callers can put text into: the export neutralises formulas there only.
FREE_TEXT = {"actor", "client", "action", "target", "reasons", "purpose", "request_id"}


@dataclass(frozen=True)
class Run:
    code: int
    stdout: str
    stderr: str

    @property
    def lines(self) -> list[str]:
        return self.stdout.splitlines()

    def summary(self) -> re.Match[str]:
        found = SUMMARY.match(self.lines[-1])
        assert found is not None, self.stdout
        return found


def run(world: World, *args: str) -> Run:
    result = invoke(world, "audit", *args)
    return Run(result.exit_code, result.stdout, result.stderr)


def last_entry(world: World, action: str | None = None) -> Any:
    """The newest entry (of `action`, if given)."""
    statement = select(entries).order_by(entries.c.id.desc()).limit(1)
    if action is not None:
        statement = statement.where(entries.c.action == action)
    with world.state.engine.connect() as conn:
        return conn.execute(statement).one()


def log_size(world: World) -> int:
    return int(last_entry(world).id) + 1


def checkpointed(world: World, times: int = 2) -> list[int]:
    """A log with `times` checkpoints (each over new entries): their sizes."""
    sizes = []
    for n in range(times):
        world.submit("ITA", title=f"Checkpointed {n}")
        # A day apart on the maintainer's clock, so each step is due a checkpoint.
        progress = maintain_all(world, now=utcnow() + timedelta(days=n + 1))
        assert progress is not None
        assert progress.checkpoint is not None
        sizes.append(progress.checkpoint.tree_size)
    return sizes


def spreadsheet_cell(column: str, value: Any) -> str:
    """What the CSV export makes of a value: text, lists as JSON, and a formula neutralised in
    the columns callers can put text into (the service's own, such as hashes, stay exact)."""
    if value is None:
        return ""
    if isinstance(value, list):
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    else:
        text = str(value)
    if column in FREE_TEXT and text.startswith(("=", "+", "-", "@", "\t", "\r")):
        return "'" + text
    return text


def chair_get(world: World, path: str, **params: Any) -> Any:
    response = audit_get(world, path, **params)
    assert response.status_code == 200, response.text
    return response.json()


def api_entries(world: World, **filters: Any) -> list[dict[str, Any]]:
    """Every entry as GET /v1/audit/entries shows it, page by page."""
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        params = {**filters, "limit": 1000, **({"cursor": cursor} if cursor else {})}
        page = chair_get(world, "/entries", **params)
        items.extend(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            return items


class TestVerify:
    def test_a_clean_log_exits_0_with_a_summary(self, fresh_world: World) -> None:
        checkpointed(fresh_world)
        size = log_size(fresh_world)

        result = run(fresh_world, "verify")

        assert result.code == 0, result.stdout + result.stderr
        assert result.lines == [result.lines[-1]]
        summary = result.summary()
        assert summary.group(1) == "ok"
        assert int(summary.group(2).replace(",", "")) == size
        assert (summary.group(3), summary.group(4)) == ("2", "0")

    def test_an_edited_entry_exits_1_with_a_fail_line_naming_it(self, fresh_world: World) -> None:
        checkpointed(fresh_world)
        with as_dba(fresh_world) as conn:
            conn.execute(update(entries).where(entries.c.id == 5).values(decision="deny"))

        result = run(fresh_world, "verify")

        assert result.code == 1, result.stdout
        assert "FAIL entry 5: edited: its content no longer gives its leaf hash" in result.lines
        assert all(line.startswith("FAIL ") for line in result.lines[:-1])
        assert result.summary().group(1) == f"{len(result.lines) - 1} findings"

    @pytest.mark.parametrize("form", ["page", "latest", "ndjson"])
    def test_saved_checkpoints_are_read_in_the_forms_the_api_gives(
        self, fresh_world: World, tmp_path: Path, form: str
    ) -> None:
        checkpointed(fresh_world)
        saved = tmp_path / "checkpoints"
        if form == "page":
            saved.write_text(json.dumps(chair_get(fresh_world, "/checkpoints")))
            count = 2
        elif form == "latest":
            saved.write_text(json.dumps(chair_get(fresh_world, "/checkpoints/latest")))
            count = 1
        else:
            items = chair_get(fresh_world, "/checkpoints")["items"]
            saved.write_text("".join(json.dumps(c) + "\n" for c in items))
            count = 2

        result = run(fresh_world, "verify", "--checkpoints", str(saved))

        assert result.code == 0, result.stdout + result.stderr
        assert result.summary().group(4) == str(count)

    def test_a_truncated_log_fails_against_a_saved_file(
        self, fresh_world: World, tmp_path: Path
    ) -> None:
        first, second = checkpointed(fresh_world)
        saved = tmp_path / "checkpoints.json"
        saved.write_text(json.dumps(chair_get(fresh_world, "/checkpoints")))
        # The log, its latest checkpoint and the stored tree cut back together.
        with as_dba(fresh_world) as conn:
            conn.execute(delete(entries).where(entries.c.id >= first))
            conn.execute(delete(stored_checkpoints).where(stored_checkpoints.c.tree_size > first))
            conn.execute(delete(cast(Table, AuditNode.__table__)))
            conn.execute(update(cast(Table, AuditTree.__table__)).values(size=0))
        # What the service holds is consistent: without the saved file nothing shows.
        assert run_verify(fresh_world).findings == []

        result = run(fresh_world, "verify", "--checkpoints", str(saved))

        assert result.code == 1, result.stdout
        assert f"FAIL checkpoint at tree size {second}: truncated: " in result.stdout
        assert f"FAIL checkpoint at tree size {second}: rolled_back: " in result.stdout

    def test_the_services_jwks_verifies_the_checkpoints(
        self, fresh_world: World, tmp_path: Path
    ) -> None:
        checkpointed(fresh_world)
        jwks = fresh_world.http.get("/.well-known/jwks.json")
        assert jwks.status_code == 200
        path = tmp_path / "jwks.json"
        path.write_text(jwks.text)

        result = run(fresh_world, "verify", "--jwks", str(path))

        assert result.code == 0, result.stdout + result.stderr
        assert result.summary().group(1) == "ok"

    @pytest.mark.parametrize("kid", ["unrelated-1", "service"])
    def test_a_jwks_of_an_unrelated_key_reports_every_checkpoint_as_forged(
        self, fresh_world: World, tmp_path: Path, kid: str
    ) -> None:
        sizes = checkpointed(fresh_world)
        if kid == "service":  # another key under the service key's own kid
            kid = fresh_world.state.signing_key.kid
        path = tmp_path / "jwks.json"
        path.write_text(json.dumps(jwt.jwks([SigningKey.generate(kid)])))

        result = run(fresh_world, "verify", "--jwks", str(path))

        assert result.code == 1, result.stdout
        forged = [line for line in result.lines if ": forged: " in line]
        assert [line.split(":")[0] for line in forged] == [
            f"FAIL checkpoint at tree size {size}" for size in sizes
        ]
        assert all("stored checkpoint: signature does not verify" in line for line in forged)

    def test_json_output_parses_and_carries_the_findings(self, fresh_world: World) -> None:
        checkpointed(fresh_world)
        clean = run(fresh_world, "verify", "--json")
        with as_dba(fresh_world) as conn:
            conn.execute(update(entries).where(entries.c.id == 3).values(actor="DEU"))

        edited = run(fresh_world, "verify", "--json")

        assert clean.code == 0
        report = json.loads(clean.stdout)
        assert report["ok"] is True
        assert report["findings"] == []
        assert (report["checkpoints"], report["saved_checkpoints"]) == (2, 0)
        assert edited.code == 1
        report = json.loads(edited.stdout)
        assert report["ok"] is False
        assert {
            "kind": "edited",
            "entry": 3,
            "checkpoint": None,
            "detail": "its content no longer gives its leaf hash",
        } in report["findings"]

    def test_each_run_leaves_its_own_entry(self, fresh_world: World) -> None:
        checkpointed(fresh_world)
        size = log_size(fresh_world)

        assert run(fresh_world, "verify").code == 0

        entry = last_entry(fresh_world)
        assert entry.id == size
        assert (entry.action, entry.decision, entry.target) == ("audit.verify", "allow", "audit")
        assert (entry.actor, entry.client) == (None, "operator")
        assert entry.reasons == [f"entries:{size}", "findings:0"]


class TestExport:
    def test_ndjson_lines_are_the_entries_the_api_shows(
        self, fresh_world: World, tmp_path: Path
    ) -> None:
        checkpointed(fresh_world)
        out = tmp_path / "audit.ndjson"

        result = run(fresh_world, "export", "-o", str(out))

        assert result.code == 0, result.stderr
        exported = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
        shown = api_entries(fresh_world)
        # The export covers the log as it was when it began; its own entry comes next.
        assert exported == shown[: len(exported)]
        assert [e["index"] for e in exported] == list(range(len(exported)))
        own = shown[len(exported)]
        assert (own["action"], own["client"], own["reasons"]) == (
            "audit.export",
            "operator",
            ["format:ndjson"],
        )
        assert f"exported {len(exported):,} entries" in result.stderr

    def test_without_a_file_the_entries_go_to_stdout(self, fresh_world: World) -> None:
        fresh_world.submit("ITA")
        size = log_size(fresh_world)

        result = run(fresh_world, "export")

        assert result.code == 0, result.stderr
        assert [json.loads(line)["index"] for line in result.lines] == list(range(size))

    def test_csv_has_a_header_and_a_row_per_entry(self, fresh_world: World, tmp_path: Path) -> None:
        checkpointed(fresh_world)
        with transaction(fresh_world.state.sessionmaker) as session:
            audit.record(
                session,
                audit.OPERATOR,
                audit.Entry("test.csv", "allow", "test:csv", purpose='=HYPERLINK("x")'),
            )
        out = tmp_path / "audit.csv"

        result = run(fresh_world, "export", "-o", str(out), "--format", "csv")

        assert result.code == 0, result.stderr
        text = out.read_text(encoding="utf-8")
        assert text.splitlines()[0] == CSV_HEADER
        rows = list(csv.DictReader(io.StringIO(text)))
        shown = api_entries(fresh_world)[: len(rows)]
        assert [r["index"] for r in rows] == [str(e["index"]) for e in shown]
        for row, entry in zip(rows, shown, strict=True):
            assert row == {
                column: spreadsheet_cell(column, entry[column]) for column in CSV_HEADER.split(",")
            }
        # A cell a spreadsheet would run as a formula is neutralised.
        assert rows[-1]["purpose"] == '\'=HYPERLINK("x")'
        assert last_entry(fresh_world, "audit.export").reasons == ["format:csv"]

    def test_filters_select_the_entries_the_api_selects(
        self, fresh_world: World, tmp_path: Path
    ) -> None:
        checkpointed(fresh_world)
        out = tmp_path / "creates.ndjson"

        result = run(fresh_world, "export", "-o", str(out), "--action", "report.create")

        assert result.code == 0, result.stderr
        exported = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
        assert len(exported) == 2
        assert exported == api_entries(fresh_world, action="report.create")
        assert last_entry(fresh_world, "audit.export").reasons == [
            "action:report.create",
            "format:ndjson",
        ]

    def test_each_export_leaves_its_own_entry(self, fresh_world: World, tmp_path: Path) -> None:
        fresh_world.submit("ITA")
        size = log_size(fresh_world)

        assert run(fresh_world, "export", "-o", str(tmp_path / "a.ndjson")).code == 0

        entry = last_entry(fresh_world)
        assert entry.id == size
        assert (entry.action, entry.decision, entry.target) == ("audit.export", "allow", "audit")
        assert (entry.actor, entry.client) == (None, "operator")
