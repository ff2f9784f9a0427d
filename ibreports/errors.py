"""One exception family; each error carries the remedy the user should apply.

Exit codes (INTERFACE.md): 1 files failed or at risk, 2 usage or configuration,
3 connection, authentication or host key.
"""

from __future__ import annotations


class IbreportsError(Exception):
    """Base error: a one-sentence cause plus a remedy. Never holds a secret."""

    exit_code = 1
    summary = "failed"  # how a run summary and alerts name a source that failed with this error

    def __init__(self, message: str, remedy: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.remedy = remedy

    def __str__(self) -> str:
        return f"{self.message} {self.remedy}".strip()


class ConfigError(IbreportsError):
    """Bad configuration, bad arguments or bad user input (exit 2)."""

    exit_code = 2
    summary = "misconfigured"


class KeyMaterialError(ConfigError):
    """Key generation, backup or restore refused (exit 2)."""


class ConnectionFailure(IbreportsError):
    """The server could not be reached or the connection broke (exit 3). Transient."""

    exit_code = 3
    summary = "unreachable"


class TooSlowError(ConnectionFailure):
    """The server sent data below the minimum rate: dropped, not retried at once (exit 3)."""

    summary = "too slow"


class HostKeyError(ConnectionFailure):
    """Unknown or changed host key (exit 3). Never retried."""

    summary = "host key refused"


class CertificateError(HostKeyError):
    """The FTPS server's certificate could not be verified (exit 3). Never retried."""

    summary = "certificate refused"


class AuthenticationError(ConnectionFailure):
    """The server refused our credentials (exit 3). Never retried."""

    summary = "login refused"


class RemoteFileError(IbreportsError):
    """One remote file could not be fetched (hostile name, size changed, ...)."""


class FileChangedError(RemoteFileError):
    """The file changed between listing and download (still being written): it waits for the next run."""


class DecryptionError(IbreportsError):
    """A file failed strict decryption; its output was deleted."""


class ArchiveError(IbreportsError):
    """The archive refused a read or a write."""


def error_class(name: str) -> type[IbreportsError] | None:
    """The error class called ``name`` (run reports record class names), or None if there is none."""
    cls = globals().get(name)
    return cls if isinstance(cls, type) and issubclass(cls, IbreportsError) else None


def is_transient(exc: BaseException) -> bool:
    """True for errors worth retrying: broken connections, not refused credentials or keys."""
    if isinstance(exc, (HostKeyError, AuthenticationError)):
        return False
    return isinstance(exc, (ConnectionFailure, TimeoutError, ConnectionError, EOFError))
