"""The Cedar engine: each base rule, country scoping, batching and caching, failing closed, and a
property test against a plain-Python reading of product.md's access rules."""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cedarpy
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.policy import (
    GROUPS,
    Classification,
    EngineError,
    Level,
    Member,
    PolicyBundle,
    PolicyEngine,
    ReportFacts,
    load_bundle,
)
from app.policy.bundle import REPORT_STATUSES, TLP_LABELS

SHIPPED = Path(__file__).resolve().parents[2] / "policies"
BODIES = ("EU", "FATF", "MENAFATF", "EGMONT", "INTERPOL", "UNMT")


def facts(**overrides: Any) -> ReportFacts:
    """A CONFIDENTIAL oil report by France released to ALL, without summary, unless overridden."""
    fields: dict[str, Any] = {
        "id": "r1",
        "originator": "FRA",
        "status": "active",
        "classification": Classification.CONFIDENTIAL,
        "topics": frozenset({"REV.OIL"}),
        "releasable_to": frozenset({"ALL"}),
        "tearline_to": frozenset({"ALL"}),
        "tearline_classification": Classification.UNCLASSIFIED,
        "has_summary": False,
    }
    fields.update(overrides)
    return ReportFacts(**fields)


def make_bundle(
    root: Path, *, countries: dict[str, str] | None = None, suspended: tuple[str, ...] = ()
) -> PolicyBundle:
    """The shipped bundle, copied under `root`, plus country files and suspended members."""
    target = root / "policies"
    shutil.copytree(SHIPPED, target)
    for code, text in (countries or {}).items():
        (target / "countries" / f"{code}.cedar").write_text(text, encoding="utf-8")
    roster = target / "roster.yaml"
    text = roster.read_text(encoding="utf-8")
    for code in suspended:
        start = text.index(f"code: {code}\n")
        text = text[:start] + text[start:].replace("active: true", "active: false", 1)
    roster.write_text(text, encoding="utf-8")
    return load_bundle(target)


@pytest.fixture(scope="module")
def engine() -> PolicyEngine:
    return PolicyEngine(load_bundle(SHIPPED))


@pytest.fixture(scope="module")
def suspended_engine(tmp_path_factory: pytest.TempPathFactory) -> PolicyEngine:
    root = tmp_path_factory.mktemp("suspended")
    return PolicyEngine(make_bundle(root, suspended=("GBR", "INTERPOL")))


def levels(engine: PolicyEngine, report: ReportFacts) -> dict[str, Level]:
    return {code: decision.level for code, decision in engine.decide(report).items()}


class TestBaseRules:
    def test_originator_reads_own_report_beyond_clearance_and_audience(
        self, engine: PolicyEngine
    ) -> None:
        report = facts(originator="FATF", classification=Classification.SECRET, releasable_to=[])
        decision = engine.explain("FATF", report)
        assert decision.level is Level.FULL
        assert decision.policy_ids == ("base.originator",)

    @pytest.mark.parametrize("status", ["revoked", "purged"])
    def test_withdrawn_report_is_hidden_from_every_other_member(
        self, engine: PolicyEngine, status: str
    ) -> None:
        decisions = engine.decide(facts(status=status, has_summary=True, granted=["DEU"]))
        assert decisions["FRA"].level is Level.FULL
        others = {code: d for code, d in decisions.items() if code != "FRA"}
        assert {d.level for d in others.values()} == {Level.NONE}
        assert {d.policy_ids for d in others.values()} == {("base.withdrawn",)}

    def test_releasable_cleared_mandated_member_reads_full(self, engine: PolicyEngine) -> None:
        decision = engine.explain("UNMT", facts())
        assert (decision.level, decision.policy_ids) == (Level.FULL, ("base.releasable",))

    def test_member_not_cleared_for_classification_does_not_read_full(
        self, engine: PolicyEngine
    ) -> None:
        assert engine.explain("EU", facts(classification=Classification.SECRET)).level is Level.HIT

    def test_member_without_mandate_does_not_read_full(self, engine: PolicyEngine) -> None:
        report = facts(classification=Classification.RESTRICTED, topics=["MOV.HAW"])
        assert engine.explain("INTERPOL", report).level is Level.HIT
        assert engine.explain("FATF", report).level is Level.FULL

    def test_member_outside_releasable_to_does_not_read_full(self, engine: PolicyEngine) -> None:
        decided = levels(engine, facts(releasable_to=["CHAIRS", "DEU"]))
        assert {code for code, level in decided.items() if level is Level.FULL} == {
            "FRA",
            "ITA",
            "SAU",
            "USA",
            "DEU",
        }

    def test_grant_gives_full_within_clearance(self, engine: PolicyEngine) -> None:
        report = facts(releasable_to=[], granted=["EU", "FATF"])
        granted = engine.explain("EU", report)
        assert (granted.level, granted.policy_ids) == (Level.FULL, ("base.granted",))
        assert engine.explain("FATF", report).level is Level.HIT

    def test_tearline_for_tearline_audience_with_summary(self, engine: PolicyEngine) -> None:
        report = facts(releasable_to=[], has_summary=True, tearline_to=["BODIES"])
        decided = levels(engine, report)
        assert {code for code, level in decided.items() if level is Level.TEARLINE} == set(BODIES)
        assert engine.explain("EU", report).policy_ids == ("base.tearline",)

    def test_no_summary_means_no_tearline(self, engine: PolicyEngine) -> None:
        report = facts(releasable_to=[], has_summary=False)
        assert engine.explain("DEU", report).level is Level.HIT

    def test_tearline_needs_clearance_for_its_own_classification(
        self, engine: PolicyEngine
    ) -> None:
        report = facts(
            releasable_to=[],
            has_summary=True,
            tearline_classification=Classification.CONFIDENTIAL,
        )
        assert engine.explain("EU", report).level is Level.TEARLINE
        assert engine.explain("EGMONT", report).level is Level.HIT

    def test_every_active_member_gets_at_least_a_hit(self, engine: PolicyEngine) -> None:
        decided = engine.decide(facts(releasable_to=[]))
        assert {d.level for code, d in decided.items() if code != "FRA"} == {Level.HIT}
        assert decided["DEU"].policy_ids == ("base.hit",)

    def test_suspended_member_gets_nothing_even_on_its_own_report(
        self, suspended_engine: PolicyEngine
    ) -> None:
        own = suspended_engine.explain("GBR", facts(originator="GBR"))
        assert (own.level, own.policy_ids) == (Level.NONE, ("base.suspended",))
        granted = facts(granted=["INTERPOL"], has_summary=True)
        assert suspended_engine.explain("INTERPOL", granted).level is Level.NONE

    def test_chair_role_gives_no_content(self, engine: PolicyEngine) -> None:
        report = facts(releasable_to=["DEU"], has_summary=True, tearline_to=["BODIES"])
        assert {engine.explain(code, report).level for code in ("ITA", "SAU", "USA")} == {Level.HIT}


ITA_NO_FULL_FOR_BODIES = """\
@id("ITA.no-full-for-bodies")
forbid (principal, action == Tearline::Action::"read_full", resource)
when { principal.kind == "body" };
"""

ITA_REACHES_FOR_FRANCE = """\
@id("ITA.overreach")
forbid (principal, action, resource)
when { resource.originator == Tearline::Member::"FRA" || principal.code != "ITA" };
"""

ITA_NO_HIT_FOR_BODIES = """\
@id("ITA.no-hit-for-bodies")
forbid (principal, action == Tearline::Action::"hit", resource)
when { principal.kind == "body" };
"""


@pytest.fixture(scope="module")
def country_engine(tmp_path_factory: pytest.TempPathFactory) -> PolicyEngine:
    root = tmp_path_factory.mktemp("countries")
    bundle = make_bundle(root, countries={"ITA": ITA_NO_FULL_FOR_BODIES + ITA_NO_HIT_FOR_BODIES})
    return PolicyEngine(bundle)


class TestCountryPolicies:
    def test_country_forbid_lowers_the_level_on_its_own_reports(
        self, country_engine: PolicyEngine
    ) -> None:
        report = facts(originator="ITA", classification=Classification.RESTRICTED, has_summary=True)
        decision = country_engine.explain("EU", report)
        assert decision.level is Level.TEARLINE
        assert decision.policy_ids == ("base.tearline", "ITA.no-full-for-bodies")
        assert country_engine.explain("DEU", report).level is Level.FULL

    def test_country_forbid_leaves_other_members_reports_alone(
        self, country_engine: PolicyEngine
    ) -> None:
        report = facts(originator="FRA", classification=Classification.RESTRICTED)
        assert country_engine.explain("EU", report).level is Level.FULL
        assert country_engine.explain("INTERPOL", facts(releasable_to=[])).level is Level.HIT

    def test_country_may_forbid_the_hit(self, country_engine: PolicyEngine) -> None:
        report = facts(originator="ITA", releasable_to=[])
        decision = country_engine.explain("INTERPOL", report)
        assert decision.level is Level.NONE
        assert decision.policy_ids == ("ITA.no-full-for-bodies", "ITA.no-hit-for-bodies")

    def test_country_cannot_reach_another_members_reports_by_naming_them(
        self, tmp_path: Path
    ) -> None:
        engine = PolicyEngine(make_bundle(tmp_path, countries={"ITA": ITA_REACHES_FOR_FRANCE}))
        assert set(levels(engine, facts(originator="FRA")).values()) == {Level.FULL, Level.HIT}
        assert set(levels(engine, facts(originator="ITA")).values()) == {Level.NONE, Level.FULL}

    def test_a_country_rule_never_takes_full_from_the_originator_itself(
        self, tmp_path: Path
    ) -> None:
        everything = '@id("ITA.nothing-for-anyone")\nforbid (principal, action, resource);\n'
        engine = PolicyEngine(make_bundle(tmp_path, countries={"ITA": everything}))
        decisions = levels(engine, facts(originator="ITA"))
        assert decisions.pop("ITA") is Level.FULL
        assert set(decisions.values()) == {Level.NONE}


class TestDecide:
    def test_decides_every_roster_member(self, engine: PolicyEngine) -> None:
        decisions = engine.decide(facts())
        assert list(decisions) == list(engine.bundle.members)
        assert all(code == d.member for code, d in decisions.items())

    def test_decides_only_the_members_asked_for(self, engine: PolicyEngine) -> None:
        assert set(engine.decide(facts(), ["EU", "DEU", "EU"])) == {"EU", "DEU"}

    def test_unknown_member_is_refused(self, engine: PolicyEngine) -> None:
        with pytest.raises(ValueError, match="'NOR'"):
            engine.decide(facts(), ["NOR"])

    def test_decision_names_the_bundle_hash(self, engine: PolicyEngine) -> None:
        assert engine.explain("DEU", facts()).policy_hash == engine.bundle.hash

    def test_originator_no_longer_on_the_roster_is_decided(self, engine: PolicyEngine) -> None:
        decisions = engine.decide(facts(originator="GONE", releasable_to=["STATES"]))
        assert decisions["DEU"].level is Level.FULL
        assert decisions["EU"].level is Level.HIT

    def test_reports_with_the_same_markings_share_one_evaluation(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        engine = PolicyEngine(load_bundle(SHIPPED))
        calls = count_calls(monkeypatch)
        first = engine.decide(facts(id="a"))
        second = engine.decide(facts(id="b"))
        engine.decide(facts(id="c", classification=Classification.SECRET))
        assert first == second
        assert len(calls) == 2

    def test_one_batch_call_decides_all_members_and_actions(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        engine = PolicyEngine(load_bundle(SHIPPED))
        calls = count_calls(monkeypatch)
        engine.decide(facts())
        assert calls == [3 * len(engine.bundle.members)]

    def test_returned_decisions_are_the_callers_to_change(self, engine: PolicyEngine) -> None:
        engine.decide(facts()).clear()
        assert len(engine.decide(facts())) == len(engine.bundle.members)


def count_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record the number of requests of each is_authorized_batch call."""
    calls: list[int] = []
    real = cedarpy.is_authorized_batch

    def counting(requests: list[dict[str, Any]], *args: Any, **kwargs: Any) -> Any:
        calls.append(len(requests))
        return real(requests, *args, **kwargs)

    monkeypatch.setattr(cedarpy, "is_authorized_batch", counting)
    return calls


class TestFailClosed:
    def test_policy_erroring_at_evaluation_raises_instead_of_being_skipped(
        self, tmp_path: Path
    ) -> None:
        # Cedar skips a policy that errors; for a forbid that would widen access.
        overflow = (
            '@id("ITA.overflow")\nforbid (principal, action, resource)\n'
            "when { principal.clearance + 9223372036854775807 > 0 };\n"
        )
        engine = PolicyEngine(make_bundle(tmp_path, countries={"ITA": overflow}))
        with pytest.raises(EngineError, match="overflow"):
            engine.decide(facts(originator="ITA"))
        # the scoping clause comes first, so other members' reports never reach the error
        assert engine.explain("DEU", facts(originator="FRA")).level is Level.FULL

    def test_cedar_failure_raises(
        self, engine: PolicyEngine, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        def broken(*args: Any, **kwargs: Any) -> Any:
            raise ValueError("engine exploded")

        monkeypatch.setattr(cedarpy, "is_authorized_batch", broken)
        with pytest.raises(EngineError, match="engine exploded"):
            engine.decide(facts(id="x", topics=["CTR.TA"]))

    @pytest.mark.parametrize(
        "tamper",
        [
            lambda results: results[:-1],
            lambda results: [
                cedarpy.AuthzResult({"decision": "NoDecision", "diagnostics": {}}) for _ in results
            ],
        ],
        ids=["missing-result", "no-decision"],
    )
    def test_incomplete_or_undecided_results_raise(
        self,
        engine: PolicyEngine,
        monkeypatch: pytest.MonkeyPatch,
        tamper: Callable[[list[cedarpy.AuthzResult]], list[cedarpy.AuthzResult]],
    ) -> None:
        real = cedarpy.is_authorized_batch
        monkeypatch.setattr(
            cedarpy, "is_authorized_batch", lambda *args, **kwargs: tamper(real(*args, **kwargs))
        )
        with pytest.raises(EngineError):
            engine.decide(facts(id="y", topics=["CTR.PPP"]))


def reference_level(member: Member, report: ReportFacts) -> Level:
    """product.md "Access model" rules 1-6 read literally, narrowed by the shipped country files
    read literally; a suspended member gets nothing."""
    permitted = _base_permits(member, report) - _country_forbids(member, report)
    return max(permitted, key=lambda level: level.rank, default=Level.NONE)


def _base_permits(member: Member, report: ReportFacts) -> set[Level]:
    """The levels the base rules permit; like Cedar, a level is permitted on its own terms."""
    if not member.active:
        return set()
    if member.code == report.originator:
        return {Level.FULL, Level.TEARLINE, Level.HIT}
    if report.status in ("revoked", "purged"):
        return set()
    audience = {member.code, "ALL", "STATES" if member.kind == "state" else "BODIES"}
    if "chair" in member.roles:
        audience.add("CHAIRS")
    cleared = member.clearance >= report.classification
    permitted = {Level.HIT}
    if audience & report.releasable_to and cleared and member.mandate & report.topics:
        permitted.add(Level.FULL)
    if member.code in report.granted and cleared:
        permitted.add(Level.FULL)
    if (
        report.has_summary
        and audience & report.tearline_to
        and member.clearance >= report.tearline_classification
    ):
        permitted.add(Level.TEARLINE)
    return permitted


def _country_forbids(member: Member, report: ReportFacts) -> set[Level]:
    """policies/countries/*.cedar, each on its own originator's reports only."""
    if (
        report.originator == "SAU"
        and "REV.DON" in report.topics
        and "chair" not in member.roles
        and member.code != "FATF"
    ):
        return {Level.FULL}
    if report.originator == "USA" and "CTR.LE" in report.topics and member.kind == "body":
        return {Level.FULL, Level.TEARLINE, Level.HIT}
    if (
        report.originator == "IRQ"
        and report.classification >= Classification.SECRET
        and "USE.OPS" in report.topics
    ):
        return {Level.TEARLINE}
    return set()


_SHIPPED = load_bundle(SHIPPED)
_CODES = sorted(_SHIPPED.members)
_AUDIENCE = st.frozensets(st.sampled_from([*GROUPS, *_CODES]), max_size=4)
# The topic each shipped country file restricts on its own reports.
_COUNTRY_TOPICS = {"SAU": "REV.DON", "USA": "CTR.LE", "IRQ": "USE.OPS"}


@st.composite
def report_facts(draw: st.DrawFn) -> ReportFacts:
    return ReportFacts(
        id="prop",
        originator=draw(st.sampled_from([*_CODES, "GONE"])),
        status=draw(st.sampled_from(REPORT_STATUSES)),
        classification=draw(st.sampled_from(Classification)),
        topics=draw(st.frozensets(st.sampled_from(sorted(_SHIPPED.taxonomy.leaves)), max_size=3)),
        releasable_to=draw(_AUDIENCE),
        tearline_to=draw(_AUDIENCE),
        tearline_classification=draw(st.sampled_from(Classification)),
        has_summary=draw(st.booleans()),
        granted=draw(st.frozensets(st.sampled_from(_CODES), max_size=3)),
        tlp=draw(st.sampled_from(TLP_LABELS)),
        orcon=draw(st.booleans()),
    )


@st.composite
def country_report_facts(draw: st.DrawFn) -> ReportFacts:
    """An active report of a country with a shipped file, on the topic that file restricts and
    with audiences to restrict: uniform draws would rarely meet one."""
    report = draw(report_facts())
    originator = draw(st.sampled_from(sorted(_COUNTRY_TOPICS)))
    audience = st.frozensets(st.sampled_from([*GROUPS, *_CODES]), min_size=1, max_size=4)
    return dataclasses.replace(
        report,
        originator=originator,
        status="active",
        topics=report.topics | {_COUNTRY_TOPICS[originator]},
        releasable_to=draw(audience),
        tearline_to=draw(audience),
    )


class TestAgainstReferenceModel:
    @settings(max_examples=150, deadline=None)
    @given(report=report_facts())
    def test_engine_agrees_with_the_written_rules(
        self, engine: PolicyEngine, report: ReportFacts
    ) -> None:
        for code, decision in engine.decide(report).items():
            expected = reference_level(engine.bundle.members[code], report)
            assert decision.level is expected, f"{code}: {decision}"

    @settings(max_examples=150, deadline=None)
    @given(report=country_report_facts())
    def test_engine_agrees_with_the_written_rules_on_reports_country_files_restrict(
        self, engine: PolicyEngine, report: ReportFacts
    ) -> None:
        for code, decision in engine.decide(report).items():
            expected = reference_level(engine.bundle.members[code], report)
            assert decision.level is expected, f"{code}: {decision}"

    @settings(max_examples=75, deadline=None)
    @given(report=report_facts())
    def test_engine_agrees_with_the_written_rules_for_suspended_members(
        self, suspended_engine: PolicyEngine, report: ReportFacts
    ) -> None:
        for code, decision in suspended_engine.decide(report).items():
            expected = reference_level(suspended_engine.bundle.members[code], report)
            assert decision.level is expected, f"{code}: {decision}"
