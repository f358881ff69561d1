"""Driving the audit tree's maintainer step by step, and reading the log as a chair."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from app.audit import maintainer
from app.audit.maintainer import Progress
from tests.conftest import World

CHAIRS = ("ITA", "SAU", "USA")


def maintain(world: World, now: datetime | None = None) -> Progress | None:
    """One maintenance step (a batch of leaves, a checkpoint if due), committed."""
    state = world.state
    with state.engine.begin() as conn:
        return maintainer.maintain(conn, state.signing_key, state.settings, now)


def maintain_all(world: World, now: datetime | None = None) -> Progress | None:
    """Steps until every committed entry is in the tree."""
    progress = maintain(world, now)
    while progress is not None and progress.pending:
        progress = maintain(world, now)
    return progress


def audit_get(world: World, path: str, code: str = "ITA", **params: Any) -> Any:
    """GET an audit route as `code` with the audit scope."""
    return world.http.get(
        f"/v1/audit{path}", params=params, headers=world.headers(code, scope="audit")
    )
