"""Settings, and the refusals production mode makes at start-up."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from app import bootstrap
from app.config import ConfigError, Settings
from app.keys.provider import LocalKeyring


def production(tmp_path: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "env": "production",
        "data_dir": tmp_path,
        "database_url": "postgresql+psycopg://tearline@db.invalid/tearline",
        "issuer": "https://tearline.example",
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


class TestSettings:
    def test_defaults_are_the_embedded_development_setup(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        for name in list(os.environ):
            if name.startswith("TEARLINE_"):
                monkeypatch.delenv(name)
        settings = Settings(_env_file=None)  # type: ignore[call-arg]
        assert settings.is_development
        assert settings.resolved_database_url == "sqlite:///var/tearline.db"
        assert settings.resolved_issuer == "http://127.0.0.1:8000"
        assert settings.allow_private_webhooks is True

    def test_environment_variables_configure_settings(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("TEARLINE_AUDIT_CHECKPOINT_SECONDS", "5")
        monkeypatch.setenv("TEARLINE_WEBHOOK_ALLOW_PRIVATE", "false")
        settings = Settings(_env_file=None)  # type: ignore[call-arg]
        assert settings.audit_checkpoint_seconds == 5
        assert settings.allow_private_webhooks is False

    def test_production_refuses_sqlite_unless_explicitly_allowed(self, tmp_path: Path) -> None:
        with pytest.raises(ValidationError, match="SQLite in production"):
            production(tmp_path, database_url=None)
        allowed = production(tmp_path, database_url=None, allow_sqlite_in_production=True)
        assert allowed.resolved_database_url.startswith("sqlite")

    def test_production_requires_an_issuer(self, tmp_path: Path) -> None:
        with pytest.raises(ValidationError, match="TEARLINE_ISSUER"):
            production(tmp_path, issuer=None)

    def test_private_webhook_targets_are_off_by_default_in_production(self, tmp_path: Path) -> None:
        assert production(tmp_path).allow_private_webhooks is False


class TestKeyRefusals:
    def test_production_refuses_a_missing_key_file(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError, match="keyring"):
            bootstrap.load_key_provider(production(tmp_path))

    def test_production_refuses_development_keys(self, tmp_path: Path) -> None:
        LocalKeyring.create(tmp_path, development=True)
        with pytest.raises(ConfigError, match="development"):
            bootstrap.load_key_provider(production(tmp_path))

    def test_production_refuses_a_key_file_others_can_read(self, tmp_path: Path) -> None:
        keyring = LocalKeyring.create(tmp_path, development=False)
        keyring.path.chmod(0o644)
        with pytest.raises(ConfigError, match=r"permission|mode|readable"):
            bootstrap.load_key_provider(production(tmp_path))

    def test_production_accepts_a_production_keyring(self, tmp_path: Path) -> None:
        LocalKeyring.create(tmp_path, development=False)
        provider = bootstrap.load_key_provider(production(tmp_path))
        assert not provider.is_development

    def test_development_creates_its_keyring_on_first_start(self, tmp_path: Path) -> None:
        settings = Settings(env="development", data_dir=tmp_path / "d")
        provider = bootstrap.load_key_provider(settings, create=True)
        assert provider.is_development
        assert json.loads((tmp_path / "d" / "keyring.json").read_text())["development"] is True

    def test_env_provider_is_never_development(
        self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        monkeypatch.delenv("TEARLINE_MASTER_KEYS", raising=False)
        with pytest.raises(ConfigError):
            bootstrap.load_key_provider(production(tmp_path, key_provider="env"))
