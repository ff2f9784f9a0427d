"""Secret references and config-relative paths: the leaf every settings module builds on.

Secrets may be inline or references: ``env:NAME``, ``file:PATH``, ``prefect:BLOCK``.
They are resolved lazily (``Secret.get()``), so a command that does not need a
secret never fails for want of one, and are never part of any repr or message.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import ConfigError


class Secret:
    """A secret value or a reference to one; ``repr`` and ``str`` never show it."""

    def __init__(self, raw: str, where: str, base: Path) -> None:
        self._raw = raw
        self._where = where
        self._base = base
        self._value: str | None = None

    @property
    def where(self) -> str:
        """The config key that holds it (``pgp.passphrase``), for messages."""
        return self._where

    @property
    def reference(self) -> str:
        """The reference kind for messages (``env:NAME`` etc.), or ``inline``."""
        kind, _, rest = self._raw.partition(":")
        return self._raw if kind in ("env", "file", "prefect") and rest else "inline"

    def get(self) -> str:
        """Resolve the secret; raises ConfigError naming the config key on failure."""
        if self._value is None:
            _no_core_dumps()  # a secret in memory from here on
            self._value = _resolve_secret(self._raw, self._where, self._base)
        return self._value

    def __repr__(self) -> str:
        return f"Secret({self.reference if self.reference != 'inline' else '********'})"

    __str__ = __repr__


def _no_core_dumps() -> None:
    import resource

    try:
        resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))
    except (ValueError, OSError):
        pass


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
        path = resolve_path(rest, base)
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


def resolve_path(value: str, base: Path) -> Path:
    """``value`` with ``~`` expanded; relative to ``base`` (the config file's folder) unless absolute."""
    path = Path(os.path.expanduser(value))
    return path if path.is_absolute() else (base / path)
