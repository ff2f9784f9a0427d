"""A plain file never stands in for a verified statement; an archive that refuses writes stops the run once.

Real sshd, real gpg, local folder and moto S3 over HTTP.
"""

from __future__ import annotations

import json
import socket

import pytest

from ibreports.cli import main
from tests.configs import sftp_toml
from tests.fixtures.pgpkeys import encrypt_bytes
from tests.fixtures.s3 import iam_enforced, read_only_user
from tests.helpers import local_archive, s3_archive, write_config

NAME = "U1234567.DailyActivity.20261101.20261101.xml"
GENUINE = b"<FlexQueryResponse>genuine</FlexQueryResponse>\n"
FORGED = b"<FlexQueryResponse>forged!</FlexQueryResponse>\n"  # same length: size alone cannot tell
STATEMENT = f"statements/U1234567/2026/11/{NAME}"


@pytest.fixture
def sftp(tmp_path, sshd_factory, sftp_client_key, monkeypatch, pgp_key):
    monkeypatch.setenv("TEST_PGP_PASSPHRASE", pgp_key.passphrase)
    monkeypatch.setenv("TEST_SSH_PASSPHRASE", sftp_client_key[2])
    server = sshd_factory([sftp_client_key[1]])
    known_hosts = tmp_path / "known_hosts"
    server.write_known_hosts(known_hosts)
    (server.root / "outgoing").mkdir(parents=True, exist_ok=True)
    return server, sftp_toml(server, sftp_client_key, known_hosts)


def last_record(root, out: str) -> dict:
    """The run record the output names (two runs in one second sort by their random suffix)."""
    key = out.rsplit("run record: ", 1)[1].split()[0]
    return json.loads((root / key).read_text())


def test_forged_plain_twin_is_refused_and_the_verified_statement_archived(tmp_path, sftp, pgp_key, capsys):
    server, source = sftp
    outgoing = server.root / "outgoing"
    encrypt_bytes(pgp_key.public_file, GENUINE, outgoing / (NAME + ".pgp"))
    (outgoing / NAME).write_bytes(FORGED)
    archive_toml, root = local_archive(tmp_path)
    cfg = write_config(tmp_path, source, pgp_key, archive_toml)
    assert main(["--config", str(cfg), "fetch"]) == 1
    out = capsys.readouterr().out
    assert "rejected" in out and f"ibkr-sftp/{NAME}\n" in out and "only the encrypted one is trusted" in out
    assert (root / STATEMENT).read_bytes() == GENUINE
    [row] = [f for f in last_record(root, out)["files"] if f["name"] == NAME]
    assert (row["outcome"], row["code"]) == ("rejected", "shadow")
    # Next run: the same refusal, the archive unchanged.
    assert main(["--config", str(cfg), "fetch"]) == 1
    assert (root / STATEMENT).read_bytes() == GENUINE


def test_plain_twin_arriving_after_the_encrypted_one_is_refused(tmp_path, sftp, pgp_key, capsys):
    server, source = sftp
    outgoing = server.root / "outgoing"
    encrypt_bytes(pgp_key.public_file, GENUINE, outgoing / (NAME + ".pgp"))
    archive_toml, root = local_archive(tmp_path)
    cfg = write_config(tmp_path, source, pgp_key, archive_toml)
    assert main(["--config", str(cfg), "fetch"]) == 0
    (outgoing / (NAME + ".pgp")).unlink()  # purged, or moved away by an attacker
    (outgoing / NAME).write_bytes(FORGED)
    capsys.readouterr()
    assert main(["--config", str(cfg), "fetch"]) == 1
    assert "already archived from an encrypted delivery" in capsys.readouterr().out
    assert (root / STATEMENT).read_bytes() == GENUINE


def test_different_plain_content_for_an_archived_statement_is_a_conflict(tmp_path, sftp, pgp_key, capsys):
    server, source = sftp
    outgoing = server.root / "outgoing"
    (outgoing / NAME).write_bytes(GENUINE)
    archive_toml, root = local_archive(tmp_path)
    cfg = write_config(tmp_path, source, pgp_key, archive_toml)
    assert main(["--config", str(cfg), "fetch"]) == 0
    (outgoing / NAME).write_bytes(FORGED + b"<!-- longer -->")  # redelivered with other content
    capsys.readouterr()
    assert main(["--config", str(cfg), "fetch"]) == 1
    out = capsys.readouterr().out
    assert "conflict" in out and "was not replaced" in out
    assert (root / STATEMENT).read_bytes() == GENUINE  # never replaced
    [kept] = [p for p in (root / "conflicts" / "ibkr-sftp").rglob(f"{NAME}.*") if p.suffix != ".json"]
    assert kept.read_bytes() == FORGED + b"<!-- longer -->"  # both originals kept
    [row] = [f for f in last_record(root, out)["files"] if f["name"] == NAME]
    assert (row["outcome"], row["code"]) == ("failed", "conflict")


def test_a_verified_statement_never_replaces_a_different_archived_one(tmp_path, sftp, pgp_key, capsys):
    """Forged plain archived first (allow_plain on sFTP), the genuine encrypted one later: a conflict."""
    server, source = sftp
    outgoing = server.root / "outgoing"
    (outgoing / NAME).write_bytes(FORGED)
    archive_toml, root = local_archive(tmp_path)
    cfg = write_config(tmp_path, source, pgp_key, archive_toml)
    assert main(["--config", str(cfg), "fetch"]) == 0
    (outgoing / NAME).unlink()
    encrypt_bytes(pgp_key.public_file, GENUINE, outgoing / (NAME + ".pgp"))
    capsys.readouterr()
    assert main(["--config", str(cfg), "fetch"]) == 1
    assert "conflict: the archived statement" in capsys.readouterr().out
    assert (root / STATEMENT).read_bytes() == FORGED  # a person decides; nothing silently replaced
    assert list((root / "conflicts" / "ibkr-sftp").rglob(f"{NAME}.pgp.*.statement"))  # the genuine one, decrypted
    # The delivery is kept apart, never as the encrypted original of the statement it contradicts.
    assert not (root / f"encrypted/ibkr-sftp/2026/11/{NAME}.pgp").exists()


def test_a_missing_bucket_is_a_configuration_error(tmp_path, sftp, pgp_key, s3_server, capsys):
    server, source = sftp
    encrypt_bytes(pgp_key.public_file, GENUINE, server.root / "outgoing" / (NAME + ".pgp"))
    cfg = write_config(tmp_path, source, pgp_key, s3_archive(s3_server, "no-such-bucket-planner"))
    assert main(["--config", str(cfg), "fetch"]) == 2
    assert "Bucket no-such-bucket-planner does not exist" in capsys.readouterr().err


def test_missing_archive_credentials_are_a_configuration_error(tmp_path, sftp, pgp_key, s3_server, s3_bucket,
                                                               monkeypatch, capsys):
    server, source = sftp
    encrypt_bytes(pgp_key.public_file, GENUINE, server.root / "outgoing" / (NAME + ".pgp"))
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    cfg = write_config(tmp_path, source, pgp_key, s3_archive(s3_server, s3_bucket))
    assert main(["--config", str(cfg), "fetch"]) == 2
    assert "No usable AWS credentials" in capsys.readouterr().err


def test_an_unreachable_archive_endpoint_is_a_connection_error(tmp_path, sftp, pgp_key, s3_server, capsys):
    server, source = sftp
    encrypt_bytes(pgp_key.public_file, GENUINE, server.root / "outgoing" / (NAME + ".pgp"))
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
    try:
        cfg = write_config(tmp_path, source, pgp_key, s3_archive(f"http://127.0.0.1:{closed.getsockname()[1]}", "b"))
        assert main(["--config", str(cfg), "fetch"]) == 3
    finally:
        closed.close()
    assert "Could not reach the S3 endpoint" in capsys.readouterr().err


def test_a_bucket_that_refuses_writes_stops_the_run_once_with_exit_2(tmp_path, sftp, pgp_key, s3_server, s3_bucket,
                                                                    capsys, monkeypatch):
    server, source = sftp
    for i in range(6):
        encrypt_bytes(pgp_key.public_file, GENUINE, server.root / "outgoing" / f"U123456{i}.Daily.20261101.20261101.xml.pgp")
    read_only_user(s3_server, s3_bucket, monkeypatch)
    cfg = write_config(tmp_path, source, pgp_key, s3_archive(s3_server, s3_bucket) + "\n[run]\nworkers = 1\n")
    with iam_enforced(s3_server):
        code = main(["--config", str(cfg), "fetch"])
    out = capsys.readouterr().out
    assert code == 2
    assert out.count("Access denied") == 1, out  # said once, not once per file
    assert out.count("not finished: the archive refused writes") == 6  # nothing lost: all wait for the next run

