"""Settings: one TOML file, secret references, paths relative to the file.

The model lives in :mod:`ibreports.configmodel`, secret references and path resolution in
:mod:`ibreports.secrets`, validation in :mod:`ibreports.configparse`; this module loads a file
and is where callers import all of them from.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

from .configmodel import (
    AlertsConfig,
    ArchiveConfig,
    Config,
    CoverageConfig,
    ObjectLock,
    PgpConfig,
    RetentionConfig,
    RunConfig,
    SourceConfig,
)
from .configparse import Parser
from .errors import ConfigError
from .secrets import Secret

__all__ = [
    "AlertsConfig", "ArchiveConfig", "Config", "CoverageConfig", "ObjectLock", "PgpConfig", "RetentionConfig", "RunConfig", "Secret",
    "SourceConfig", "config_path", "load_config", "parse_config",
]

DEFAULT_CONFIG = "ibreports.toml"


def config_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The config file to use: explicit argument, then IBREPORTS_CONFIG, then ./ibreports.toml."""
    return Path(explicit or os.environ.get("IBREPORTS_CONFIG") or DEFAULT_CONFIG).absolute()


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Load and validate a config file; every problem is a ConfigError naming file and key."""
    file = config_path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"Configuration file {file} does not exist.",
            "Create it (see docs/configuration.md) or pass --config PATH / set IBREPORTS_CONFIG.",
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"Configuration file {file} cannot be read ({exc}).", "") from None
    return parse_config(text, file)


def parse_config(text: str, file: Path) -> Config:
    """Parse TOML text as if read from ``file`` (relative paths resolve against its folder)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file} is not valid TOML: {exc}.", "Fix the syntax at that line.") from None
    return Parser(file).config(data)
