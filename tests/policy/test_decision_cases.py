"""Every decision case in `policies/tests/*.yaml`, run through the engine, one test per case."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.policy import DecisionCase, PolicyEngine, load_bundle

POLICY_DIR = Path(__file__).resolve().parents[2] / "policies"
# Loaded at collection: the cases parametrize the tests, and a bundle that does not load should
# fail the run loudly rather than leave it with nothing to check.
BUNDLE = load_bundle(POLICY_DIR)
ENGINE = PolicyEngine(BUNDLE)


class TestDecisionCases:
    @pytest.mark.parametrize("case", BUNDLE.cases, ids=[case.name for case in BUNDLE.cases])
    def test_case_is_decided_as_expected(self, case: DecisionCase) -> None:
        decision = ENGINE.explain(case.member, case.report)
        where = f"{case.file}:{case.line}"
        assert decision.level is case.expect, f"{where}: decided {decision}"
        if case.decided_by is not None:
            assert set(decision.policy_ids) == set(case.decided_by), f"{where}: {decision}"

    def test_every_base_policy_is_pinned_by_some_case(self) -> None:
        pinned = {policy_id for case in BUNDLE.cases for policy_id in case.decided_by or ()}
        # base.suspended needs a suspended member, which the shipped roster does not have;
        # tests/policy/test_engine.py covers it with a roster copy.
        assert set(BUNDLE.policy_ids) - pinned == {"base.suspended"}
