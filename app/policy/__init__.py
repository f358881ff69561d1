"""Need-to-know decisions: the policy bundle in `policies/` and the Cedar engine over it."""

from app.policy.bundle import (
    GROUPS,
    Classification,
    DecisionCase,
    Level,
    Member,
    PolicyBundle,
    PolicyError,
    ReportFacts,
    Taxonomy,
    expand_audience,
    load_bundle,
    validate_audience,
)
from app.policy.engine import Decision, EngineError, PolicyEngine

__all__ = [
    "GROUPS",
    "Classification",
    "Decision",
    "DecisionCase",
    "EngineError",
    "Level",
    "Member",
    "PolicyBundle",
    "PolicyEngine",
    "PolicyError",
    "ReportFacts",
    "Taxonomy",
    "expand_audience",
    "load_bundle",
    "validate_audience",
]
