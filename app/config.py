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
    # A signed checkpoint of the audit tree is issued when it has grown by this many entries, or
    # when this many seconds have passed since the last one and it has grown at all.
    audit_checkpoint_seconds: int = Field(default=60, ge=1)
    audit_checkpoint_entries: int = Field(default=10_000, ge=1)
    # Whether `tearline serve` maintains the audit tree and issues checkpoints itself (the
    # embedded default; harmless beside others, one at a time does the work), and how often.
    audit_tree_in_serve: bool = True
    audit_tree_poll_seconds: float = Field(default=1.0, gt=0, le=60)
    # Production refuses SQLite unless an operator says so on purpose.
    allow_sqlite_in_production: bool = False
    access_token_ttl: int = Field(default=900, ge=60, le=900)
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    log_level: str = "INFO"
    # Searches per client and minute (a token bucket per process; bursts up to the same number).
    search_rate_per_minute: int = Field(default=120, ge=1)
    # Requests per client and minute for the other route families, likewise.
    read_rate_per_minute: int = Field(default=3000, ge=1)
    write_rate_per_minute: int = Field(default=600, ge=1)
    export_rate_per_minute: int = Field(default=10, ge=1)
    # Tokens issued per client and minute (counted once its assertion verified, so nobody can
    # spend another client's budget), and token requests per source address and minute.
    token_rate_per_minute: int = Field(default=60, ge=1)
    token_address_rate_per_minute: int = Field(default=600, ge=1)
    # Seconds a request may take before its answer starts; then 503 (streamed answers, once
    # started, are not cut).
    request_timeout_seconds: float = Field(default=30.0, gt=0, le=3600)
    # Webhooks. Retry delays in seconds after the first, second, ... failed attempt (each with
    # up to 20 % jitter; a longer Retry-After wins); the delivery fails after the last one.
    webhook_retry_schedule: tuple[float, ...] = (5, 300, 1800, 7200, 18000, 36000, 36000)
    # A subscription whose every attempt has failed for this long is disabled, its owner told.
    webhook_disable_after_seconds: float = Field(default=5 * 86400, gt=0)
    # How long the secret before a rotation keeps signing beside the new one.
    webhook_secret_overlap_seconds: float = Field(default=86400, ge=0, le=7 * 86400)
    webhook_timeout_seconds: float = Field(default=10, gt=0, le=60)
    # Whether `tearline serve` dispatches webhooks itself (the embedded default), or leaves
    # that to `tearline worker` processes.
    webhook_dispatch_in_serve: bool = True
    webhook_poll_seconds: float = Field(default=0.5, gt=0, le=60)
    # Deliveries one dispatcher sends at once.
    webhook_concurrency: int = Field(default=64, ge=1, le=512)
    # Scheduling priority `tearline worker` lowers itself by (nice, 0-19): delivery is background
    # work that catches up later, so on a shared machine the API keeps its CPU under load.
    webhook_worker_nice: int = Field(default=10, ge=0, le=19)

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
    def require_https_webhooks(self) -> bool:
        return not self.is_development

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
