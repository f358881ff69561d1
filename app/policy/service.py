"""The bundle in force, and decisions for whole reports."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from app.policy.bundle import GROUPS, Classification, PolicyBundle, load_bundle
from app.policy.engine import Decision, PolicyEngine, ReportFacts

__all__ = [
    "GROUPS",
    "READABLE_LEVELS",
    "Audience",
    "Classification",
    "Decision",
    "PolicyState",
    "ReportFacts",
    "audience_of",
]

READABLE_LEVELS = ("full", "tearline")


@dataclass(frozen=True)
class Audience:
    full: tuple[str, ...]
    tearline: tuple[str, ...]


class PolicyState:
    """Holds the bundle in force with its engine, as one pair so they always belong together."""

    def __init__(self, bundle: PolicyBundle) -> None:
        self._current = (bundle, PolicyEngine(bundle))

    @classmethod
    def load(cls, policy_dir: Path) -> PolicyState:
        """Load and validate the bundle in `policy_dir`; PolicyError if anything is wrong."""
        return cls(load_bundle(policy_dir))

    @property
    def bundle(self) -> PolicyBundle:
        return self._current[0]

    @property
    def engine(self) -> PolicyEngine:
        return self._current[1]

    def replace(self, bundle: PolicyBundle) -> None:
        """Put `bundle` in force, with an engine of its own (one assignment: never half-swapped)."""
        self._current = (bundle, PolicyEngine(bundle))

    def decide(self, facts: ReportFacts) -> dict[str, Decision]:
        """The decision for every roster member on one report."""
        return self.engine.decide(facts)


def audience_of(decisions: Iterable[Decision]) -> Audience:
    """Who may read a report at full and at tearline, in code order."""
    full, tearline = [], []
    for d in decisions:
        if d.level.value == "full":
            full.append(d.member)
        elif d.level.value == "tearline":
            tearline.append(d.member)
    return Audience(full=tuple(sorted(full)), tearline=tuple(sorted(tearline)))
