"""What every archive shares and the archives import (a leaf): the object listing entry and the key rule.

:mod:`ibreports.archive` re-exports both; ``local.py`` and ``s3.py`` import them from here, so the
package (``open_archive``) can import those two without a cycle.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ArchiveError

MAX_KEY_BYTES = 1024  # S3's limit; also keeps local paths within PATH_MAX


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int


def validate_key(key: str) -> str:
    """Return ``key`` if it is a safe relative '/'-separated key, else raise ArchiveError.

    Shared by every archive so a key that one backend refuses is refused by all:
    no leading '/', no empty, '.' or '..' segment, no backslash, NUL or control character.
    """
    bad = (
        not isinstance(key, str)
        or not key
        or key.startswith("/")
        or "\\" in key
        or not key.isprintable()  # NUL, control characters, lone surrogates
        or any(part in ("", ".", "..") for part in key.split("/"))
        or len(key.encode("utf-8", "replace")) > MAX_KEY_BYTES
    )
    if bad:
        raise ArchiveError(
            f"Refused archive key {key!r}: it must be a relative path without '..', '.', empty segments, "
            "backslashes or control characters.",
            "This is a bug or a hostile file name; report it with the file name.",
        )
    return key
