"""Settings: every knob is a ``TEARLINE_*`` environment variable (or a line in ``.env``)."""

from __future__ import annotations

from enum import StrEnum
from functools import lru_cache
from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class Environment(StrEnum):
    development = "development"
    production = "production"


class ConfigError(Exception):
    """The configuration cannot be used; the message says which setting and why."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="TEARLINE_", env_file=".env", extra="ignore", frozen=True
    )

    env: Environment = Environment.development
    data_dir: Path = Path("var")
    database_url: str | None = None
    issuer: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    policy_dir: Path = PROJECT_ROOT / "policies"
    key_provider: str = Field(default="local", pattern="^(local|env)$")
    webhook_allow_private: bool | None = None
    audit_checkpoint_seconds: int = Field(default=60, ge=1)
    # Production refuses SQLite unless an operator says so on purpose.
    allow_sqlite_in_production: bool = False
    access_token_ttl: int = Field(default=900, ge=60, le=900)
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    log_level: str = "INFO"
    # Searches per client and minute (a token bucket per process; bursts up to the same number).
    search_rate_per_minute: int = Field(default=120, ge=1)

    @model_validator(mode="after")
    def _check_production(self) -> Settings:
        if self.env is Environment.production:
            url = self.resolved_database_url
            if url.startswith("sqlite") and not self.allow_sqlite_in_production:
                raise ValueError(
                    "TEARLINE_DATABASE_URL is SQLite in production; use PostgreSQL or set "
                    "TEARLINE_ALLOW_SQLITE_IN_PRODUCTION=true"
                )
            if self.issuer is None:
                raise ValueError("TEARLINE_ISSUER must be set in production")
        return self

    @property
    def is_development(self) -> bool:
        return self.env is Environment.development

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'tearline.db').as_posix()}"

    @property
    def resolved_issuer(self) -> str:
        return self.issuer or f"http://{self.host}:{self.port}"

    @property
    def allow_private_webhooks(self) -> bool:
        if self.webhook_allow_private is None:
            return self.is_development
        return self.webhook_allow_private

    @property
    def keyring_path(self) -> Path:
        return self.data_dir / "keyring.json"

    @property
    def dev_clients_dir(self) -> Path:
        return self.data_dir / "dev" / "clients"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()
