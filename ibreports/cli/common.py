"""Helpers shared by commands: passphrases and the archive settings for s3:// URLs."""

from __future__ import annotations

import getpass
import os
import stat
import sys
from collections.abc import Callable
from pathlib import Path

from ..config import ArchiveConfig, config_path, load_config
from ..errors import KeyMaterialError
from ..keyfiles import check_passphrase

KEY_PASSPHRASE_ENV = "IBREPORTS_KEY_PASSPHRASE"
BACKUP_PASSPHRASE_ENV = "IBREPORTS_BACKUP_PASSPHRASE"


def read_passphrase(
    env_var: str,
    passphrase_file: str | os.PathLike[str] | None = None,
    what: str = "key passphrase",
    confirm: bool = True,
    validate: bool = True,
    prompt: Callable[[str], str] | None = None,
) -> str:
    """The passphrase from ``env_var`` if set, else ``passphrase_file``, else a prompt.

    The file's trailing newline is stripped (one ``\\n`` or ``\\r\\n``). The prompt
    never echoes and, with ``confirm``, is asked twice. ``validate`` applies the
    rules for new passphrases (>= 12 characters, single line); otherwise only an
    empty or multi-line value is refused. Errors name the source, never the value.
    """
    value = os.environ.get(env_var)
    if value is not None:
        source = env_var
        if passphrase_file:
            print(f"note: {env_var} is set, so --passphrase-file is ignored.", file=sys.stderr)
    elif passphrase_file:
        source = str(passphrase_file)
        value = _read_file(Path(passphrase_file), what)
    else:
        source = "the prompt"
        value = _prompt(what, confirm, prompt, env_var)
    if validate:
        check_passphrase(value, what, source)
    elif not value or any(c in value for c in "\n\r\0"):
        raise KeyMaterialError(f"The {what} from {source} is empty or spans several lines.", "Give a single-line passphrase.")
    return value


def _read_file(path: Path, what: str) -> str:
    try:
        info = path.stat()
        raw = path.read_bytes()
    except OSError as exc:
        raise KeyMaterialError(
            f"The {what} file {path} cannot be read ({exc.strerror}).", "Check --passphrase-file."
        ) from None
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        print(f"warning: {path} is readable by other users; chmod 600 it.", file=sys.stderr)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise KeyMaterialError(f"The {what} file {path} is not UTF-8 text.", "Save it as UTF-8.") from None
    if text.endswith("\r\n"):
        return text[:-2]
    return text[:-1] if text.endswith("\n") else text


def _prompt(what: str, confirm: bool, prompt: Callable[[str], str] | None, env_var: str) -> str:
    if prompt is None:
        if not sys.stdin.isatty():
            raise KeyMaterialError(
                f"No {what} given and no terminal to ask for one.",
                f"Set {env_var} or pass --passphrase-file PATH.",
            )
        prompt = getpass.getpass
    first = prompt(f"{what.capitalize()}: ")
    if confirm and prompt(f"{what.capitalize()} (again): ") != first:
        raise KeyMaterialError(f"The two {what}s typed do not match.", "Run the command again and type the same one twice.")
    return first


def archive_settings(explicit_config: str | None) -> ArchiveConfig:
    """Archive settings (endpoint, region, SSE) from the config file when there is one, else defaults.

    An explicitly named config (``--config`` or IBREPORTS_CONFIG) must exist; the
    implicit ./ibreports.toml is optional, so key commands work before set-up.
    """
    if explicit_config or os.environ.get("IBREPORTS_CONFIG") or config_path().exists():
        return load_config(explicit_config).archive
    return ArchiveConfig()
