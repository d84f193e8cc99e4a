"""``twistd foreman``: command-line options and the service factory.

Configuration errors end start-up with one line naming the setting and exit
status 2, never a traceback: the checks run here, before the reactor starts,
including a probe of the listening address and the database migration (a
database from a newer foreman is refused here too). Unknown ``FOREMAN_*``
environment variables are warned about here, one line each.
"""

from __future__ import annotations

import os
import sqlite3
import sys
from collections.abc import Mapping
from typing import Any

from twisted.application.service import IService
from twisted.python import usage

from foreman import __version__
from foreman.app.config import (
    SETTINGS,
    Config,
    ConfigError,
    check_data_dir,
    load_config,
    unknown_env_warnings,
)
from foreman.store.migrations import SchemaTooNew

__all__ = ["Options", "makeService"]


def _parameters() -> list[list[Any]]:
    params: list[list[Any]] = [
        ["config", "c", None, "TOML configuration file (env FOREMAN_CONFIG)"],
    ]
    for s in SETTINGS:
        if s.option is None or s.flag:
            continue
        env = f" (env {s.env}" + (f", default {s.default})" if s.default else ")")
        params.append([s.option, None, None, s.help + env])
    return params


def _flags() -> list[list[Any]]:
    return [[s.option, None, s.help] for s in SETTINGS if s.flag and s.option]


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "foreman fronts one Ollama server: a queued Ollama/OpenAI-compatible endpoint "
        "plus a durable job service. Precedence: option > environment > --config file > "
        "default. Settings without an option here are environment/TOML only: "
        + ", ".join(s.env for s in SETTINGS if s.option is None and s.env)
        + "."
    )
    optParameters = _parameters()
    optFlags = _flags()

    def opt_version(self) -> None:
        print(f"foreman {__version__}")
        sys.exit(0)

    def as_settings(self) -> dict[str, Any]:
        """Option values keyed by setting name (``None``: not given)."""
        values: dict[str, Any] = {"config": self.get("config")}
        for s in SETTINGS:
            if s.option is not None:
                raw = self.get(s.option)
                values[s.name] = bool(raw) or None if s.flag else raw
        return values


def _fail(message: str) -> SystemExit:
    sys.stderr.write(f"foreman: {message}\n")
    return SystemExit(2)


def configure(options: Options, env: Mapping[str, str] | None = None) -> Config:
    """Load, validate and prepare everything that can fail before the reactor runs.

    The listening address is probed before the data directory is created, so
    a port in use ends start-up without leaving a data directory, a webhook
    secret or a database behind.
    """
    env = os.environ if env is None else env
    for warning in unknown_env_warnings(env):
        sys.stderr.write(f"foreman: warning: {warning}\n")
    from foreman.app.services import ListenError, check_listen

    try:
        config = load_config(options.as_settings(), env)
        check_listen(config.listen)
        check_data_dir(config)
    except (ConfigError, ListenError) as e:
        raise _fail(str(e)) from None
    from foreman.store.database import open_sync

    try:
        open_sync(config.db_path).close()
    except SchemaTooNew as e:
        raise _fail(str(e)) from None
    except sqlite3.Error as e:
        raise _fail(f"cannot open database {config.db_path}: {e}") from None
    return config


def makeService(options: Options) -> IService:
    config = configure(options)
    from twisted.internet import reactor

    from foreman.app.service import ForemanService

    return ForemanService(config, reactor)
