"""Summarise a py-spy `raw` (collapsed stacks) profile: where the server's samples go.

    .venv/bin/python bench/profile_summary.py bench/results/profile-...-GET-1.txt [--top 30]

Prints: samples per leaf package ("self"), the heaviest frames inclusive of their callees, and
the heaviest leaf frames. Frames are `function (file:line)` as py-spy writes them.
"""

from __future__ import annotations

import argparse
import re
import signal
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^():]+)(?::\d+)?\)$")

# A leaf frame's file tells where the CPU is; these prefixes name the layer.
PACKAGES = (
    ("app/", "app (Tearline code)"),
    ("sqlalchemy/", "sqlalchemy"),
    ("psycopg", "psycopg"),
    ("sqlite3/", "sqlite3"),
    ("jose/", "python-jose"),
    ("cryptography/", "cryptography"),
    ("cedarpy/", "cedarpy"),
    ("pydantic", "pydantic"),
    ("fastapi/", "fastapi"),
    ("starlette/", "starlette"),
    ("anyio/", "anyio (thread pool)"),
    ("uvicorn/", "uvicorn"),
    ("asyncio/", "asyncio"),
    ("concurrent/", "thread pool"),
    ("threading.py", "threading"),
    ("json/", "json"),
    ("yaml/", "yaml"),
)


def package_of(frame: str) -> str:
    m = _FRAME.match(frame)
    path = m.group("file") if m else frame
    for prefix, name in PACKAGES:
        if prefix in path:
            return name
    return path.split("/")[0] if "/" in path else path


_LINE = re.compile(r":\d+\)$")


def without_line(frame: str) -> str:
    """`f (file.py:12)` -> `f (file.py)`, so a function's lines add up."""
    return _LINE.sub(")", frame)


def load(path: Path) -> list[tuple[list[str], int]]:
    stacks = []
    for raw in path.read_text(errors="replace").splitlines():
        line = raw.strip()
        if not line:
            continue
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        stacks.append(([without_line(f) for f in stack.split(";")], int(count)))
    return stacks


def summarise(path: Path, top: int, within: str | None) -> None:
    stacks = load(path)
    if within:
        stacks = [(f, n) for f, n in stacks if any(within in x for x in f)]
    total = sum(n for _, n in stacks)
    if not total:
        print(f"{path}: no samples")
        return
    by_package: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    leaf: Counter[str] = Counter()
    for frames, n in stacks:
        by_package[package_of(frames[-1])] += n
        leaf[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    what = "GIL holder only" if path.name.endswith(".gil.txt") else "non-idle threads"
    print(f"{path}: {total} samples ({what}{', within ' + within if within else ''})")
    print("\nself samples by layer of the leaf frame:")
    for name, n in by_package.most_common(top):
        print(f"  {100 * n / total:5.1f}%  {name}")
    print("\nheaviest frames, inclusive of callees (Tearline and library frames):")
    for frame, n in inclusive.most_common(top * 3)[: top * 3]:
        if any(p in frame for p, _ in PACKAGES) and "threading.py" not in frame:
            print(f"  {100 * n / total:5.1f}%  {frame}")
    print("\nheaviest leaf frames:")
    for frame, n in leaf.most_common(top):
        print(f"  {100 * n / total:5.1f}%  {frame}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("profiles", nargs="+", type=Path)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument(
        "--within", help="keep only stacks with a frame containing this text, e.g. get_report"
    )
    args = parser.parse_args()
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # quiet when piped into `head`
    for path in args.profiles:
        summarise(path, args.top, args.within)
        print()


if __name__ == "__main__":
    main()
