"""Reading the audit log: filters, pages in index order, and exports of any size."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Connection, Select, Table, select

from app.audit import canonical
from app.audit.checkpoints import b64
from app.audit.models import AuditEntry

_entries = cast(Table, AuditEntry.__table__)

# Rows fetched per round trip while exporting: memory stays flat whatever the export's size.
EXPORT_CHUNK = 1000


@dataclass(frozen=True)
class Filters:
    actor: str | None = None
    action: str | None = None
    report_id: str | None = None
    decision: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def reasons(self) -> tuple[str, ...]:
        """The filters as audit reasons: what a chair asked for is itself on record."""
        given = {
            "actor": self.actor,
            "action": self.action,
            "report": self.report_id,
            "decision": self.decision,
            "since": canonical.format_time(self.since) if self.since else None,
            "until": canonical.format_time(self.until) if self.until else None,
        }
        return tuple(f"{name}:{value}" for name, value in given.items() if value is not None)


def _select(filters: Filters, after: int | None, before: int | None, limit: int) -> Select[Any]:
    statement = select(_entries).order_by(_entries.c.id).limit(limit)
    if before is not None:
        statement = statement.where(_entries.c.id < before)
    if filters.actor is not None:
        statement = statement.where(_entries.c.actor == filters.actor)
    if filters.action is not None:
        statement = statement.where(_entries.c.action == filters.action)
    if filters.report_id is not None:
        statement = statement.where(_entries.c.target == f"report:{filters.report_id}")
    if filters.decision is not None:
        statement = statement.where(_entries.c.decision == filters.decision)
    if filters.since is not None:
        statement = statement.where(_entries.c.time >= filters.since)
    if filters.until is not None:
        statement = statement.where(_entries.c.time < filters.until)
    if after is not None:
        statement = statement.where(_entries.c.id > after)
    return statement


def shown(row: Any) -> dict[str, Any]:
    """An entry as the API shows it: its public form and its leaf hash."""
    entry = canonical.public(row._mapping)
    entry["leaf_hash"] = b64(bytes(row.leaf_hash))
    return entry


def page(
    conn: Connection,
    filters: Filters,
    after: int | None,
    limit: int,
    before: int | None = None,
) -> tuple[list[dict[str, Any]], int | None]:
    """Up to `limit` entries after index `after` (and below `before`), and the index to continue
    after (None at the end)."""
    rows = conn.execute(_select(filters, after, before, limit + 1)).all()
    items = [shown(r) for r in rows[:limit]]
    more = len(rows) > limit
    return items, (items[-1]["index"] if more else None)


# -- export formats ----------------------------------------------------------------------

CSV_COLUMNS = (*canonical.FIELDS, "leaf_hash")
# Columns whose text callers can influence (a chosen id, a purpose, a request id, ...); the
# others (index, time, decision, hashes) are the service's own and are written as they are.
_FREE_TEXT = frozenset({"actor", "client", "action", "target", "reasons", "purpose", "request_id"})
# A spreadsheet runs a cell that starts with one of these as a formula (CSV injection).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _cell(column: str, value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    else:
        text = str(value)
    if column in _FREE_TEXT and text.startswith(_FORMULA_START):
        return "'" + text
    return text


def ndjson_lines(entries: Sequence[dict[str, Any]]) -> str:
    """Entries as NDJSON: each line is the entry exactly as the API shows it."""
    return "".join(json.dumps(e, ensure_ascii=False, separators=(",", ":")) + "\n" for e in entries)


def csv_header() -> str:
    return _csv_rows([list(CSV_COLUMNS)])


def csv_lines(entries: Sequence[dict[str, Any]]) -> str:
    """Entries as CSV rows, for spreadsheets (NDJSON is the form leaf hashes are computed over)."""
    return _csv_rows([[_cell(c, e[c]) for c in CSV_COLUMNS] for e in entries])


def _csv_rows(rows: list[list[str]]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerows(rows)
    return out.getvalue()
