"""Source kinds register themselves here: one :class:`SourceKind` per kind, looked up by name.

A kind brings its own settings dataclass (the keys of its ``[[sources]]`` table beyond the
common ones, with defaults and a ``checked()`` validation), how to open it, its doctor steps,
the concurrency-limit slots a run occupies and what it can do (:class:`Capabilities`).
Nothing else in the library switches on the kind's name: config parsing, fetch, status,
doctor, trust-host and the flows all ask :func:`get_kind`.

The built-in kinds live in modules listed in ``BUILTIN`` and are imported on first lookup;
their modules are light (no paramiko, no ftplib session code): ``open`` and ``doctor``
import the heavy parts when called. A test may register a kind of its own (see
tests/memory_remote.py); it then joins the remote contract suite.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ..errors import ConfigError

if TYPE_CHECKING:
    from contextlib import ExitStack

    from ..configmodel import SourceConfig
    from ..doctor.checklist import Checklist, Sample
    from .protocol import Remote

# The built-in kinds and the modules that register them when imported (a new kind adds itself here).
BUILTIN = {"sftp": "ibreports.remote.sftpkind", "ftp": "ibreports.remote.ftpkind",
           "flexweb": "ibreports.remote.flexwebkind"}


@dataclass(frozen=True)
class Capabilities:
    """What a kind can do; the pipeline, config checks and contract suites go by these, not by names."""

    listing: bool = True  # list() -> RemoteFile(name, size, mtime); settle + purge rules apply
    delete: bool = False  # delete(name) exists (delete_after_archive allowed)
    host_keys: bool = False  # trust-host applies (known_hosts)


@dataclass(frozen=True)
class Produced:
    """A statement an on-demand source (``listing=False``) produced into staging."""

    name: str  # in IBKR's grammar, e.g. "U1234567.DailyActivity.20261101.20261101.xml"
    path: Path  # 0600, inside staging
    size: int
    sha256: str


class SettingError(ValueError):
    """Raised by a settings dataclass's ``checked()``: ``key`` (of the kind's table) must be ``expected``.

    The config parser turns it into a ConfigError naming the file and ``sources.NAME.key``.
    """

    def __init__(self, key: str, expected: str) -> None:
        super().__init__(f"{key} must be {expected}")
        self.key = key
        self.expected = expected


# The doctor steps of a kind: run them on the checklist (sockets etc. are closed by the stack) and
# return the encrypted sample file downloaded into the staging folder, if any, for the PGP check.
DoctorSteps = Callable[["SourceConfig", "Checklist", "ExitStack", Path], "Sample | None"]


@dataclass(frozen=True)
class SourceKind:
    """Everything the library knows about one kind of source.

    ``settings`` is a dataclass whose fields are the kind's own config keys (str, int, float, bool,
    ``Path | None`` resolved against the config file, ``Secret | None``, ``dict | None``), each with
    a default; it may define ``checked(self) -> Self`` (raise :class:`SettingError`, may fill in
    derived defaults), an ``address`` property (shown by doctor) and, for servers, the class
    attributes ``ibkr_server`` ("IBKR's ... server is HOST port N") and ``greeting`` (what the
    server sends first, e.g. "SSH banner") that the shared network remedies quote.
    """

    name: str  # "sftp" | "ftp" | ... | a test's toy kind
    settings: type
    open: Callable[["SourceConfig"], "Remote"]  # connect + authenticate (imports lazily)
    doctor: DoctorSteps  # the kind's doctor steps (same connect code as open)
    slots: Callable[["SourceConfig"], list[str]]  # concurrency-limit names, one per connection held at once (>= 1)
    capabilities: Capabilities = Capabilities()
    allow_plain_default: bool = True  # may unencrypted deliveries be archived unless the source says otherwise


_KINDS: dict[str, SourceKind] = {}
_loaded = False


def register(kind: SourceKind) -> SourceKind:
    """Make ``kind`` known under ``kind.name``; registering another kind under a taken name is a bug."""
    known = _KINDS.get(kind.name)
    if known is not None and known is not kind:
        raise ValueError(f"source kind {kind.name!r} is already registered")
    _KINDS[kind.name] = kind
    return kind


def _load_builtins() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for module in BUILTIN.values():
            importlib.import_module(module)


def known_kinds() -> list[str]:
    """Names of every registered kind, built-in ones first (in BUILTIN's order)."""
    _load_builtins()
    return [*BUILTIN, *(name for name in _KINDS if name not in BUILTIN)]


def get_kind(name: Any, where: str = "kind") -> SourceKind:
    """The kind registered as ``name``; ConfigError listing the known kinds otherwise (the one place)."""
    _load_builtins()
    kind = _KINDS.get(name) if isinstance(name, str) else None
    if kind is None:
        known = ", ".join(f"'{k}'" for k in known_kinds())
        shown = "missing" if name is None else repr(name)
        raise ConfigError(
            f"{where} must be a known source kind, one of {known} (got {shown}).",
            f"Set kind to one of {known}.",
        )
    return kind


def kind_of(source: "SourceConfig") -> SourceKind:
    """The registered kind of a parsed source."""
    return get_kind(source.kind, f"sources.{source.name}.kind")


def describe(source: "SourceConfig") -> str:
    """The kind and, when its settings say (an ``address`` property), where it connects: "sftp host:32"."""
    where = getattr(source.settings, "address", "")
    return f"{source.kind} {where}" if where else source.kind
