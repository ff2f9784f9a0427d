"""Errors own their policy: exit codes and retries are attributes of the classes, asked of the class."""

from __future__ import annotations

import pytest

from ibreports import errors
from ibreports.errors import (
    ArchiveError, AuthenticationError, ConfigError, ConnectionFailure, DecryptionError, DiskFullError, FileChangedError,
    HostKeyError, IbreportsError, KeyMaterialError, RemoteFileError, error_class, is_transient,
)
from ibreports.report import FileOutcome, RunReport
from ibreports.status import StatusReport

POLICY = {  # class: (exit_code, source_exit_code, retryable)
    IbreportsError: (1, 3, False),
    ConfigError: (2, 2, False),
    KeyMaterialError: (2, 2, False),
    ConnectionFailure: (3, 3, True),
    HostKeyError: (3, 3, False),
    AuthenticationError: (3, 3, False),
    RemoteFileError: (1, 3, False),
    FileChangedError: (1, 3, False),
    DecryptionError: (1, 3, False),
    ArchiveError: (1, 3, False),
    DiskFullError: (1, 1, False),  # a local resource, not a bad file, a bad setting or a server away
}


@pytest.mark.parametrize("cls", list(POLICY), ids=lambda c: c.__name__)
def test_the_policy_is_asked_of_the_class_and_its_instances_alike(cls):
    assert (cls.exit_code, cls.source_exit_code, cls.retryable) == POLICY[cls]
    exc = cls("cause.", "remedy.")
    assert (exc.exit_code, exc.source_exit_code, exc.retryable) == POLICY[cls]
    assert is_transient(exc) is cls.retryable
    assert error_class(cls.__name__) is cls


def test_os_level_breaks_are_transient_and_other_exceptions_are_not():
    assert all(is_transient(e) for e in (TimeoutError(), ConnectionResetError(), EOFError()))
    assert not any(is_transient(e) for e in (ValueError(), RuntimeError(), OSError(13, "denied")))
    assert error_class("RuntimeError") is None and error_class("is_transient") is None


def test_decryption_error_reason_is_a_field():
    exc = DecryptionError("Decryption refused: integrity check failed.", "Ask IBKR.", reason="integrity")
    assert exc.reason == "integrity" and str(exc) == "Decryption refused: integrity check failed. Ask IBKR."
    assert DecryptionError("The decryptor was closed.").reason == ""


def test_a_partial_report_travels_as_a_declared_field():
    partial = {"files": [{"source": "a", "name": "x"}]}
    assert ConnectionFailure("broke.", report=partial).report == partial
    assert DecryptionError("refused.", reason="no-key", report=partial).report == partial
    assert ConfigError("bad.").report is None


@pytest.mark.parametrize(
    "kinds, code",
    [
        (["ConfigError"], 2),
        (["ConfigError", "KeyMaterialError"], 2),
        (["ConfigError", "ConnectionFailure"], 3),
        (["RemoteFileError"], 3),  # a source whose folder cannot be listed is as good as unreachable
        (["DiskFullError"], 1),  # a Flex statement that did not fit in staging: the next run resumes
        (["ServerBusy"], 1),  # not one of ours: an unexpected failure of that source, not "unreachable"
    ],
)
def test_run_and_status_exit_codes_come_from_the_error_classes(kinds, code):
    names = [f"s{i}" for i in range(len(kinds))]
    run = RunReport(run_id="r", started="", sources=names,
                    source_errors={n: "cause." for n in names}, source_error_types=dict(zip(names, kinds)))
    assert run.exit_code == code
    status = StatusReport(generated="", purge_days=100, warn_days=14, errors={n: "cause." for n in names},
                          error_codes={n: getattr(errors, k).source_exit_code if hasattr(errors, k) else 1
                                       for n, k in zip(names, kinds)})
    assert status.exit_code == code
    run.files.append(FileOutcome(source="s0", name="x", size=1, mtime=0.0, account=None, statement_date="2026-11-01", outcome="failed"))
    assert run.exit_code == code  # a source error outranks failed files
