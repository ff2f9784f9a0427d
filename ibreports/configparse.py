"""Validation of a parsed ibreports.toml: every error names the file, the key and what is expected."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .config import (
    DEFAULT_MAX_EXPANSION,
    DEFAULT_MAX_OUTPUT,
    FTP_DEFAULTS,
    SFTP_DEFAULTS,
    AlertsConfig,
    ArchiveConfig,
    Config,
    PgpConfig,
    PgpKeyEntry,
    RetentionConfig,
    RunConfig,
    Secret,
    SourceConfig,
    _resolve_path,
)
from .errors import ConfigError


class Parser:
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
        archive = self.archive(data)
        deleting = [s.name for s in sources if s.delete_after_archive]
        if deleting and not archive.keep_encrypted:
            raise ConfigError(
                f"{self.file}: 'sources.{deleting[0]}.delete_after_archive = true' needs "
                "'archive.keep_encrypted = true': the server's copy is deleted only once the encrypted "
                "original is archived and verified.",
                "Set keep_encrypted = true in [archive], or delete_after_archive = false.",
            )
        return Config(
            path=self.file,
            sources=sources,
            pgp=self.pgp(data),
            archive=archive,
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
        raw = self.table(data, "pgp", {"secret_key_file", "passphrase", "signer_keys", "max_expansion", "max_output"})
        files = raw.get("secret_key_file", [])
        if isinstance(files, (str, dict)):
            files = [files]
        if not isinstance(files, list):
            raise self.fail("pgp.secret_key_file", "a path, an inline table or a list of them", files)
        entries = [self.pgp_key(i, f) for i, f in enumerate(files)]
        signers = raw.get("signer_keys", [])
        if not isinstance(signers, list) or not all(isinstance(f, str) and f for f in signers):
            raise self.fail("pgp.signer_keys", "a list of public key file paths", signers)
        expansion = self.get(raw, "pgp", "max_expansion", float, DEFAULT_MAX_EXPANSION)
        if expansion < 1:
            raise self.fail("pgp.max_expansion", "a number >= 1 (plaintext bytes per encrypted byte)")
        return PgpConfig(
            secret_key_files=[e.file for e in entries],
            passphrase=self.secret(raw, "pgp", "passphrase"),
            key_entries=entries,
            signer_keys=[_resolve_path(f, self.base) for f in signers],
            max_expansion=expansion,
            max_output=self.nonneg(raw, "pgp", "max_output", DEFAULT_MAX_OUTPUT, low=1),
        )

    def pgp_key(self, index: int, entry: Any) -> PgpKeyEntry:
        where = f"pgp.secret_key_file[{index}]"
        if isinstance(entry, str) and entry:
            return PgpKeyEntry(_resolve_path(entry, self.base))
        if not isinstance(entry, dict):
            raise self.fail(where, "a path or { file = \"...\", passphrase = \"env:NAME\" }", entry)
        self.table({where: entry}, where, {"file", "passphrase"})
        path = self.path(entry, where, "file")
        if path is None:
            raise self.fail(f"{where}.file", "the path of an armored PGP secret key")
        return PgpKeyEntry(path, self.secret(entry, where, "passphrase"))

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
