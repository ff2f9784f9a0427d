"""Validation of a parsed ibreports.toml: every error names the file, the key and what is expected.

Keys are named one way in every message: ``archive.url``, ``sources.NAME.remote_dir`` (by the
source's name; ``sources[INDEX]`` only while the name itself is wrong). A source's common keys
are parsed here; its kind's own keys go to the kind's settings dataclass (see
ibreports/remote/registry.py), parsed by the types it declares.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any

from .configmodel import (
    DEFAULT_MAX_EXPANSION,
    DEFAULT_MAX_OUTPUT,
    AlertsConfig,
    ArchiveConfig,
    Config,
    CoverageConfig,
    ObjectLock,
    PgpConfig,
    PgpKeyEntry,
    RetentionConfig,
    RunConfig,
    SourceConfig,
)
from .errors import ConfigError
from .remote.registry import SettingError, get_kind, known_kinds
from .secrets import Secret, resolve_path

# Keys every [[sources]] table may hold, whatever its kind.
SOURCE_KEYS = {"name", "kind", "timeout", "connections", "settle_seconds", "delete_after_archive", "allow_plain"}
TYPE_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string", dict: "a table",
              list: "a list"}


def _type_name(value: Any) -> str:
    for kind in (bool, int, float, str, dict, list):  # bool first: True is an int too
        if isinstance(value, kind):
            return TYPE_NAMES[kind]
    return f"a {type(value).__name__}"


class Parser:
    def __init__(self, file: Path) -> None:
        self.file = file
        self.base = file.parent

    def fail(self, key: str, expected: str, got: Any = None) -> ConfigError:
        shown = "" if got is None else f" (got {_type_name(got)})"
        return ConfigError(f"{self.file}: '{key}' must be {expected}{shown}.", "Fix it and run again.")

    def known(self, table: dict[str, Any], where: str, allowed: set[str], what: str,
              elsewhere: dict[str, str] | None = None) -> None:
        """Refuse an unknown key, suggesting the allowed key it is most likely a typo of.

        ``elsewhere`` maps keys that belong to other source kinds to the kind's name."""
        unknown = sorted(set(table) - allowed)
        if not unknown:
            return
        key = unknown[0]
        path = f"{where}.{key}" if where else key
        if elsewhere and key in elsewhere:
            hint = f"'{key}' is a key of {elsewhere[key]} sources. "
        else:
            close = difflib.get_close_matches(key, sorted(allowed), n=1, cutoff=0.6)
            hint = f"Did you mean '{close[0]}'? " if close else ""
        raise ConfigError(
            f"{self.file}: unknown key '{path}'.",
            f"{hint}Allowed keys in {what}: {', '.join(sorted(allowed))}.",
        )

    def table(self, data: dict[str, Any], key: str, allowed: set[str]) -> dict[str, Any]:
        value = data.get(key, {})
        if not isinstance(value, dict):
            raise self.fail(key, "a table", value)
        self.known(value, key, allowed, f"[{key}]")
        return value

    def get(self, table: dict[str, Any], where: str, key: str, kind: type, default: Any) -> Any:
        if key not in table:
            return default
        value = table[key]
        ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value, ok = float(value), True
        if not ok:
            raise self.fail(f"{where}.{key}", TYPE_NAMES.get(kind, f"a {kind.__name__}"), value)
        return value

    def nonneg(self, table: dict[str, Any], where: str, key: str, default: int, low: int = 0) -> int:
        value = self.get(table, where, key, int, default)
        if value < low:
            raise self.fail(f"{where}.{key}", f"an integer >= {low}")
        return value

    def path(self, table: dict[str, Any], where: str, key: str) -> Path | None:
        value = self.get(table, where, key, str, None)
        return resolve_path(value, self.base) if value else None

    def secret(self, table: dict[str, Any], where: str, key: str) -> Secret | None:
        value = self.get(table, where, key, str, None)
        return Secret(value, f"{where}.{key}", self.base) if value else None

    def config(self, data: dict[str, Any]) -> Config:
        top = {"sources", "pgp", "archive", "retention", "alerts", "run", "coverage"}
        self.known(data, "", top, "the top level")
        raw_sources = data.get("sources", [])
        if not isinstance(raw_sources, list) or not all(isinstance(s, dict) for s in raw_sources):
            raise self.fail("sources", "an array of tables ([[sources]])", raw_sources)
        sources = [self.source(i, s) for i, s in enumerate(raw_sources)]
        names = [s.name for s in sources]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise self.fail(f"sources.{sorted(dup)[0]}.name", "unique: another source has the same name")
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
            coverage=self.coverage(data),
        )

    def source(self, index: int, raw: dict[str, Any]) -> SourceConfig:
        """The common keys here; the kind's own keys go to its settings dataclass."""
        keys_of = {k: {f.name for f in dataclasses.fields(get_kind(k).settings)} for k in known_kinds()}
        if "name" not in raw or "kind" not in raw:  # a typo of one of them is likelier than a missing key
            self.known(raw, f"sources[{index}]", SOURCE_KEYS.union(*keys_of.values()), "[[sources]]")
        name = self.get(raw, f"sources[{index}]", "name", str, None)
        if not name or not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
            raise self.fail(f"sources[{index}].name", "a non-empty name of letters, digits, '-', '_' or '.'")
        where = f"sources.{name}"
        kind = get_kind(raw.get("kind"), f"{self.file}: '{where}.kind'")
        fields = {f.name: f for f in dataclasses.fields(kind.settings)}
        elsewhere = {key: other for other, keys in reversed(keys_of.items()) for key in keys}
        self.known(raw, where, SOURCE_KEYS | set(fields), f"a source of kind {kind.name}", elsewhere)
        hints = typing.get_type_hints(kind.settings)
        values = {key: self.field(raw, where, key, hints[key], spec) for key, spec in fields.items()}
        try:
            settings = kind.settings(**values)
            checked = getattr(settings, "checked", None)
            settings = checked() if checked else settings
        except SettingError as exc:
            raise self.fail(f"{where}.{exc.key}", exc.expected) from None
        src = SourceConfig(
            name=name,
            kind=kind.name,
            settings=settings,
            timeout=self.get(raw, where, "timeout", float, 30.0),
            connections=self.nonneg(raw, where, "connections", 4, low=1),
            settle_seconds=self.nonneg(raw, where, "settle_seconds", 120),
            delete_after_archive=self.get(raw, where, "delete_after_archive", bool, False),
            allow_plain=self.get(raw, where, "allow_plain", bool, kind.allow_plain_default),
        )
        if src.timeout <= 0:
            raise self.fail(f"{where}.timeout", "a positive number of seconds")
        if src.delete_after_archive and not kind.capabilities.delete:
            raise self.fail(f"{where}.delete_after_archive", f"false: a {kind.name} source cannot delete files")
        return src

    def field(self, raw: dict[str, Any], where: str, key: str, wanted: Any, spec: dataclasses.Field) -> Any:
        """One key of a kind's settings, parsed by the type its dataclass declares.

        ``Path`` resolves against the config file's folder, ``Secret`` is a secret reference;
        other types are checked as they are (``dict[str, list[str]]`` as a table: the kind's
        ``checked()`` looks inside); ``X | None`` means X or absent; ``X | Y`` takes either."""
        if spec.default is not dataclasses.MISSING:
            default = spec.default
        elif spec.default_factory is not dataclasses.MISSING:
            default = spec.default_factory()
        else:
            default = None
        union = typing.get_origin(wanted) in (typing.Union, types.UnionType)
        options = [typing.get_origin(a) or a for a in (typing.get_args(wanted) if union else (wanted,))
                   if a is not type(None)]
        if key not in raw:
            return default
        if options == [Path]:
            return self.path(raw, where, key)
        if options == [Secret]:
            return self.secret(raw, where, key)
        for option in options:
            try:
                return self.get(raw, where, key, option, default)
            except ConfigError:
                if option is options[-1]:
                    raise self.fail(f"{where}.{key}", " or ".join(TYPE_NAMES.get(o, f"a {o.__name__}")
                                                                  for o in options), raw[key]) from None
        return default

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
            signer_keys=[resolve_path(f, self.base) for f in signers],
            max_expansion=expansion,
            max_output=self.nonneg(raw, "pgp", "max_output", DEFAULT_MAX_OUTPUT, low=1),
        )

    def pgp_key(self, index: int, entry: Any) -> PgpKeyEntry:
        where = f"pgp.secret_key_file[{index}]"
        if isinstance(entry, str) and entry:
            return PgpKeyEntry(resolve_path(entry, self.base))
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
            {"url", "endpoint_url", "region", "server_side_encryption", "kms_key_id", "keep_encrypted", "object_lock",
             "aws_credentials_block"},
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
            url = str(resolve_path(url, self.base))
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
            object_lock=self.object_lock(raw),
            aws_credentials_block=self.credentials_block(raw, url),
        )

    def credentials_block(self, raw: dict[str, Any], url: str) -> str:
        name = self.get(raw, "archive", "aws_credentials_block", str, "")
        if name and not url.startswith("s3://"):
            raise self.fail("archive.aws_credentials_block", "left out: it gives S3 credentials, and archive.url is a folder")
        return name

    def object_lock(self, raw: dict[str, Any]) -> ObjectLock | None:
        if "object_lock" not in raw:
            return None
        lock = raw["object_lock"]
        if not isinstance(lock, dict):
            raise self.fail("archive.object_lock", '{ mode = "COMPLIANCE" | "GOVERNANCE", days = N }', lock)
        self.known(lock, "archive.object_lock", {"mode", "days"}, "archive.object_lock")
        mode = self.get(lock, "archive.object_lock", "mode", str, "")
        if mode not in ("COMPLIANCE", "GOVERNANCE"):
            raise self.fail("archive.object_lock.mode", "'COMPLIANCE' or 'GOVERNANCE'")
        if "days" not in lock:
            raise self.fail("archive.object_lock.days", "set: the retention in days, e.g. 2190 for six years")
        return ObjectLock(mode=mode, days=self.nonneg(lock, "archive.object_lock", "days", 0, low=1))

    def coverage(self, data: dict[str, Any]) -> CoverageConfig:
        raw = self.table(data, "coverage", {"grace_days", "calendar"})
        # The name is checked when a calendar is needed (coverage): other commands never import holidays.
        calendar = self.get(raw, "coverage", "calendar", str, "NYSE")
        return CoverageConfig(grace_days=self.nonneg(raw, "coverage", "grace_days", 3), calendar=calendar)

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
        raw = self.table(data, "run", {"workers", "staging_dir", "source_deadline_minutes", "reconnect_minutes"})
        deadline = self.get(raw, "run", "source_deadline_minutes", float, 240.0)
        if not 0 < deadline <= 7 * 24 * 60:
            raise self.fail("run.source_deadline_minutes", "a number of minutes above 0 and at most a week")
        reconnect = self.get(raw, "run", "reconnect_minutes", float, 5.0)
        if not 0 <= reconnect <= 24 * 60:
            raise self.fail("run.reconnect_minutes", "a number of minutes from 0 (never reconnect) to 1440")
        return RunConfig(
            workers=self.nonneg(raw, "run", "workers", 4, low=1),
            staging_dir=self.path(raw, "run", "staging_dir"),
            source_deadline_minutes=deadline,
            reconnect_minutes=reconnect,
        )
