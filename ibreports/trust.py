"""``ibreports trust-host``: read a server's host key without logging in, and pin it in known_hosts.

The decision to trust is the user's (prompt, ``--yes`` or a matching ``--fingerprint``);
this module only fetches, compares and records. known_hosts is rewritten atomically.
"""

from __future__ import annotations

import base64
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import paramiko

from .config import SourceConfig
from .errors import ConfigError, HostKeyError
from .remote.hostkeys import fingerprint, host_id, key_line, known_keys
from .remote.registry import kind_of
from .remote.ssh import handshake


@dataclass(frozen=True)
class ScannedKey:
    """What the server showed, and how it compares with what is recorded."""

    host_id: str  # "[host]:port" or "host"
    key: paramiko.PKey
    recorded: tuple[str, ...]  # "type SHA256:..." of every key recorded for this host

    @property
    def key_type(self) -> str:
        return self.key.get_name()

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.key)

    @property
    def state(self) -> str:
        """"new" (nothing recorded), "same" (this key is recorded) or "changed"."""
        if not self.recorded:
            return "new"
        return "same" if f"{self.key_type} {self.fingerprint}" in self.recorded else "changed"


def scan(source: SourceConfig) -> ScannedKey:
    """Connect, negotiate, read the host key and close: no authentication is attempted."""
    if not kind_of(source).capabilities.host_keys:
        raise ConfigError(
            f"Source {source.name} is of kind {source.kind}: trust-host is for SSH host keys (sFTP sources).",
            "FTPS servers prove who they are with TLS certificates: set tls = true (and ca_file if the CA is private).",
        )
    known = known_keys(source)
    # The same connect, banner wait and handshake as fetch (remote/ssh.py), stopping before the check.
    transport = handshake(source, known)
    try:
        key = transport.get_remote_server_key()
    finally:
        transport.close()
    recorded = tuple(f"{k.get_name()} {fingerprint(k)}" for k in known.values())
    return ScannedKey(host_id(source.settings.host, source.settings.port), key, recorded)


def normalize_fingerprint(text: str) -> str:
    """``SHA256:abc`` or ``abc`` (with or without '=' padding) -> ``SHA256:abc``; ConfigError otherwise."""
    value = text.strip()
    value = value[7:] if value.upper().startswith("SHA256:") else value
    value = value.rstrip("=")
    try:
        ok = len(base64.b64decode(value + "=" * (-len(value) % 4), validate=True)) == 32
    except ValueError:
        ok = False
    if not ok:
        raise ConfigError(
            f"--fingerprint {text!r} is not a SHA256 fingerprint.",
            "Give it as ssh-keygen -l shows it, e.g. SHA256:nThbg6kXUpJWGl7E1IGOCspRomTxdCARLviKw6E5SY8.",
        )
    return "SHA256:" + value


def record(source: SourceConfig, key: paramiko.PKey, replace: bool = False) -> Path:
    """Write ``key`` for this source into its known_hosts atomically; ``replace`` drops older keys for the host."""
    path = Path(source.settings.known_hosts) if source.settings.known_hosts else None
    if path is None:
        raise ConfigError(f"Source {source.name} has no known_hosts file.", "Set known_hosts in its [[sources]] table.")
    name = host_id(source.settings.host, source.settings.port)
    try:
        lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"known_hosts file {path} cannot be read ({exc}).", "Fix its permissions or contents.") from None
    if replace:
        lines = [kept for line in lines if (kept := _without_host(line, name)) is not None]
    lines.append(f"{name} {key_line(key)}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(path, "".join(line + "\n" for line in lines))
    except OSError as exc:
        raise ConfigError(f"Cannot write {path} ({exc.strerror or exc}).", "Check the folder's permissions.") from None
    return path


def _without_host(line: str, name: str) -> str | None:
    """``line`` minus ``name`` among its host patterns; None when nothing would be left."""
    fields = line.split()
    if not fields or fields[0].startswith(("#", "@")) or len(fields) < 3:
        return line  # comments, markers (@cert-authority, @revoked) and junk stay as they are
    hosts = fields[0].split(",")
    kept = [h for h in hosts if not _matches(h, name)]
    if len(kept) == len(hosts):
        return line
    return " ".join([",".join(kept), *fields[1:]]) if kept else None


def _matches(pattern: str, name: str) -> bool:
    if pattern.startswith("|1|"):  # hashed entry (HashKnownHosts yes)
        return paramiko.HostKeys.hash_host(name, pattern) == pattern
    return pattern == name


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".known_hosts-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # public data, as OpenSSH writes it
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def changed_error(scanned: ScannedKey, source: SourceConfig) -> HostKeyError:
    """The refusal for a key that differs from the recorded one."""
    return HostKeyError(
        f"The host key of {scanned.host_id} has CHANGED: the server shows {scanned.key_type} {scanned.fingerprint} "
        f"but {source.settings.known_hosts} records {', '.join(scanned.recorded)}; a changed key can mean someone is "
        "intercepting the connection.",
        "Do not trust it until IBKR confirms the new fingerprint; then run: ibreports trust-host --source "
        f"{source.name} --replace --fingerprint {scanned.fingerprint}",
    )


def mismatch_error(scanned: ScannedKey, expected: str) -> HostKeyError:
    """The refusal for a key that is not the one the user was told to expect."""
    return HostKeyError(
        f"The server {scanned.host_id} shows {scanned.key_type} {scanned.fingerprint}, not the expected {expected}; "
        "this may mean someone is intercepting the connection (or the fingerprint was mistyped).",
        "Nothing was recorded. Check the fingerprint with IBKR, and host and port in the config.",
    )


def declined_error(scanned: ScannedKey, source: SourceConfig) -> HostKeyError:
    """The answer "no" at the prompt: the key stays untrusted, so connections keep being refused."""
    return HostKeyError(
        f"Host key {scanned.key_type} {scanned.fingerprint} of {scanned.host_id} not trusted: nothing was recorded "
        f"in {source.settings.known_hosts}.",
        "Compare the fingerprint with the one IBKR gives you (Reporting Integration team), then run: "
        f"ibreports trust-host --source {source.name} --fingerprint SHA256:...",
    )
