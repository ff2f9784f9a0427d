"""Remote sources behind one small interface: list a folder, download a file.

Each kind (sFTP, FTP, ...) registers itself in :mod:`.registry`; ``open_remote`` asks it.
"""

from __future__ import annotations

from ..configmodel import SourceConfig
from .protocol import Progress, Remote, RemoteFile

__all__ = ["Progress", "Remote", "RemoteFile", "open_remote"]


def open_remote(source: SourceConfig) -> Remote:
    """Connect and authenticate; raises HostKeyError, AuthenticationError or ConnectionFailure."""
    from .registry import kind_of

    return kind_of(source).open(source)
