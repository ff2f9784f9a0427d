"""One exception family; each error carries the remedy the user should apply, and its policy.

The policy is a class attribute, so it can be asked of a class as well (run reports record
error class names): ``exit_code`` (INTERFACE.md: 1 files failed or at risk, 2 usage or
configuration, 3 connection, authentication or host key), ``source_exit_code`` (the exit code
when a whole source failed with it) and ``retryable`` (worth retrying: a broken connection,
never a refused key or credential).
"""

from __future__ import annotations

from typing import ClassVar


class IbreportsError(Exception):
    """Base error: a one-sentence cause plus a remedy. Never holds a secret."""

    exit_code: ClassVar[int] = 1
    source_exit_code: ClassVar[int] = 3  # a source that cannot be read is as good as unreachable
    retryable: ClassVar[bool] = False
    summary: ClassVar[str] = "failed"  # how a run summary and alerts name a source failed with it

    def __init__(self, message: str, remedy: str = "", *, report: dict | None = None, code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.remedy = remedy
        self.report = report  # a run report (as a dict) of the files handled before a source failed
        self.code = code  # the server's own error code when it gave one (a Flex Web Service code), else None

    def __str__(self) -> str:
        return f"{self.message} {self.remedy}".strip()


class ConfigError(IbreportsError):
    """Bad configuration, bad arguments or bad user input (exit 2)."""

    exit_code = 2
    source_exit_code = 2
    summary = "misconfigured"


class KeyMaterialError(ConfigError):
    """Key generation, backup or restore refused (exit 2)."""


class ConnectionFailure(IbreportsError):
    """The server could not be reached or the connection broke (exit 3). Transient."""

    exit_code = 3
    retryable = True
    summary = "unreachable"


class TooSlowError(ConnectionFailure):
    """The server sent data below the minimum rate: the transfer was dropped (exit 3)."""

    summary = "too slow"


class HostKeyError(ConnectionFailure):
    """Unknown or changed host key (exit 3). Never retried."""

    retryable = False
    summary = "host key refused"


class CertificateError(HostKeyError):
    """The FTPS server's certificate could not be verified (exit 3). Never retried."""

    summary = "certificate refused"


class AuthenticationError(ConnectionFailure):
    """The server refused our credentials (exit 3). Never retried."""

    retryable = False
    summary = "login refused"


class RemoteFileError(IbreportsError):
    """One remote file could not be fetched (hostile name, size changed, ...)."""


class StatementUnavailable(RemoteFileError):
    """An on-demand source could not make one statement (not ready in time, not available, an
    unreadable answer): that statement failed, the others were archived (exit 1, not 3)."""

    source_exit_code = 1


class FileChangedError(RemoteFileError):
    """The file changed between listing and download (still being written): it waits for the next run."""


class DecryptionError(IbreportsError):
    """A file failed strict decryption; its output was deleted.

    ``reason`` is the short word shown for the refused file: ``integrity``, ``no-key``, ``no-mdc``,
    ``locked``, ``malformed``, ``empty``, ``signature``, ``oversized``, ``timeout``, ``failed``, ...
    ("" when not a refusal)."""

    def __init__(self, message: str, remedy: str = "", *, reason: str = "", report: dict | None = None) -> None:
        super().__init__(message, remedy, report=report)
        self.reason = reason


class ArchiveError(IbreportsError):
    """The archive refused a read or a write of one object (that file fails, exit 1)."""


class ArchiveConfigError(ArchiveError, ConfigError):
    """The archive cannot be used at all as configured: the bucket or folder does not exist or
    refuses writes, or there are no usable credentials (exit 2). A run stops at the first one."""

    summary = "stopped: archive misconfigured"


class ArchiveUnreachable(ArchiveError, ConnectionFailure):
    """The archive's endpoint could not be reached (exit 3). Retried for a while, then by Prefect."""

    summary = "stopped: archive unreachable"


class DiskFullError(IbreportsError):
    """A local disk (staging, the archive folder, gpg's output) ran out of space or quota: that file
    failed with nothing lost (exit 1, not 2: the settings are right and the next run with space
    resumes; nor 3: no server is at fault). Made by files.disk_full, the one mapping of
    ENOSPC / EDQUOT, so its sentence always names the folder, its file system and the space needed.
    Not retried within the run: space does not come back by itself."""

    source_exit_code = 1
    summary = "out of disk space"
    reason = "disk-full"  # the refused file's code in run reports (as DecryptionError.reason)


class SourceDeadline(IbreportsError):
    """A source ran past ``[run] source_deadline_minutes`` (exit 3). Not retried: a server that
    trickles would only hold the next attempt open as long."""

    exit_code = 3
    source_exit_code = 3
    summary = "past their deadline"


def error_class(name: str) -> type[IbreportsError] | None:
    """The error class called ``name`` (run reports record class names), or None if there is none."""
    cls = globals().get(name)
    return cls if isinstance(cls, type) and issubclass(cls, IbreportsError) else None


def is_transient(exc: BaseException) -> bool:
    """True for errors worth retrying: ours that say so, and the OS's broken connections."""
    if isinstance(exc, IbreportsError):
        return exc.retryable
    return isinstance(exc, (TimeoutError, ConnectionError, EOFError))
