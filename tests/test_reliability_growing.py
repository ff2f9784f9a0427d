"""A file still being written: not archived until stable, then archived once, complete.

Real sshd for the settle time (a recent mtime means "still being written"); the sandbox for
what a real server cannot stage on demand: a file that grows between listing and download,
and a listing that lies about sizes.
"""

from __future__ import annotations

import os
import time

import paramiko
import pytest

from ibreports.cli import main
from ibreports.sandbox import SandboxServer
from tests.reliability import local_archive_toml, local_objects, sftp_toml, write_config

NAME = "DU1234567.Activity.20261104.20261104.csv"
KEY = f"statements/DU1234567/2026/11/{NAME}"


@pytest.fixture
def env(monkeypatch, pgp_key, sftp_client_key):
    monkeypatch.setenv("TEST_PGP_PASSPHRASE", pgp_key.passphrase)
    monkeypatch.setenv("TEST_SSH_PASSPHRASE", sftp_client_key[2])


def test_recent_file_waits_for_the_settle_time(tmp_path, sshd_factory, sftp_client_key, pgp_key, env, capsys):
    server = sshd_factory([sftp_client_key[1]])
    path = server.root / "outgoing" / NAME
    path.write_bytes(b"Header,Value\n")
    source = sftp_toml("ibkr-sftp", server.port, server, sftp_client_key,
                       server.write_known_hosts(tmp_path / "known_hosts"), settle_seconds=60)
    cfg = write_config(tmp_path, source, pgp_key, local_archive_toml(tmp_path / "archive"), tmp_path / "staging")
    for _ in range(2):  # still being written: every run waits, nothing is archived
        assert main(["--config", str(cfg), "fetch"]) == 0
        assert "waiting" in capsys.readouterr().out
        assert local_objects(tmp_path / "archive")[0] == {}
        with open(path, "ab") as fh:
            fh.write(b"Cash,100\n" * 1000)
    old = time.time() - 600
    os.utime(path, (old, old))  # the writer finished ten minutes ago
    assert main(["--config", str(cfg), "fetch"]) == 0
    assert local_objects(tmp_path / "archive")[0] == {KEY: path.read_bytes()}
    assert main(["--config", str(cfg), "fetch"]) == 0
    assert "0 archived, 1 already archived" in capsys.readouterr().out


@pytest.fixture
def sandbox(tmp_path, sftp_client_key):
    key = paramiko.RSAKey.from_private_key_file(str(sftp_client_key[0]), password=sftp_client_key[2])
    (tmp_path / "served" / "outgoing").mkdir(parents=True)
    with SandboxServer(tmp_path / "served", authorized_key=key) as server:
        yield server


def sandbox_config(tmp_path, sandbox, sftp_client_key, pgp_key):
    source = sftp_toml("ibkr-sftp", sandbox.port, sandbox, sftp_client_key,
                       sandbox.write_known_hosts(tmp_path / "known_hosts"))
    source = source.replace(f'remote_dir = "{sandbox.root / "outgoing"}"', 'remote_dir = "outgoing"')
    return write_config(tmp_path, source, pgp_key, local_archive_toml(tmp_path / "archive"), tmp_path / "staging")


def test_file_growing_between_listing_and_download(tmp_path, sandbox, sftp_client_key, pgp_key, env, capsys):
    path = sandbox.root / "outgoing" / NAME
    path.write_bytes(b"Header,Value\n")
    cfg = sandbox_config(tmp_path, sandbox, sftp_client_key, pgp_key)
    sandbox.grow_on_open[NAME] = b"Cash,100\n" * 500
    for _ in range(3):
        assert main(["--config", str(cfg), "fetch"]) == 0  # still being written: it waits, it is not a failure
        out = capsys.readouterr().out
        assert "waiting" in out and "changed" in out
        assert local_objects(tmp_path / "archive") == ({}, [])
    sandbox.grow_on_open.clear()  # the writer is done
    assert main(["--config", str(cfg), "fetch"]) == 0
    assert local_objects(tmp_path / "archive")[0] == {KEY: path.read_bytes()}
    assert path.stat().st_size == len(b"Header,Value\n") + 3 * 500 * len(b"Cash,100\n")
    assert main(["--config", str(cfg), "fetch"]) == 0
    assert "0 archived, 1 already archived" in capsys.readouterr().out


@pytest.mark.parametrize("lie", [-1, +1, 10_000, -5000])
def test_listing_that_lies_about_the_size(tmp_path, sandbox, sftp_client_key, pgp_key, env, capsys, lie):
    path = sandbox.root / "outgoing" / NAME
    data = b"Header,Value\n" + b"Cash,100\n" * 1000
    path.write_bytes(data)
    cfg = sandbox_config(tmp_path, sandbox, sftp_client_key, pgp_key)
    sandbox.lie_about_size[NAME] = len(data) + lie
    assert main(["--config", str(cfg), "fetch"]) in (0, 1)  # waits (or fails) for this run
    out = capsys.readouterr().out
    assert "waiting" in out or "failed" in out
    assert local_objects(tmp_path / "archive") == ({}, [])  # neither a truncated nor an over-long copy
    assert list((tmp_path / "staging").iterdir()) == []
    sandbox.lie_about_size.clear()
    assert main(["--config", str(cfg), "fetch"]) == 0
    assert local_objects(tmp_path / "archive")[0] == {KEY: data}
