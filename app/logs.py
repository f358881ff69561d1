"""Structured logs: one JSON object per line, with the request id, and nothing secret in them.

A log line carries what the code chose to say (message and safe extras), the logger, the level,
the time and the request id. Exceptions are logged by type and stack frames only: their text
can quote data (a database error quotes values, a parser quotes its input), so it is never
written. Access lines keep the request's path but not its query string. Every value is JSON
encoded, so control characters cannot forge lines.
"""

from __future__ import annotations

import json
import logging
import sys
import traceback
from datetime import UTC, datetime
from typing import Any

from app.middleware import request_id_var

# Extras a log call may attach (`extra={...}`); anything else passed that way is dropped.
SAFE_EXTRAS = ("error_type", "count", "batches", "delivery_id", "event", "status")


def _frames(exc_info: Any) -> list[str]:
    _, _, tb = exc_info
    return [f"{f.filename}:{f.lineno} in {f.name}" for f in traceback.extract_tb(tb)]


class JSONFormatter(logging.Formatter):
    """Formats records as single-line JSON objects."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": _message(record),
            "request_id": request_id_var.get(),
        }
        for key in SAFE_EXTRAS:
            if key in record.__dict__:
                entry[key] = record.__dict__[key]
        if record.exc_info and record.exc_info[0] is not None:
            entry["exception"] = {
                "type": record.exc_info[0].__name__,
                "frames": _frames(record.exc_info),
            }
        return json.dumps(entry, ensure_ascii=False, default=str)


def _message(record: logging.LogRecord) -> str:
    if record.name == "uvicorn.access" and isinstance(record.args, tuple) and len(record.args) == 5:
        # (client, method, path with query, HTTP version, status): the query string goes.
        client, method, path, version, status = record.args
        return f'{client} - "{method} {str(path).split("?", 1)[0]} HTTP/{version}" {status}'
    return record.getMessage()


def configure(level: str) -> None:
    """Send every logger's records (uvicorn's too) to stderr as JSON lines, at `level`."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter())
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        named = logging.getLogger(name)
        named.handlers.clear()
        named.propagate = True
