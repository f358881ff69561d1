"""Cedar decisions: the access level of each member to a report, with the policies that decided it.

Levels are decided when a report is written (and again when the bundle, the roster or a grant
changes) and stored; reads look the stored level up and never call the engine per row.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

import cedarpy

from app.policy.bundle import (
    ACTION_TYPE,
    MEMBER_TYPE,
    REPORT_TYPE,
    Level,
    PolicyBundle,
    ReportFacts,
    report_entity,
)

__all__ = ["Decision", "EngineError", "PolicyEngine", "ReportFacts"]

# Highest level first: a member's level is the first of these actions it is permitted.
_ACTIONS: Final = (
    ("read_full", Level.FULL),
    ("read_tearline", Level.TEARLINE),
    ("hit", Level.HIT),
)
# Decisions depend on a report's markings, never on its identity (the loader refuses policies
# that name a report), so every decision uses one fixed resource id and requests are reusable.
_RESOURCE_ID: Final = "report"
_RESOURCE: Final = {"type": REPORT_TYPE, "id": _RESOURCE_ID}


class EngineError(RuntimeError):
    """The engine could not reach a clean decision; the caller must not grant anything."""


@dataclass(frozen=True)
class Decision:
    """One member's access level to one report, and why."""

    member: str
    level: Level
    policy_ids: tuple[str, ...]
    policy_hash: str


class _Key:
    """Cache key over a report's decision-relevant facts; carries the facts to compute from."""

    __slots__ = ("_hash", "_key", "members", "report")

    def __init__(self, report: ReportFacts, members: tuple[str, ...]) -> None:
        self.report = report
        self.members = members
        self._key = (report.decision_key(), members)
        self._hash = hash(self._key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Key) and self._key == other._key

    def __hash__(self) -> int:
        return self._hash


class PolicyEngine:
    """Decides access levels under one policy bundle; build a new engine for a new bundle."""

    def __init__(self, bundle: PolicyBundle, *, cache_size: int = 1024) -> None:
        self._bundle = bundle
        self._all_members = tuple(bundle.members)
        self._requests = {
            code: tuple(
                {
                    "principal": {"type": MEMBER_TYPE, "id": code},
                    "action": {"type": ACTION_TYPE, "id": action},
                    "resource": _RESOURCE,
                }
                for action, _ in _ACTIONS
            )
            for code in bundle.members
        }
        # Per engine, so a cached decision can never outlive the bundle that made it.
        self._cached = functools.lru_cache(maxsize=cache_size)(self._compute)

    @property
    def bundle(self) -> PolicyBundle:
        """The bundle this engine decides under."""
        return self._bundle

    def decide(
        self, report: ReportFacts, members: Iterable[str] | None = None
    ) -> dict[str, Decision]:
        """Decide every roster member's level (or only `members`') to `report`."""
        if members is None:
            codes = self._all_members
        else:
            if isinstance(members, str):
                raise TypeError("members must be a collection of member codes, not a string")
            codes = tuple(sorted(set(members)))
            for code in codes:
                if code not in self._requests:
                    raise ValueError(f"unknown member {code!r}")
        return dict(self._cached(_Key(report, codes)))

    def explain(self, member_code: str, report: ReportFacts) -> Decision:
        """Decide one member's level to `report`, with the ids of the deciding policies."""
        return self.decide(report, [member_code])[member_code]

    def cache_clear(self) -> None:
        """Forget cached decisions (they are pure, so this only matters for measurements)."""
        self._cached.cache_clear()

    def _compute(self, key: _Key) -> tuple[tuple[str, Decision], ...]:
        bundle = self._bundle
        requests = [request for code in key.members for request in self._requests[code]]
        entity = json.dumps([report_entity(key.report, _RESOURCE_ID)])
        try:
            # the schema check on the report entity is what keeps a mistyped fact from making
            # a forbid error out, which Cedar would answer by skipping that forbid
            entities = bundle.member_entities.with_added_json_str(entity, bundle.schema)
            results = cedarpy.is_authorized_batch(
                requests, bundle.policy_set, entities, bundle.schema
            )
        except Exception as exc:
            # one error type for callers, whatever the binding raised; nothing is decided
            raise EngineError(f"cannot evaluate report {key.report.id!r}: {exc}") from exc
        if len(results) != len(requests):
            raise EngineError("the engine returned a different number of results than requests")
        decisions = []
        for index, code in enumerate(key.members):
            member_results = results[index * len(_ACTIONS) : (index + 1) * len(_ACTIONS)]
            level, policy_ids = _level(code, key.report, member_results)
            decisions.append((code, Decision(code, level, policy_ids, bundle.hash)))
        return tuple(decisions)


def _level(
    code: str, report: ReportFacts, results: list[cedarpy.AuthzResult]
) -> tuple[Level, tuple[str, ...]]:
    """The highest permitted level, with the permitting policies and the forbids that capped it."""
    forbidding: list[str] = []
    for (action, level), result in zip(_ACTIONS, results, strict=True):
        diagnostics = result.diagnostics
        # An erroring policy is skipped by Cedar, and a skipped forbid widens access: refuse.
        if diagnostics.errors:
            raise EngineError(
                f"policy evaluation failed for {code} / {action} on report {report.id!r}: "
                + "; ".join(diagnostics.errors)
            )
        if result.decision == cedarpy.Decision.Allow:
            return level, _ids([*sorted(diagnostics.reasons), *forbidding])
        if result.decision != cedarpy.Decision.Deny:
            raise EngineError(f"no decision for {code} / {action} on report {report.id!r}")
        forbidding.extend(sorted(diagnostics.reasons))
    return Level.NONE, _ids(forbidding)


def _ids(policy_ids: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(policy_ids))
