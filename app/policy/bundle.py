"""The policy bundle in `policies/`: roster, taxonomy, Cedar schema and policies, decision cases.

`load_bundle` reads every file once, validates all of it and either returns an immutable
`PolicyBundle` or raises `PolicyError` naming the file and line at fault, so a bad change is refused
as a whole and the last good bundle stays in force.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import IntEnum, StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

import cedarpy
import yaml

__all__ = [
    "GROUPS",
    "REPORT_STATUSES",
    "TLP_LABELS",
    "Classification",
    "DecisionCase",
    "Level",
    "Member",
    "PolicyBundle",
    "PolicyError",
    "ReportFacts",
    "Taxonomy",
    "expand_audience",
    "load_bundle",
    "member_entity",
    "report_entity",
    "validate_audience",
]

GROUPS: Final = ("ALL", "CHAIRS", "STATES", "BODIES")
REPORT_STATUSES: Final = ("active", "revoked", "purged")
TLP_LABELS: Final = ("CLEAR", "GREEN", "AMBER", "AMBER+STRICT", "RED")
MEMBER_KINDS: Final = ("state", "body")
MEMBER_ROLES: Final = ("chair", "member")

ROSTER_FILE: Final = "roster.yaml"
TAXONOMY_FILE: Final = "taxonomy.yaml"
SCHEMA_FILE: Final = "schema.cedarschema"
BASE_FILE: Final = "base.cedar"
COUNTRIES_DIR: Final = "countries"
CASES_DIR: Final = "tests"
_REQUIRED_FILES: Final = (TAXONOMY_FILE, ROSTER_FILE, SCHEMA_FILE, BASE_FILE)
_DOC_FILES: Final = frozenset({"README.md"})

NAMESPACE: Final = "Tearline"
MEMBER_TYPE: Final = f"{NAMESPACE}::Member"
REPORT_TYPE: Final = f"{NAMESPACE}::Report"
ACTION_TYPE: Final = f"{NAMESPACE}::Action"
BASE_ID_PREFIX: Final = "base."

_MEMBER_CODE = re.compile(r"[A-Z][A-Z0-9]{1,15}")
_BRANCH_CODE = re.compile(r"[A-Z][A-Z0-9]{0,15}")
_LEAF_SUFFIX = re.compile(r"[A-Z][A-Z0-9]{0,15}")
_POLICY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_BACKTICKED = re.compile(r"`([^`]+)`")
_SCHEMA_TYPES = re.compile(r"types?: ([\w:, ]+)")
_TRAILING_NAME = re.compile(r": ([\w:]+)$")
_SYNTAX_ERROR = re.compile(r"unexpected token|invalid token|unexpected end of input|unrecognized")


class PolicyError(Exception):
    """A policy bundle file is unusable; `str()` is `file:line: message`."""

    def __init__(self, file: str, line: int, message: str) -> None:
        super().__init__(f"{file}:{line}: {message}")
        self.file = file
        self.line = line
        self.message = message


class Classification(IntEnum):
    """Coalition classification levels, ordered; also used for clearances."""

    UNCLASSIFIED = 0
    RESTRICTED = 1
    CONFIDENTIAL = 2
    SECRET = 3

    @classmethod
    def coerce(cls, value: object) -> Classification:
        """Return the level for a level, its integer or its name; ValueError otherwise."""
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            try:
                return cls[value]
            except KeyError:
                raise ValueError(f"unknown classification {value!r}") from None
        # bool is an int, and True must not quietly mean RESTRICTED
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= cls.SECRET:
            return cls(value)
        raise ValueError(f"unknown classification {value!r}")


class Level(StrEnum):
    """A member's access level to a report, from `full` down to `none`."""

    FULL = "full"
    TEARLINE = "tearline"
    HIT = "hit"
    NONE = "none"

    @property
    def rank(self) -> int:
        """3 for full down to 0 for none."""
        return _LEVEL_RANKS[self]

    def at_least(self, other: Level) -> bool:
        """Whether this level includes everything `other` shows."""
        return self.rank >= other.rank


_LEVEL_RANKS: Final = {Level.FULL: 3, Level.TEARLINE: 2, Level.HIT: 1, Level.NONE: 0}


@dataclass(frozen=True)
class Member:
    """One member organisation of the roster."""

    code: str
    name: str
    kind: str
    roles: frozenset[str]
    clearance: Classification
    mandate: frozenset[str]
    active: bool

    @property
    def is_chair(self) -> bool:
        """Whether the member co-chairs the group."""
        return "chair" in self.roles

    @property
    def groups(self) -> frozenset[str]:
        """The audience names that select this member: its code and its groups."""
        groups = {self.code, "STATES" if self.kind == "state" else "BODIES"}
        # ALL is "every active member" (domain.md), so a suspended member drops out of it
        if self.active:
            groups.add("ALL")
        if self.is_chair:
            groups.add("CHAIRS")
        return frozenset(groups)


@dataclass(frozen=True)
class Taxonomy:
    """Topic taxonomy: leaf codes with names, and the leaves of each branch."""

    leaves: Mapping[str, str]
    branches: Mapping[str, tuple[str, ...]]
    branch_names: Mapping[str, str]

    def expand(self, codes: Iterable[str]) -> frozenset[str]:
        """Return the leaf codes named by `codes` (leaves or branches); ValueError if unknown."""
        if isinstance(codes, str):
            raise TypeError("expected a collection of topic codes, not a string")
        leaves: set[str] = set()
        for code in codes:
            if code in self.leaves:
                leaves.add(code)
            elif code in self.branches:
                leaves.update(self.branches[code])
            else:
                raise ValueError(f"unknown topic {code!r}")
        return frozenset(leaves)


def _codes(value: Iterable[str], field: str) -> frozenset[str]:
    # iterating a lone string would silently turn "ALL" into {"A", "L"}
    if isinstance(value, str):
        raise TypeError(f"{field} must be a collection of strings, not a string")
    result = frozenset(value)
    if not all(isinstance(code, str) for code in result):
        raise TypeError(f"{field} must contain only strings")
    return result


@dataclass(frozen=True)
class ReportFacts:
    """The decision-relevant markings of one report version; no content ever reaches the engine."""

    id: str
    originator: str
    status: str
    classification: Classification
    topics: frozenset[str]
    releasable_to: frozenset[str]
    tearline_to: frozenset[str]
    tearline_classification: Classification
    has_summary: bool
    granted: frozenset[str] = frozenset()
    tlp: str = "AMBER"
    orcon: bool = False

    def __post_init__(self) -> None:
        # Facts are checked here rather than trusted: a value Cedar cannot type would make a policy
        # error, and Cedar skips an erroring forbid, which would widen access.
        if not isinstance(self.originator, str) or not self.originator:
            raise ValueError("originator must be a member code")
        if self.status not in REPORT_STATUSES:
            raise ValueError(f"unknown report status {self.status!r}")
        if self.tlp not in TLP_LABELS:
            raise ValueError(f"unknown TLP label {self.tlp!r}")
        if not isinstance(self.has_summary, bool) or not isinstance(self.orcon, bool):
            raise TypeError("has_summary and orcon must be booleans")
        set_attr = object.__setattr__
        set_attr(self, "classification", Classification.coerce(self.classification))
        set_attr(
            self, "tearline_classification", Classification.coerce(self.tearline_classification)
        )
        for field in ("topics", "releasable_to", "tearline_to", "granted"):
            set_attr(self, field, _codes(getattr(self, field), field))

    def decision_key(self) -> tuple[object, ...]:
        """Every fact a decision depends on: all fields but `id`."""
        return (
            self.originator,
            self.status,
            self.classification,
            self.topics,
            self.releasable_to,
            self.tearline_to,
            self.tearline_classification,
            self.has_summary,
            self.granted,
            self.tlp,
            self.orcon,
        )


@dataclass(frozen=True)
class DecisionCase:
    """One expected decision from `policies/tests/*.yaml`."""

    name: str
    file: str
    line: int
    member: str
    report: ReportFacts
    expect: Level
    decided_by: tuple[str, ...] | None = None


@dataclass(frozen=True, eq=False)
class PolicyBundle:
    """A loaded, validated policy bundle; immutable, identified by `hash`."""

    hash: str
    loaded_at: datetime
    files: tuple[str, ...]
    members: Mapping[str, Member]
    taxonomy: Taxonomy
    schema_text: str
    policy_text: str
    policy_ids: tuple[str, ...]
    policy_sources: Mapping[str, tuple[str, int]]
    schema: cedarpy.Schema
    policy_set: cedarpy.PolicySet
    member_entities: cedarpy.Entities
    cases: tuple[DecisionCase, ...]


def validate_audience(bundle: PolicyBundle, codes: Iterable[str]) -> None:
    """Raise ValueError naming the first code that is neither a group nor a roster member."""
    for code in sorted(_codes(codes, "audience")):
        if code not in GROUPS and code not in bundle.members:
            raise ValueError(f"unknown member or group {code!r}")


def expand_audience(bundle: PolicyBundle, codes: Iterable[str]) -> frozenset[str]:
    """Return the codes of the active members that member codes and group names select."""
    wanted = _codes(codes, "audience")
    validate_audience(bundle, wanted)
    return frozenset(
        member.code
        for member in bundle.members.values()
        if member.active and not member.groups.isdisjoint(wanted)
    )


def member_entity(member: Member) -> dict[str, Any]:
    """The Cedar entity (JSON form) of a member, as `schema.cedarschema` declares it."""
    return {
        "uid": {"type": MEMBER_TYPE, "id": member.code},
        "attrs": {
            "code": member.code,
            "kind": member.kind,
            "roles": sorted(member.roles),
            "clearance": int(member.clearance),
            "mandate": sorted(member.mandate),
            "groups": sorted(member.groups),
            "active": member.active,
        },
        "parents": [],
    }


def report_entity(report: ReportFacts, uid: str) -> dict[str, Any]:
    """The Cedar entity (JSON form) of a report's facts, under entity id `uid`."""
    return {
        "uid": {"type": REPORT_TYPE, "id": uid},
        "attrs": {
            "originator": {"__entity": {"type": MEMBER_TYPE, "id": report.originator}},
            "status": report.status,
            "classification": int(report.classification),
            "topics": sorted(report.topics),
            "releasable_to": sorted(report.releasable_to),
            "tearline_to": sorted(report.tearline_to),
            "tearline_classification": int(report.tearline_classification),
            "has_summary": report.has_summary,
            "granted": sorted(report.granted),
            "tlp": report.tlp,
            "orcon": report.orcon,
        },
        "parents": [],
    }


# --- YAML with line numbers ---------------------------------------------------------------------


class _YamlMap(dict[str, Any]):
    line: int
    lines: dict[str, int]


class _YamlSeq(list[Any]):
    line: int
    lines: list[int]


class _LineLoader(yaml.SafeLoader):
    """SafeLoader that records where each mapping, sequence and value starts."""


def _construct_map(loader: yaml.SafeLoader, node: yaml.MappingNode) -> _YamlMap:
    loader.flatten_mapping(node)
    result = _YamlMap()
    result.line = node.start_mark.line + 1
    result.lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, str):
            raise yaml.MarkedYAMLError(
                problem=f"mapping keys must be strings, not {key!r}",
                problem_mark=key_node.start_mark,
            )
        # PyYAML keeps the last of duplicate keys; a silently dropped entry is a policy change
        if key in result:
            raise yaml.MarkedYAMLError(
                problem=f"duplicate key {key!r}", problem_mark=key_node.start_mark
            )
        result[key] = loader.construct_object(value_node, deep=True)
        result.lines[key] = value_node.start_mark.line + 1
    return result


def _construct_seq(loader: yaml.SafeLoader, node: yaml.SequenceNode) -> _YamlSeq:
    result = _YamlSeq(loader.construct_object(item, deep=True) for item in node.value)
    result.line = node.start_mark.line + 1
    result.lines = [item.start_mark.line + 1 for item in node.value]
    return result


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_map)
_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_seq)


def _load_yaml(file: str, text: str) -> _YamlMap:
    try:
        # _LineLoader is a SafeLoader (plus line numbers): no object can be built from the text.
        document = yaml.load(text, Loader=_LineLoader)  # noqa: S506  # nosec B506
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        raise PolicyError(file, line, f"invalid YAML: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise PolicyError(file, 1, f"invalid YAML: {exc}") from None
    if not isinstance(document, _YamlMap):
        raise PolicyError(file, 1, "expected a mapping at the top level")
    return document


_MISSING: Final[Any] = object()


class _Fields:
    """Typed, line-aware access to one YAML mapping; refuses unknown keys and wrong types."""

    def __init__(self, file: str, node: object, line: int, what: str) -> None:
        if not isinstance(node, _YamlMap):
            raise PolicyError(file, line, f"{what} must be a mapping")
        self.file = file
        self.node = node
        self.what = what

    def line_of(self, key: str) -> int:
        return self.node.lines.get(key, self.node.line)

    def error(self, key: str, message: str) -> PolicyError:
        return PolicyError(self.file, self.line_of(key), message)

    def only(self, *allowed: str) -> None:
        # a misspelt optional key would otherwise be ignored and its default used instead
        for key in self.node:
            if key not in allowed:
                raise self.error(key, f"unknown key {key!r} in {self.what}")

    def get(self, key: str, kind: type, default: Any = _MISSING) -> Any:
        if key not in self.node:
            if default is _MISSING:
                raise PolicyError(self.file, self.node.line, f"{self.what} is missing {key!r}")
            return default
        value = self.node[key]
        # bool is an int subclass; a YAML `yes` must not pass as a number or vice versa
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise self.error(key, f"{key!r} must be {_KIND_NAMES.get(kind, kind.__name__)}")
        return value

    def text(self, key: str, default: Any = _MISSING) -> str:
        value: str = self.get(key, str, default)
        if not value.strip():
            raise self.error(key, f"{key!r} must not be empty")
        return value

    def strings(self, key: str, default: Any = _MISSING) -> list[tuple[str, int]]:
        """The string items of a list, each with its line."""
        if key not in self.node and default is not _MISSING:
            return [(item, self.node.line) for item in default]
        items: _YamlSeq = self.get(key, list)
        result: list[tuple[str, int]] = []
        for item, line in zip(items, items.lines, strict=True):
            if not isinstance(item, str):
                raise PolicyError(self.file, line, f"items of {key!r} must be strings")
            result.append((item, line))
        return result


_KIND_NAMES: Final[dict[type, str]] = {
    str: "a string",
    bool: "true or false",
    list: "a list",
    dict: "a mapping",
}


# --- Taxonomy and roster --------------------------------------------------------------------------


def _parse_taxonomy(file: str, text: str) -> Taxonomy:
    top = _Fields(file, _load_yaml(file, text), 1, "the taxonomy")
    top.only("branches")
    branches_node: _YamlMap = top.get("branches", dict)
    leaves: dict[str, str] = {}
    branches: dict[str, tuple[str, ...]] = {}
    branch_names: dict[str, str] = {}
    for code, branch_node in branches_node.items():
        line = branches_node.lines[code]
        if not _BRANCH_CODE.fullmatch(code):
            raise PolicyError(file, line, f"bad branch code {code!r}: expected upper-case letters")
        branch = _Fields(file, branch_node, line, f"branch {code}")
        branch.only("name", "topics")
        branch_names[code] = branch.text("name")
        topics: _YamlMap = branch.get("topics", dict)
        if not topics:
            raise branch.error("topics", f"branch {code} has no topics")
        for leaf, name in topics.items():
            leaf_line = topics.lines[leaf]
            prefix, _, suffix = leaf.partition(".")
            if prefix != code or not _LEAF_SUFFIX.fullmatch(suffix):
                raise PolicyError(
                    file, leaf_line, f"bad topic code {leaf!r}: expected {code}.<LEAF>"
                )
            if not isinstance(name, str) or not name.strip():
                raise PolicyError(file, leaf_line, f"topic {leaf} needs a name")
            leaves[leaf] = name
        branches[code] = tuple(topics)
    if not leaves:
        raise PolicyError(file, branches_node.line, "the taxonomy has no branches")
    return Taxonomy(
        leaves=MappingProxyType(leaves),
        branches=MappingProxyType(branches),
        branch_names=MappingProxyType(branch_names),
    )


def _parse_roster(file: str, text: str, taxonomy: Taxonomy) -> dict[str, Member]:
    top = _Fields(file, _load_yaml(file, text), 1, "the roster")
    top.only("members")
    entries: _YamlSeq = top.get("members", list)
    if not entries:
        raise top.error("members", "the roster has no members")
    members: dict[str, Member] = {}
    for entry, line in zip(entries, entries.lines, strict=True):
        fields = _Fields(file, entry, line, "a member")
        fields.only("code", "name", "kind", "roles", "clearance", "mandate", "active")
        code = fields.get("code", str)
        if not _MEMBER_CODE.fullmatch(code):
            raise fields.error(
                "code", f"bad member code {code!r}: expected 2-16 upper-case letters or digits"
            )
        # audiences mix member codes and group names, so a member named like a group is ambiguous
        if code in GROUPS:
            raise fields.error("code", f"member code {code!r} is reserved for a group")
        if code in members:
            raise fields.error("code", f"duplicate member code {code!r}")
        kind = fields.get("kind", str)
        if kind not in MEMBER_KINDS:
            raise fields.error("kind", f"kind must be one of {', '.join(MEMBER_KINDS)}")
        roles = fields.strings("roles")
        for role, role_line in roles:
            if role not in MEMBER_ROLES:
                raise PolicyError(file, role_line, f"unknown role {role!r}")
        if not roles:
            raise fields.error("roles", f"member {code} has no role")
        clearance_name = fields.get("clearance", str)
        try:
            clearance = Classification[clearance_name]
        except KeyError:
            raise fields.error("clearance", f"unknown clearance {clearance_name!r}") from None
        mandate: set[str] = set()
        for topic, topic_line in fields.strings("mandate"):
            try:
                mandate |= taxonomy.expand([topic])
            except ValueError:
                raise PolicyError(file, topic_line, f"unknown topic {topic!r} in mandate") from None
        members[code] = Member(
            code=code,
            name=fields.text("name"),
            kind=kind,
            roles=frozenset(role for role, _ in roles),
            clearance=clearance,
            mandate=frozenset(mandate),
            active=fields.get("active", bool),
        )
    return members


# --- Cedar ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Span:
    start: int
    end: int
    line: int


def _split_policies(text: str) -> list[_Span]:
    """Split Cedar text into policy statements, skipping strings and `//` comments.

    Cedar's own errors carry no source location, so statements are located here: `;` ends a
    policy everywhere except inside a string or a comment, and Cedar has no other comment form.
    """
    spans: list[_Span] = []
    start: int | None = None
    line = 1
    start_line = 1
    index = 0
    length = len(text)
    while index < length:
        char = text[index]
        if char == "\n":
            line += 1
        elif char == "/" and text.startswith("//", index):
            newline = text.find("\n", index)
            index = length if newline < 0 else newline
            continue
        elif not char.isspace():
            if start is None:
                start, start_line = index, line
            if char == '"':
                index += 1
                while index < length and text[index] != '"':
                    if text[index] == "\n":
                        line += 1
                    index += 2 if text[index] == "\\" else 1
            elif char == ";":
                spans.append(_Span(start, index + 1, start_line))
                start = None
        index += 1
    if start is not None:
        spans.append(_Span(start, length, start_line))
    return spans


def _token_line(lines: list[str], message: str) -> int | None:
    """Index of the first line naming a token the message quotes, if any."""
    tokens = _BACKTICKED.findall(message)
    for found in _SCHEMA_TYPES.findall(message):
        tokens.extend(name.strip() for name in found.split(","))
    tokens.extend(_TRAILING_NAME.findall(message))
    for token in tokens:
        pattern = re.compile(rf"(?<![\w:]){re.escape(token)}(?![\w])")
        for index, line in enumerate(lines):
            if pattern.search(line.split("//", 1)[0]):
                return index
    return None


def _error_line(text: str, message: str, parse: Callable[[str], object]) -> int:
    """Index of the line in `text` where the parse error `message` arises.

    A syntax error first shows in the shortest prefix of lines that reproduces it, which ends at
    the offending line; shorter prefixes only run out of input, so the prefix is bisected. An
    error seen only once the text is complete (an unknown function or type) is placed on the
    line naming the token it quotes.
    """
    lines = text.split("\n")
    if not _SYNTAX_ERROR.search(message):
        # the whole text is at fault; its first line is a better pointer than its last
        return _token_line(lines, message) or 0

    def reproduces(count: int) -> bool:
        try:
            parse("\n".join(lines[:count]))
        except ValueError as exc:
            return str(exc) == message
        return False

    low, high = 1, len(lines)
    while low < high:
        middle = (low + high) // 2
        if reproduces(middle):
            high = middle
        else:
            low = middle + 1
    return low - 1


def _cedar_parse_error(file: str, text: str, exc: ValueError) -> PolicyError:
    for span in _split_policies(text):
        statement = text[span.start : span.end]
        try:
            cedarpy.policies_to_json_str(statement)
        except ValueError as inner:
            offset = _error_line(statement, str(inner), cedarpy.policies_to_json_str)
            return PolicyError(file, span.line + offset, f"Cedar syntax error: {inner}")
    return PolicyError(file, 1, f"Cedar syntax error: {exc}")


def _walk(node: object) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def _originator_is(code: str) -> dict[str, Any]:
    """EST of `resource.originator == Tearline::Member::"<code>"`."""
    return {
        "==": {
            "left": {".": {"left": {"Var": "resource"}, "attr": "originator"}},
            "right": {"Value": {"__entity": {"type": MEMBER_TYPE, "id": code}}},
        }
    }


def _principal_is(code: str) -> dict[str, Any]:
    """EST of `principal == Tearline::Member::"<code>"`."""
    return {
        "==": {
            "left": {"Var": "principal"},
            "right": {"Value": {"__entity": {"type": MEMBER_TYPE, "id": code}}},
        }
    }


@dataclass
class _PolicyFile:
    file: str
    text: str
    country: str | None
    spans: list[_Span]
    count: int  # policies and templates, which share Cedar's positional ids
    policies: dict[str, dict[str, Any]]  # positional Cedar id -> EST, in file order

    def span(self, positional_id: str) -> _Span | None:
        index = int(positional_id.removeprefix("policy"))
        # the splitter and Cedar agree on statement boundaries; if they ever did not, point at
        # the file rather than at a wrong line
        if len(self.spans) != self.count or index >= len(self.spans):
            return None
        return self.spans[index]

    def line_of(self, positional_id: str) -> int:
        span = self.span(positional_id)
        return span.line if span else 1


def _parse_policy_file(file: str, text: str, country: str | None) -> _PolicyFile:
    try:
        est = json.loads(cedarpy.policies_to_json_str(text))
    except ValueError as exc:
        raise _cedar_parse_error(file, text, exc) from None
    templates: dict[str, Any] = est.get("templates", {})
    static: dict[str, dict[str, Any]] = est.get("staticPolicies", {})
    parsed = _PolicyFile(
        file, text, country, _split_policies(text), len(templates) + len(static), {}
    )
    for positional_id in templates:
        raise PolicyError(
            file,
            parsed.line_of(positional_id),
            "policy templates are not supported: write a static policy",
        )
    parsed.policies = dict(
        sorted(static.items(), key=lambda item: int(item[0].removeprefix("policy")))
    )
    return parsed


def _check_policies(parsed: _PolicyFile, seen: dict[str, tuple[str, int]]) -> None:
    """Enforce @id, effect and scoping rules on one file's policies, recording ids in `seen`."""
    prefix = f"{parsed.country}." if parsed.country else BASE_ID_PREFIX
    for positional_id, policy in parsed.policies.items():
        line = parsed.line_of(positional_id)
        policy_id = (policy.get("annotations") or {}).get("id")
        if not policy_id:
            raise PolicyError(
                parsed.file,
                line,
                'policy has no @id("...") annotation: decisions record the ids that decided them',
            )
        if not _POLICY_ID.fullmatch(policy_id) or not policy_id.startswith(prefix):
            raise PolicyError(
                parsed.file,
                line,
                f"bad policy id {policy_id!r}: ids in this file must look like {prefix}<name>",
            )
        if policy_id in seen:
            first_file, first_line = seen[policy_id]
            raise PolicyError(
                parsed.file,
                line,
                f"duplicate policy id {policy_id!r} (first at {first_file}:{first_line})",
            )
        seen[policy_id] = (parsed.file, line)
        if parsed.country and policy.get("effect") != "forbid":
            raise PolicyError(
                parsed.file,
                line,
                "a country file may only forbid: `permit` is refused, since a country policy"
                " cannot widen access beyond the base policy",
            )
        # A decision is cached and stored per report markings (ReportFacts minus id); a policy
        # naming one report would make it depend on identity and go stale in those stores.
        for node in _walk(policy):
            if node.get("type") == REPORT_TYPE and "id" in node:
                raise PolicyError(
                    parsed.file,
                    line,
                    "a policy may not name a report: decide on its markings instead",
                )


def _validate(parsed: _PolicyFile, schema: cedarpy.Schema) -> None:
    result = cedarpy.validate_policies(parsed.text, schema)
    if result.validation_passed:
        return
    error = result.errors[0]
    line = 1
    span = parsed.span(error.policy_id) if error.policy_id.startswith("policy") else None
    if span is not None:
        offset = _token_line(parsed.text[span.start : span.end].split("\n"), error.error)
        line = span.line + (offset or 0)
    message = re.sub(r"^for policy `policy\d+`, ", "", error.error)
    raise PolicyError(parsed.file, line, f"fails schema validation: {message}")


def _scoped(parsed: _PolicyFile) -> dict[str, dict[str, Any]]:
    """The file's policies keyed by @id; a country's are confined to its own reports.

    Scoping is added to the parsed policy rather than checked in the author's text: an extra
    `when` clause is ANDed with whatever the author wrote, so no phrasing of the policy (an `||`,
    an `unless`, a wider scope) can reach another member's reports, and placing it first means
    the author's conditions are not even evaluated for them.
    """
    result: dict[str, dict[str, Any]] = {}
    for policy in parsed.policies.values():
        policy_id = policy["annotations"]["id"]
        if parsed.country:
            # Its own reports only, and never against the originator itself, which always
            # keeps full (product.md, rule 1): country rules restrict the recipients.
            scope = {"kind": "when", "body": _originator_is(parsed.country)}
            exempt = {"kind": "unless", "body": _principal_is(parsed.country)}
            result[policy_id] = {**policy, "conditions": [scope, exempt, *policy["conditions"]]}
        else:
            result[policy_id] = policy
    return result


def _parse_schema(file: str, text: str) -> cedarpy.Schema:
    try:
        return cedarpy.Schema.from_str(text)
    except ValueError as exc:
        line = _error_line(text, str(exc), cedarpy.Schema.from_str) + 1
        raise PolicyError(file, line, f"invalid Cedar schema: {exc}") from None


def _line_containing(text: str, needle: str) -> int:
    for index, line in enumerate(text.split("\n")):
        if needle in line:
            return index + 1
    return 1


_PROBE_REPORT: Final = ReportFacts(
    id="probe",
    originator="PROBE",
    status="active",
    classification=Classification.SECRET,
    topics=frozenset({"PROBE.TOPIC"}),
    releasable_to=frozenset({"ALL"}),
    tearline_to=frozenset({"ALL"}),
    tearline_classification=Classification.UNCLASSIFIED,
    has_summary=True,
)


def _member_entities(
    schema_text: str, schema: cedarpy.Schema, members: Mapping[str, Member]
) -> cedarpy.Entities:
    """Parse the roster as Cedar entities, proving the schema fits what the engine will send."""
    try:
        entities = cedarpy.Entities.from_json_str(
            json.dumps([member_entity(member) for member in members.values()]), schema
        )
    except ValueError as exc:
        line = _line_containing(schema_text, "entity Member")
        raise PolicyError(
            SCHEMA_FILE, line, f"the schema does not fit the roster's member entities: {exc}"
        ) from None
    try:
        entities.with_added_json_str(json.dumps([report_entity(_PROBE_REPORT, "probe")]), schema)
    except ValueError as exc:
        line = _line_containing(schema_text, "entity Report")
        raise PolicyError(
            SCHEMA_FILE, line, f"the schema does not fit the engine's report entities: {exc}"
        ) from None
    return entities


def _check_actions(
    schema_text: str,
    schema: cedarpy.Schema,
    policy_set: cedarpy.PolicySet,
    entities: cedarpy.Entities,
    member: str,
) -> None:
    """Run one request per action so a schema without the engine's actions is refused here."""
    probe = entities.with_added_json_str(json.dumps([report_entity(_PROBE_REPORT, "probe")]))
    requests = [
        {
            "principal": {"type": MEMBER_TYPE, "id": member},
            "action": {"type": ACTION_TYPE, "id": action},
            "resource": {"type": REPORT_TYPE, "id": "probe"},
        }
        for action in ("read_full", "read_tearline", "hit")
    ]
    for result in cedarpy.is_authorized_batch(requests, policy_set, probe, schema):
        if result.diagnostics.errors:
            line = _line_containing(schema_text, "action")
            raise PolicyError(
                SCHEMA_FILE,
                line,
                f"the engine cannot decide under this schema: {result.diagnostics.errors[0]}",
            )


# --- Decision cases -------------------------------------------------------------------------------

_LEVEL_NAMES: Final = ", ".join(level.value for level in Level)


def _parse_cases(
    file: str,
    text: str,
    members: Mapping[str, Member],
    taxonomy: Taxonomy,
    policy_ids: Mapping[str, object],
    names: dict[str, str],
) -> list[DecisionCase]:
    top = _Fields(file, _load_yaml(file, text), 1, "a decision-case file")
    top.only("cases")
    entries: _YamlSeq = top.get("cases", list)
    cases: list[DecisionCase] = []

    def member_code(code: str, line: int, field: str) -> str:
        if code not in members:
            raise PolicyError(file, line, f"unknown member {code!r} in {field}")
        return code

    def audience(fields: _Fields, key: str, default: list[str]) -> frozenset[str]:
        result = set()
        for code, line in fields.strings(key, default):
            if code not in GROUPS:
                member_code(code, line, key)
            result.add(code)
        return frozenset(result)

    def classification(fields: _Fields, key: str, default: str = _MISSING) -> Classification:
        name = fields.get(key, str, default)
        try:
            return Classification[name]
        except KeyError:
            raise fields.error(key, f"unknown classification {name!r}") from None

    for entry, line in zip(entries, entries.lines, strict=True):
        case = _Fields(file, entry, line, "a case")
        case.only("name", "member", "report", "expect", "decided_by")
        name = case.text("name")
        if name in names:
            raise case.error("name", f"duplicate case name {name!r} (first in {names[name]})")
        names[name] = file
        member = member_code(case.get("member", str), case.line_of("member"), "member")
        report = _Fields(file, case.get("report", dict), case.line_of("report"), "a case report")
        report.only(
            "originator",
            "status",
            "classification",
            "topics",
            "releasable_to",
            "tearline_to",
            "tearline_classification",
            "summary",
            "granted",
            "tlp",
            "orcon",
        )
        topics = set()
        for topic, topic_line in report.strings("topics"):
            if topic not in taxonomy.leaves:
                raise PolicyError(file, topic_line, f"unknown topic {topic!r}: use a leaf code")
            topics.add(topic)
        try:
            facts = ReportFacts(
                id=f"case:{name}",
                originator=member_code(
                    report.get("originator", str), report.line_of("originator"), "originator"
                ),
                status=report.get("status", str, "active"),
                classification=classification(report, "classification"),
                topics=frozenset(topics),
                releasable_to=audience(report, "releasable_to", []),
                tearline_to=audience(report, "tearline_to", ["ALL"]),
                tearline_classification=classification(
                    report, "tearline_classification", "UNCLASSIFIED"
                ),
                has_summary=report.get("summary", bool, False),
                granted=frozenset(
                    member_code(code, code_line, "granted")
                    for code, code_line in report.strings("granted", [])
                ),
                tlp=report.get("tlp", str, "AMBER"),
                orcon=report.get("orcon", bool, False),
            )
        except ValueError as exc:
            raise PolicyError(file, report.node.line, str(exc)) from None
        expect = case.get("expect", str)
        if expect not in Level.__members__.values():
            raise case.error("expect", f"expect must be one of {_LEVEL_NAMES}")
        decided_by = None
        if "decided_by" in case.node:
            decided_by = tuple(policy_id for policy_id, _ in case.strings("decided_by"))
            for policy_id, id_line in case.strings("decided_by"):
                if policy_id not in policy_ids:
                    raise PolicyError(file, id_line, f"unknown policy id {policy_id!r}")
        cases.append(
            DecisionCase(
                name=name,
                file=file,
                line=line,
                member=member,
                report=facts,
                expect=Level(expect),
                decided_by=decided_by,
            )
        )
    return cases


# --- Loading --------------------------------------------------------------------------------------


def _listing(root: Path, directory: str, suffix: str) -> list[str]:
    """Relative paths of the `*<suffix>` files in an optional subdirectory; refuses strays."""
    folder = root / directory
    if not folder.exists():
        return []
    if not folder.is_dir():
        raise PolicyError(directory, 1, "expected a directory")
    found: list[str] = []
    for entry in sorted(folder.iterdir()):
        relative = f"{directory}/{entry.name}"
        # dotfiles (.gitkeep, a ConfigMap's ..data links) and READMEs are not policy
        if entry.name.startswith(".") or entry.name in _DOC_FILES:
            continue
        if not entry.is_file() or not entry.name.endswith(suffix):
            # refused rather than skipped: `ITA.cedar.bak` or `cases.yml` would look loaded
            raise PolicyError(relative, 1, f"unexpected entry: {directory}/ holds *{suffix} files")
        found.append(relative)
    return found


def _read(root: Path, relative: str, contents: dict[str, bytes]) -> str:
    path = root / relative
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise PolicyError(relative, 1, "file is missing") from None
    except OSError as exc:
        raise PolicyError(relative, 1, f"cannot read file: {exc.strerror}") from None
    contents[relative] = data
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise PolicyError(relative, line, "not valid UTF-8") from None


def _bundle_hash(contents: Mapping[str, bytes]) -> str:
    """SHA-256 over each file's relative path and bytes, in path order.

    Every field is length-prefixed, so no two different bundles concatenate to the same input.
    """
    digest = hashlib.sha256()
    for relative in sorted(contents):
        name = relative.encode("utf-8")
        data = contents[relative]
        digest.update(len(name).to_bytes(8, "big") + name)
        digest.update(len(data).to_bytes(8, "big") + data)
    return digest.hexdigest()


def _check_top_level(root: Path) -> None:
    allowed = {*_REQUIRED_FILES, COUNTRIES_DIR, CASES_DIR, *_DOC_FILES}
    for entry in sorted(root.iterdir()):
        if entry.name not in allowed and not entry.name.startswith("."):
            raise PolicyError(
                entry.name, 1, "unexpected entry: the bundle is " + ", ".join(sorted(allowed))
            )


def load_bundle(policy_dir: Path) -> PolicyBundle:
    """Load and validate the bundle in `policy_dir`; raise PolicyError on any problem."""
    root = Path(policy_dir)
    if not root.is_dir():
        raise PolicyError(str(root), 1, "policy directory not found")
    _check_top_level(root)
    contents: dict[str, bytes] = {}

    taxonomy = _parse_taxonomy(TAXONOMY_FILE, _read(root, TAXONOMY_FILE, contents))
    members = _parse_roster(ROSTER_FILE, _read(root, ROSTER_FILE, contents), taxonomy)
    schema_text = _read(root, SCHEMA_FILE, contents)
    schema = _parse_schema(SCHEMA_FILE, schema_text)
    member_entities = _member_entities(schema_text, schema, members)

    policy_files = [_parse_policy_file(BASE_FILE, _read(root, BASE_FILE, contents), None)]
    for relative in _listing(root, COUNTRIES_DIR, ".cedar"):
        code = relative.removeprefix(f"{COUNTRIES_DIR}/").removesuffix(".cedar")
        if code not in members:
            raise PolicyError(
                relative, 1, f"{code!r} is not a roster member: name the file <CODE>.cedar"
            )
        policy_files.append(_parse_policy_file(relative, _read(root, relative, contents), code))

    sources: dict[str, tuple[str, int]] = {}
    effective: dict[str, dict[str, Any]] = {}
    for parsed in policy_files:
        _check_policies(parsed, sources)
        _validate(parsed, schema)
        effective.update(_scoped(parsed))
    policy_json = json.dumps({"staticPolicies": effective, "templates": {}, "templateLinks": []})
    try:
        policy_set = cedarpy.PolicySet.from_json_str(policy_json)
        policy_text = cedarpy.format_policies(cedarpy.policies_from_json_str(policy_json), 100)
    except ValueError as exc:
        raise PolicyError(BASE_FILE, 1, f"cannot assemble the policy set: {exc}") from None
    # the scoping clauses are ours, but they too must type-check before the set is trusted
    final = cedarpy.validate_policies(policy_text, schema)
    if not final.validation_passed:
        raise PolicyError(BASE_FILE, 1, f"assembled policy set fails validation: {final.errors[0]}")
    _check_actions(schema_text, schema, policy_set, member_entities, next(iter(members)))

    cases: list[DecisionCase] = []
    case_names: dict[str, str] = {}
    for relative in _listing(root, CASES_DIR, ".yaml"):
        text = _read(root, relative, contents)
        cases.extend(_parse_cases(relative, text, members, taxonomy, sources, case_names))

    return PolicyBundle(
        hash=_bundle_hash(contents),
        loaded_at=datetime.now(UTC),
        files=tuple(sorted(contents)),
        members=MappingProxyType(members),
        taxonomy=taxonomy,
        schema_text=schema_text,
        policy_text=policy_text,
        policy_ids=tuple(sources),
        policy_sources=MappingProxyType(sources),
        schema=schema,
        policy_set=policy_set,
        member_entities=member_entities,
        cases=tuple(cases),
    )
