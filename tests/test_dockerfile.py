"""The image runs what the README says, as whom it says: read from the Dockerfile itself.

The Dockerfile is also linted by hadolint in `make test`; nothing is built.
"""

from __future__ import annotations

import json
import re
import shlex

from app.config import PROJECT_ROOT

DOCKERFILE = (PROJECT_ROOT / "Dockerfile").read_text(encoding="utf-8")
README = (PROJECT_ROOT / "README.md").read_text(encoding="utf-8")


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", DOCKERFILE)
    found = []
    for line in joined.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        keyword, _, rest = stripped.partition(" ")
        found.append((keyword.upper(), rest.strip()))
    return found


def _final_stage() -> list[tuple[str, str]]:
    steps = _instructions()
    last_from = max(i for i, (keyword, _) in enumerate(steps) if keyword == "FROM")
    return steps[last_from:]


def _last(keyword: str) -> str:
    values = [rest for k, rest in _final_stage() if k == keyword]
    assert values, f"no {keyword} in the final stage"
    return values[-1]


class TestImage:
    def test_the_final_stage_runs_as_the_unprivileged_user_made_for_it(self) -> None:
        user = _last("USER")
        assert user == "10001:10001"
        made = " ".join(rest for k, rest in _final_stage() if k == "RUN")
        assert "groupadd --system --gid 10001 tearline" in made
        assert "useradd --system --uid 10001 --gid tearline" in made
        assert "--shell /usr/sbin/nologin" in made
        assert "uid 10001" in README

    def test_the_command_migrates_then_execs_the_server_on_port_8000(self) -> None:
        command = json.loads(_last("CMD"))
        assert command[:2] == ["sh", "-c"]
        assert command[2] == "tearline db upgrade && exec tearline serve --host 0.0.0.0 --port 8000"
        assert _last("EXPOSE") == "8000"
        assert "applies migrations, then\nserves on port 8000" in README

    def test_it_runs_in_production_mode_with_its_data_dir(self) -> None:
        env = _last("ENV")
        assert "TEARLINE_ENV=production" in env
        assert "TEARLINE_DATA_DIR=/var/lib/tearline" in env

    def test_the_health_check_asks_healthz_without_a_proxy(self) -> None:
        check = _last("HEALTHCHECK")
        assert "http://127.0.0.1:8000/healthz" in check
        assert "ProxyHandler({})" in check

    def test_the_base_is_a_slim_python_311(self) -> None:
        base = [
            rest for k, rest in _instructions() if k == "ARG" and rest.startswith("PYTHON_IMAGE")
        ]
        assert base == ["PYTHON_IMAGE=python:3.11-slim"]
        assert shlex.split(_final_stage()[0][1]) == ["${PYTHON_IMAGE}", "AS", "runtime"]
