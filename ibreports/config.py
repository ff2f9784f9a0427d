"""Settings model: one TOML file, secret references, paths relative to the file.

Secrets may be inline or references: ``env:NAME``, ``file:PATH``, ``prefect:BLOCK``.
They are resolved lazily (``Secret.get()``), so a command that does not need a
secret never fails for want of one, and are never part of any repr or message.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError

DEFAULT_CONFIG = "ibreports.toml"
SFTP_DEFAULTS = {"host": "xfer.interactivebrokers.com", "port": 32}
FTP_DEFAULTS = {"host": "ftp2.interactivebrokers.com", "port": 21}


class Secret:
    """A secret value or a reference to one; ``repr`` and ``str`` never show it."""

    def __init__(self, raw: str, where: str, base: Path) -> None:
        self._raw = raw
        self._where = where
        self._base = base
        self._value: str | None = None

    @property
    def reference(self) -> str:
        """The reference kind for messages (``env:NAME`` etc.), or ``inline``."""
        kind, _, rest = self._raw.partition(":")
        return self._raw if kind in ("env", "file", "prefect") and rest else "inline"

    def get(self) -> str:
        """Resolve the secret; raises ConfigError naming the config key on failure."""
        if self._value is None:
            self._value = _resolve_secret(self._raw, self._where, self._base)
        return self._value

    def __repr__(self) -> str:
        return f"Secret({self.reference if self.reference != 'inline' else '********'})"

    __str__ = __repr__


def _resolve_secret(raw: str, where: str, base: Path) -> str:
    kind, _, rest = raw.partition(":")
    if kind == "env" and rest:
        value = os.environ.get(rest)
        if value is None:
            raise ConfigError(
                f"{where} refers to environment variable {rest}, which is not set.",
                f"Export {rest} before running, or change {where}.",
            )
        return value
    if kind == "file" and rest:
        path = _resolve_path(rest, base)
        try:
            return path.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise ConfigError(
                f"{where} refers to {path}, which cannot be read ({exc.strerror}).",
                f"Create the file or fix {where}.",
            ) from None
    if kind == "prefect" and rest:
        return _prefect_secret(rest, where)
    return raw


def _prefect_secret(block: str, where: str) -> str:
    try:
        from prefect.blocks.system import Secret as SecretBlock  # lazy: the library needs no Prefect

        value = SecretBlock.load(block).get()
    except Exception as exc:  # noqa: BLE001 - any failure is a configuration problem here
        raise ConfigError(
            f"{where} refers to Prefect Secret block '{block}', which could not be loaded "
            f"({type(exc).__name__}).",
            f"Create it with: python -c \"import getpass; from prefect.blocks.system import Secret; Secret(value=getpass.getpass()).save('{block}', overwrite=True)\", "
            "and check PREFECT_API_URL.",
        ) from None
    return str(value)


def _resolve_path(value: str, base: Path) -> Path:
    path = Path(os.path.expanduser(value))
    return path if path.is_absolute() else (base / path)


@dataclass
class SourceConfig:
    """One IBKR server login."""

    name: str
    kind: str  # "sftp" | "ftp"
    host: str
    port: int
    username: str
    remote_dir: str = "outgoing"
    key_file: Path | None = None
    key_passphrase: Secret | None = None
    known_hosts: Path | None = None
    password: Secret | None = None
    passive: bool = True
    tls: bool = False
    ca_file: Path | None = None
    disabled_algorithms: dict[str, list[str]] | None = None
    proxy_command: str | None = None
    timeout: float = 30.0
    connections: int = 4
    settle_seconds: int = 120
    delete_after_archive: bool = False


@dataclass
class PgpConfig:
    secret_key_files: list[Path] = field(default_factory=list)
    passphrase: Secret | None = None


@dataclass
class ArchiveConfig:
    url: str = "archive"
    endpoint_url: str = ""
    region: str = ""
    server_side_encryption: str = "AES256"
    kms_key_id: str = ""
    keep_encrypted: bool = True

    @property
    def is_s3(self) -> bool:
        return self.url.startswith("s3://")


@dataclass
class RetentionConfig:
    purge_days: int = 100
    warn_days: int = 14


@dataclass
class AlertsConfig:
    urls: list[Secret] = field(default_factory=list)
    unreachable_days: int = 2


@dataclass
class RunConfig:
    workers: int = 4
    staging_dir: Path | None = None


@dataclass
class Config:
    path: Path | None
    sources: list[SourceConfig] = field(default_factory=list)
    pgp: PgpConfig = field(default_factory=PgpConfig)
    archive: ArchiveConfig = field(default_factory=ArchiveConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    alerts: AlertsConfig = field(default_factory=AlertsConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def source(self, name: str) -> SourceConfig:
        for src in self.sources:
            if src.name == name:
                return src
        known = ", ".join(s.name for s in self.sources) or "none"
        raise ConfigError(
            f"No source named '{name}' in {self.path}.", f"Use one of: {known}."
        )

    def select(self, names: list[str] | None) -> list[SourceConfig]:
        return [self.source(n) for n in names] if names else list(self.sources)


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
    from .configparse import Parser  # the validating half lives in its own module

    return Parser(file).config(data)
