"""Running `tearline` in-process against a world's data dir and database."""

from __future__ import annotations

from click.testing import Result
from typer.testing import CliRunner

from app.cli.main import app as cli
from app.config import get_settings
from tests.conftest import World


def invoke(world: World, *args: str, **extra: str) -> Result:
    """`tearline ARGS` with the world's settings (and `extra` TEARLINE_* variables)."""
    settings = world.settings
    env = {
        **extra,
        "TEARLINE_ENV": "development",
        "TEARLINE_DATA_DIR": str(settings.data_dir),
        "TEARLINE_DATABASE_URL": settings.resolved_database_url,
        "TEARLINE_POLICY_DIR": str(settings.policy_dir),
        "TEARLINE_ISSUER": settings.resolved_issuer,
    }
    get_settings.cache_clear()
    try:
        return CliRunner().invoke(cli, list(args), env=env)
    finally:
        get_settings.cache_clear()
