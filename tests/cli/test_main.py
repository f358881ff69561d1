"""The `tearline` command, run in-process against a scratch data directory and database."""

from __future__ import annotations

import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, select
from typer.testing import CliRunner

from app.audit.models import AuditEntry
from app.cli.main import app as cli
from app.config import PROJECT_ROOT, Settings, get_settings
from app.kit.jwt import SigningKey
from app.main import create_app
from tests.conftest import drop_database, make_world, new_database_url


@pytest.fixture
def env(tmp_path: Path) -> Iterator[dict[str, str]]:
    url = new_database_url(tmp_path)
    variables = {
        "TEARLINE_ENV": "development",
        "TEARLINE_DATA_DIR": str(tmp_path / "data"),
        "TEARLINE_DATABASE_URL": url,
        "TEARLINE_POLICY_DIR": str(PROJECT_ROOT / "policies"),
        "TEARLINE_ISSUER": "http://cli.test",
    }
    yield variables
    get_settings.cache_clear()
    drop_database(url)


def run(env: dict[str, str], *args: str) -> tuple[int, str]:
    get_settings.cache_clear()
    result = CliRunner().invoke(cli, list(args), env=env)
    get_settings.cache_clear()
    return result.exit_code, result.output


class TestDevInit:
    def test_init_creates_a_client_and_a_0600_key_per_member(self, env: dict[str, str]) -> None:
        code, output = run(env, "dev", "init")
        assert code == 0, output
        assert "32 clients created" in output
        clients = Path(env["TEARLINE_DATA_DIR"]) / "dev" / "clients"
        pem = clients / "ITA.dev.pem"
        assert stat.S_IMODE(pem.stat().st_mode) == 0o600
        assert pem.read_text().startswith("-----BEGIN PRIVATE KEY-----")
        assert (clients / "ITA.dev.kid").read_text().strip()
        assert len(list(clients.glob("*.pem"))) == 32
        keyring = Path(env["TEARLINE_DATA_DIR"]) / "keyring.json"
        assert stat.S_IMODE(keyring.stat().st_mode) == 0o600

    def test_init_is_idempotent(self, env: dict[str, str]) -> None:
        assert run(env, "dev", "init")[0] == 0
        kid = (Path(env["TEARLINE_DATA_DIR"]) / "dev" / "clients" / "USA.dev.kid").read_text()
        code, output = run(env, "dev", "init")
        assert code == 0, output
        assert "0 clients created" in output
        again = (Path(env["TEARLINE_DATA_DIR"]) / "dev" / "clients" / "USA.dev.kid").read_text()
        assert again == kid

    def test_dev_token_is_accepted_by_the_api(self, env: dict[str, str]) -> None:
        assert run(env, "dev", "init")[0] == 0
        code, output = run(env, "dev", "token", "FATF", "--scope", "reports:read")
        assert code == 0, output
        token = output.strip()
        settings = Settings(
            env="development",
            data_dir=Path(env["TEARLINE_DATA_DIR"]),
            database_url=env["TEARLINE_DATABASE_URL"],
            issuer=env["TEARLINE_ISSUER"],
        )
        with TestClient(create_app(settings)) as http:
            me = http.get("/v1/members/me", headers={"Authorization": f"Bearer {token}"})
            assert me.status_code == 200
            assert me.json()["code"] == "FATF"
            assert me.json()["clearance"] == "RESTRICTED"
            assert "FATF.dev" in me.json()["clients"]

    @pytest.mark.parametrize("command", [["dev", "init"], ["dev", "token", "ITA"]])
    def test_dev_commands_refuse_to_run_outside_development(
        self, env: dict[str, str], command: list[str]
    ) -> None:
        prod = {**env, "TEARLINE_ENV": "production", "TEARLINE_ALLOW_SQLITE_IN_PRODUCTION": "true"}
        code, output = run(prod, *command)
        assert code != 0
        assert "development" in output


class TestClients:
    def test_add_list_and_revoke_a_client(self, env: dict[str, str], tmp_path: Path) -> None:
        assert run(env, "dev", "init")[0] == 0
        key = SigningKey.generate("ita-liaison-1")
        pem = tmp_path / "liaison.pub.pem"
        pem.write_text(key.public_pem())
        code, output = run(
            env,
            "clients",
            "add",
            "ITA.liaison",
            "--public-key",
            str(pem),
            "--kid",
            key.kid,
            "--scope",
            "reports:read",
        )
        assert code == 0, output
        code, output = run(env, "clients", "list")
        assert "ITA.liaison\tactive\treports:read\tita-liaison-1" in output
        assert run(env, "clients", "revoke", "ITA.liaison")[0] == 0
        assert "ITA.liaison\trevoked" in run(env, "clients", "list")[1]

    def test_client_of_unknown_member_is_refused(self, env: dict[str, str], tmp_path: Path) -> None:
        assert run(env, "dev", "init")[0] == 0
        pem = tmp_path / "k.pem"
        pem.write_text(SigningKey.generate("k").public_pem())
        code, output = run(
            env, "clients", "add", "XYZ.liaison", "--public-key", str(pem), "--kid", "k"
        )
        assert code == 1
        assert "roster member" in output

    def test_a_private_key_is_not_accepted_as_a_public_key(
        self, env: dict[str, str], tmp_path: Path
    ) -> None:
        assert run(env, "dev", "init")[0] == 0
        pem = tmp_path / "k.pem"
        pem.write_text(SigningKey.generate("k").private_pem())
        code, output = run(
            env, "clients", "add", "ITA.other", "--public-key", str(pem), "--kid", "k2"
        )
        assert code == 1
        assert "PEM public key" in output


class TestPolicyAndMembers:
    def test_policy_check_accepts_the_shipped_bundle(self, env: dict[str, str]) -> None:
        code, output = run(env, "policy", "check")
        assert code == 0, output
        assert "32 members" in output

    def test_policy_test_runs_every_decision_case(self, env: dict[str, str]) -> None:
        code, output = run(env, "policy", "test")
        assert code == 0, output
        assert ", 0 failed" in output

    def test_broken_policy_is_refused_naming_file_and_line(
        self, env: dict[str, str], tmp_path: Path
    ) -> None:
        broken = tmp_path / "policies"
        shutil.copytree(PROJECT_ROOT / "policies", broken)
        base = broken / "base.cedar"
        base.write_text(base.read_text() + "\npermit (principal, action, resource) when { ;\n")
        code, output = run({**env, "TEARLINE_POLICY_DIR": str(broken)}, "policy", "check")
        assert code == 1
        assert "base.cedar:" in output

    def test_serve_refuses_to_start_with_a_broken_roster(
        self, env: dict[str, str], tmp_path: Path
    ) -> None:
        broken = tmp_path / "policies"
        shutil.copytree(PROJECT_ROOT / "policies", broken)
        roster = broken / "roster.yaml"
        roster.write_text(
            roster.read_text().replace("clearance: SECRET", "clearance: TOPSECRET", 1)
        )
        code, output = run({**env, "TEARLINE_POLICY_DIR": str(broken)}, "serve", "--port", "1")
        assert code == 1
        assert "roster.yaml:" in output

    def test_members_list_shows_the_whole_roster(self, env: dict[str, str]) -> None:
        code, output = run(env, "members", "list")
        assert code == 0
        lines = output.strip().splitlines()
        assert len(lines) == 32
        assert any(line.startswith("SAU\tstate\tchair\tSECRET\tactive") for line in lines)
        assert any(line.startswith("INTERPOL\tbody\tmember\tRESTRICTED") for line in lines)


class TestPolicyExplain:
    SAU_RULE = "SAU.donations-full-only-to-chairs-and-fatf"

    @pytest.fixture
    def report_id(self, env: dict[str, str], tmp_path: Path) -> str:
        """A Saudi report on donations, released to ALL, stored in the CLI's database."""
        world = make_world(tmp_path / "world", database_url=env["TEARLINE_DATABASE_URL"])
        try:
            created = world.submit("SAU", topics=["REV.DON"], releasable_to=["ALL"])
        finally:
            world.close()
        report_id: str = created["id"]
        return report_id

    def test_explain_prints_the_level_and_the_policies_that_decided_it(
        self, env: dict[str, str], report_id: str
    ) -> None:
        code, output = run(env, "policy", "explain", "DEU", report_id)
        assert code == 0, output
        lines = output.strip().splitlines()
        assert lines[:2] == ["level: tearline", f"decided by: base.tearline, {self.SAU_RULE}"]
        assert lines[2].startswith("policy bundle: ")

    def test_explain_shows_the_exempted_member_keeps_full(
        self, env: dict[str, str], report_id: str
    ) -> None:
        code, output = run(env, "policy", "explain", "ITA", report_id)
        assert code == 0, output
        assert "level: full\ndecided by: base.releasable\n" in output

    def test_explain_is_audited_as_the_operator(self, env: dict[str, str], report_id: str) -> None:
        assert run(env, "policy", "explain", "FATF", report_id)[0] == 0
        engine = create_engine(env["TEARLINE_DATABASE_URL"])
        try:
            with engine.connect() as conn:
                rows = conn.execute(
                    select(AuditEntry.client, AuditEntry.target, AuditEntry.reasons).where(
                        AuditEntry.action == "policy.explain"
                    )
                ).all()
        finally:
            engine.dispose()
        assert [tuple(row) for row in rows] == [
            ("operator", f"report:{report_id}", ["member:FATF", "level:tearline"])
        ]

    def test_unknown_member_is_refused_with_a_non_zero_exit(
        self, env: dict[str, str], report_id: str
    ) -> None:
        code, output = run(env, "policy", "explain", "NOR", report_id)
        assert code == 1
        assert "unknown member 'NOR'" in output

    @pytest.mark.parametrize("missing", ["00000000-0000-4000-8000-000000000000", "not-an-id"])
    def test_unknown_report_is_refused_with_a_non_zero_exit(
        self, env: dict[str, str], report_id: str, missing: str
    ) -> None:
        code, output = run(env, "policy", "explain", "DEU", missing)
        assert code == 1
        assert f"no report '{missing}'" in output

    def test_database_without_schema_is_refused_with_a_non_zero_exit(
        self, env: dict[str, str]
    ) -> None:
        code, output = run(env, "policy", "explain", "DEU", "00000000-0000-4000-8000-000000000000")
        assert code == 1
        assert "cannot read the database" in output


class TestKeysInit:
    def test_production_keyring_is_made_for_production(
        self, env: dict[str, str], tmp_path: Path
    ) -> None:
        prod = {**env, "TEARLINE_ENV": "production", "TEARLINE_DATA_DIR": str(tmp_path / "prod")}
        if prod["TEARLINE_DATABASE_URL"].startswith("sqlite"):
            prod["TEARLINE_ALLOW_SQLITE_IN_PRODUCTION"] = "true"
        code, output = run(prod, "keys", "init")
        assert code == 0, output
        assert "production keyring" in output
