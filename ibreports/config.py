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
from typing import Any

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
            f"Create it with: prefect block create secret (or Secret(value=...).save('{block}')), "
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
            "Create it (see README, 'Configure') or pass --config PATH / set IBREPORTS_CONFIG.",
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
    return _Parser(file).config(data)


class _Parser:
    def __init__(self, file: Path) -> None:
        self.file = file
        self.base = file.parent

    def fail(self, key: str, expected: str, got: Any = None) -> ConfigError:
        shown = "" if got is None else f" (got {type(got).__name__})"
        return ConfigError(f"{self.file}: '{key}' must be {expected}{shown}.", "Fix it and run again.")

    def table(self, data: dict[str, Any], key: str, allowed: set[str]) -> dict[str, Any]:
        value = data.get(key, {})
        if not isinstance(value, dict):
            raise self.fail(key, "a table", value)
        unknown = sorted(set(value) - allowed)
        if unknown:
            raise ConfigError(
                f"{self.file}: unknown key '{key}.{unknown[0]}'.",
                f"Allowed keys in [{key}]: {', '.join(sorted(allowed))}.",
            )
        return value

    def get(self, table: dict[str, Any], where: str, key: str, kind: type, default: Any) -> Any:
        if key not in table:
            return default
        value = table[key]
        ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value, ok = float(value), True
        if not ok:
            raise self.fail(f"{where}.{key}", f"a {kind.__name__}", value)
        return value

    def nonneg(self, table: dict[str, Any], where: str, key: str, default: int, low: int = 0) -> int:
        value = self.get(table, where, key, int, default)
        if value < low:
            raise self.fail(f"{where}.{key}", f"an integer >= {low}")
        return value

    def path(self, table: dict[str, Any], where: str, key: str) -> Path | None:
        value = self.get(table, where, key, str, None)
        return _resolve_path(value, self.base) if value else None

    def secret(self, table: dict[str, Any], where: str, key: str) -> Secret | None:
        value = self.get(table, where, key, str, None)
        return Secret(value, f"{where}.{key}", self.base) if value else None

    def config(self, data: dict[str, Any]) -> Config:
        top = {"sources", "pgp", "archive", "retention", "alerts", "run"}
        unknown = sorted(set(data) - top)
        if unknown:
            raise ConfigError(
                f"{self.file}: unknown key '{unknown[0]}'.", f"Allowed top-level keys: {', '.join(sorted(top))}."
            )
        raw_sources = data.get("sources", [])
        if not isinstance(raw_sources, list) or not all(isinstance(s, dict) for s in raw_sources):
            raise self.fail("sources", "an array of tables ([[sources]])", raw_sources)
        sources = [self.source(i, s) for i, s in enumerate(raw_sources)]
        names = [s.name for s in sources]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise self.fail("sources.name", f"unique (duplicate: {sorted(dup)[0]})")
        return Config(
            path=self.file,
            sources=sources,
            pgp=self.pgp(data),
            archive=self.archive(data),
            retention=self.retention(data),
            alerts=self.alerts(data),
            run=self.run(data),
        )

    def source(self, index: int, raw: dict[str, Any]) -> SourceConfig:
        where = f"sources[{index}]"
        allowed = {
            "name", "kind", "host", "port", "username", "remote_dir", "key_file", "key_passphrase",
            "known_hosts", "password", "passive", "tls", "ca_file", "disabled_algorithms",
            "proxy_command", "timeout", "connections", "settle_seconds", "delete_after_archive",
        }
        self.table({where: raw}, where, allowed)
        kind = self.get(raw, where, "kind", str, None)
        if kind not in ("sftp", "ftp"):
            raise self.fail(f"{where}.kind", "'sftp' or 'ftp'", kind if kind is not None else None)
        name = self.get(raw, where, "name", str, None)
        if not name or not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
            raise self.fail(f"{where}.name", "a non-empty name of letters, digits, '-', '_' or '.'")
        where = f"sources.{name}"
        defaults = SFTP_DEFAULTS if kind == "sftp" else FTP_DEFAULTS
        username = self.get(raw, where, "username", str, "")
        if not username:
            raise self.fail(f"{where}.username", "a non-empty string")
        port = self.get(raw, where, "port", int, defaults["port"])
        if not 0 < port < 65536:
            raise self.fail(f"{where}.port", "a TCP port between 1 and 65535")
        algos = self.get(raw, where, "disabled_algorithms", dict, None)
        if algos is not None and not all(
            isinstance(v, list) and all(isinstance(x, str) for x in v) for v in algos.values()
        ):
            raise self.fail(f"{where}.disabled_algorithms", "a table of string lists")
        src = SourceConfig(
            name=name,
            kind=kind,
            host=self.get(raw, where, "host", str, defaults["host"]),
            port=port,
            username=username,
            remote_dir=self.get(raw, where, "remote_dir", str, "outgoing"),
            key_file=self.path(raw, where, "key_file"),
            key_passphrase=self.secret(raw, where, "key_passphrase"),
            known_hosts=self.path(raw, where, "known_hosts"),
            password=self.secret(raw, where, "password"),
            passive=self.get(raw, where, "passive", bool, True),
            tls=self.get(raw, where, "tls", bool, False),
            ca_file=self.path(raw, where, "ca_file"),
            disabled_algorithms=algos,
            proxy_command=self.get(raw, where, "proxy_command", str, None),
            timeout=self.get(raw, where, "timeout", float, 30.0),
            connections=self.nonneg(raw, where, "connections", 4, low=1),
            settle_seconds=self.nonneg(raw, where, "settle_seconds", 120),
            delete_after_archive=self.get(raw, where, "delete_after_archive", bool, False),
        )
        if src.timeout <= 0:
            raise self.fail(f"{where}.timeout", "a positive number of seconds")
        if kind == "sftp":
            if src.key_file is None:
                raise self.fail(f"{where}.key_file", "the path of the sFTP private key (ibreports keygen writes keys/ibkr_sftp_rsa)")
            if src.known_hosts is None:
                src.known_hosts = src.key_file.parent / "known_hosts"
        elif src.password is None:
            raise self.fail(f"{where}.password", "the FTP password or a reference such as env:IBREPORTS_FTP_PASSWORD")
        return src

    def pgp(self, data: dict[str, Any]) -> PgpConfig:
        raw = self.table(data, "pgp", {"secret_key_file", "passphrase"})
        files = raw.get("secret_key_file", [])
        if isinstance(files, str):
            files = [files]
        if not isinstance(files, list) or not all(isinstance(f, str) and f for f in files):
            raise self.fail("pgp.secret_key_file", "a path or a list of paths", files)
        return PgpConfig(
            secret_key_files=[_resolve_path(f, self.base) for f in files],
            passphrase=self.secret(raw, "pgp", "passphrase"),
        )

    def archive(self, data: dict[str, Any]) -> ArchiveConfig:
        raw = self.table(
            data, "archive",
            {"url", "endpoint_url", "region", "server_side_encryption", "kms_key_id", "keep_encrypted"},
        )
        url = self.get(raw, "archive", "url", str, "archive")
        if not url:
            raise self.fail("archive.url", "a folder or s3://bucket/prefix")
        if url.startswith("s3://"):
            if not url[5:].split("/")[0]:
                raise self.fail("archive.url", "s3://bucket/prefix with a bucket name")
        elif "://" in url:
            raise self.fail("archive.url", "a local folder or an s3:// URL")
        else:
            url = str(_resolve_path(url, self.base))
        sse = self.get(raw, "archive", "server_side_encryption", str, "AES256")
        if sse not in ("AES256", "aws:kms", "none", ""):
            raise self.fail("archive.server_side_encryption", "'AES256', 'aws:kms' or 'none'")
        kms = self.get(raw, "archive", "kms_key_id", str, "")
        if sse == "aws:kms" and not kms:
            raise self.fail("archive.kms_key_id", "set when server_side_encryption is 'aws:kms'")
        return ArchiveConfig(
            url=url,
            endpoint_url=self.get(raw, "archive", "endpoint_url", str, ""),
            region=self.get(raw, "archive", "region", str, ""),
            server_side_encryption="" if sse == "none" else sse,
            kms_key_id=kms,
            keep_encrypted=self.get(raw, "archive", "keep_encrypted", bool, True),
        )

    def retention(self, data: dict[str, Any]) -> RetentionConfig:
        raw = self.table(data, "retention", {"purge_days", "warn_days"})
        purge = self.nonneg(raw, "retention", "purge_days", 100, low=1)
        warn = self.nonneg(raw, "retention", "warn_days", 14)
        if warn >= purge:
            raise self.fail("retention.warn_days", f"smaller than purge_days ({purge})")
        return RetentionConfig(purge_days=purge, warn_days=warn)

    def alerts(self, data: dict[str, Any]) -> AlertsConfig:
        raw = self.table(data, "alerts", {"urls", "unreachable_days"})
        urls = raw.get("urls", [])
        if not isinstance(urls, list) or not all(isinstance(u, str) and u for u in urls):
            raise self.fail("alerts.urls", "a list of apprise URLs (or secret references)", urls)
        return AlertsConfig(
            urls=[Secret(u, f"alerts.urls[{i}]", self.base) for i, u in enumerate(urls)],
            unreachable_days=self.nonneg(raw, "alerts", "unreachable_days", 2, low=1),
        )

    def run(self, data: dict[str, Any]) -> RunConfig:
        raw = self.table(data, "run", {"workers", "staging_dir"})
        return RunConfig(
            workers=self.nonneg(raw, "run", "workers", 4, low=1),
            staging_dir=self.path(raw, "run", "staging_dir"),
        )
