"""Conflicts are durable: recorded in the archive, shown by fetch, status, coverage and verify with exit 1
on every run, until `ibreports conflicts resolve` records a person's decision (both copies kept).

Real sshd, a real FTP server (pyftpdlib), real gpg; a local folder and moto's S3 over HTTP.
"""

from __future__ import annotations

import hashlib
import json

import pytest

from ibreports.cli import main
from tests.configs import ftp_toml, sftp_toml
from tests.fixtures.pgpkeys import encrypt_bytes
from tests.fixtures.s3 import s3_test_client
from tests.helpers import PLAIN, local_archive, s3_archive, write_config

NAME = "U1234567.DailyActivity.20261101.20261101.xml"
KEY = f"statements/U1234567/2026/11/{NAME}"
OTHER = b"<FlexQueryResponse queryName='DailyActivity'>another one</FlexQueryResponse>\n"


def run(cfg, capsys, *args) -> tuple[int, str]:
    rc = main(["--config", str(cfg), *args])
    captured = capsys.readouterr()
    return rc, captured.out + captured.err


def run_json(cfg, capsys, *args) -> tuple[int, dict]:
    rc = main(["--config", str(cfg), *args, "--json"])
    return rc, json.loads(capsys.readouterr().out)


def test_a_second_source_with_other_content_stays_a_conflict_until_resolved(
        tmp_path, sftp_setup, sftp_client_key, ftp_factory, pgp_key, monkeypatch, capsys):
    server, known_hosts, delivered = sftp_setup
    ftp = ftp_factory()
    monkeypatch.setenv("TEST_FTP_PASSWORD", ftp.password)
    (ftp.root / "outgoing").mkdir(parents=True, exist_ok=True)
    encrypt_bytes(pgp_key.public_file, OTHER, ftp.root / "outgoing" / (NAME + ".pgp"))
    ftp_bytes = (ftp.root / "outgoing" / (NAME + ".pgp")).read_bytes()
    archive_toml, root = local_archive(tmp_path)
    cfg = write_config(tmp_path, sftp_toml(server, sftp_client_key, known_hosts) + ftp_toml(ftp), pgp_key, archive_toml)

    rc, out = run(cfg, capsys, "fetch")
    assert rc == 1 and "conflict: the archived statement" in out and "OPEN CONFLICT: ibkr-ftp/2026/11/" in out
    sha16 = hashlib.sha256(ftp_bytes).hexdigest()[:16]
    ident = f"ibkr-ftp/2026/11/{NAME}.pgp.{sha16}"
    assert f"ibreports conflicts resolve {ident} --keep archived|new" in out
    # Kept apart, never as ibkr-ftp's encrypted original (that would make the statement look complete for it).
    assert not (root / f"encrypted/ibkr-ftp/2026/11/{NAME}.pgp").exists()
    assert (root / "conflicts" / ident).read_bytes() == ftp_bytes
    assert (root / "conflicts" / (ident + ".statement")).read_bytes() == OTHER
    record = json.loads((root / "conflicts" / (ident + ".conflict.json")).read_text())
    assert (record["source"], record["key"], record["delivered_sha256"]) == (
        "ibkr-ftp", KEY, hashlib.sha256(ftp_bytes).hexdigest())
    assert record["archived_sha256"] == hashlib.sha256(PLAIN[NAME]).hexdigest() and record["detected"]

    for _ in range(2):  # the second and third run: still a conflict, never "already archived"
        rc, out = run(cfg, capsys, "fetch")
        assert rc == 1 and "failed" in out and f"OPEN CONFLICT: {ident}" in out and "1 open conflict(s)" in out
    rc, doc = run_json(cfg, capsys, "status")
    assert rc == 1 and [c["id"] for c in doc["conflicts"]] == [ident]
    [row] = [f for f in doc["files"] if f["source"] == "ibkr-ftp"]
    assert row["archived"] is False and row["last_outcome"] == "failed"
    rc, out = run(cfg, capsys, "status")
    assert rc == 1 and f"! CONFLICT {ident}: ibkr-ftp/{NAME}.pgp contradicts {KEY}" in out
    rc, doc = run_json(cfg, capsys, "coverage", "--offline")
    assert rc == 1 and [c["id"] for c in doc["conflicts"]] == [ident]
    [kind] = [k for k in doc["kinds"] if k["conflicts"]]  # the calendar's conflict mark: the statement's day, the delivery kept apart
    assert [(m["from"], m["key"]) for m in kind["conflicts"]] == [("2026-11-01", "conflicts/" + ident)]
    rc, doc = run_json(cfg, capsys, "verify")
    assert rc == 1 and doc["conflicts"] == [ident] and doc["ok"] == doc["checked"]  # nothing else is wrong
    rc, out = run(cfg, capsys, "conflicts", "list")
    assert rc == 1 and f"OPEN  {ident}" in out and "1 open conflict(s)" in out

    rc, out = run(cfg, capsys, "conflicts", "resolve", ident, "--keep", "archived", "--reason", "IBKR: sFTP copy is right")
    assert rc == 0 and f"resolved {ident}: keep archived; the statement is {KEY}" in out
    rc, out = run(cfg, capsys, "conflicts", "resolve", ident, "--keep", "new", "--reason", "changed my mind")
    assert rc == 2 and "is resolved already" in out  # a resolution is recorded once, for good
    rc, doc = run_json(cfg, capsys, "conflicts", "list", "--all")
    assert rc == 0 and [(c["id"], c["open"], c["resolution"]["keep"]) for c in doc["conflicts"]] == [
        (ident, False, "archived")]
    assert doc["conflicts"][0]["resolution"]["reason"] == "IBKR: sFTP copy is right"
    assert run(cfg, capsys, "fetch")[0] == 0
    rc, doc = run_json(cfg, capsys, "status")
    assert rc == 0 and all(f["archived"] for f in doc["files"] if f["name"].startswith("U1234567")) and not doc["conflicts"]
    assert run_json(cfg, capsys, "verify")[0] == 0
    # No gap up to the deliveries' last day, and the resolved conflict no longer fails coverage.
    rc, doc = run_json(cfg, capsys, "coverage", "--offline", "--account", "U1234567", "--until", "2026-11-01")
    assert rc == 0, [(k["account"], k["gaps"]) for k in doc["kinds"]]
    # Both copies are kept: the archived statement untouched, the other delivery in quarantine.
    assert (root / KEY).read_bytes() == PLAIN[NAME] and (root / "conflicts" / ident).read_bytes() == ftp_bytes


@pytest.fixture(params=["local", "s3"])
def junk_at_key(request, tmp_path, sftp_setup, sftp_client_key, pgp_key):
    """(config, read(key) -> bytes | None): something not written by ibreports sits at a statement's key."""
    server, known_hosts, _ = sftp_setup
    junk = b"<FlexQueryResponse>junk</FlexQueryResponse>\n"
    if request.param == "local":
        archive_toml, root = local_archive(tmp_path)
        (root / KEY).parent.mkdir(parents=True)
        (root / KEY).write_bytes(junk)

        def read(key):
            return (root / key).read_bytes() if (root / key).exists() else None
    else:
        endpoint, bucket = request.getfixturevalue("s3_server"), request.getfixturevalue("s3_versioned_bucket")
        archive_toml = s3_archive(endpoint, bucket)
        client = s3_test_client(endpoint)
        client.put_object(Bucket=bucket, Key=f"ib/{KEY}", Body=junk)

        def read(key):
            try:
                return client.get_object(Bucket=bucket, Key=f"ib/{key}")["Body"].read()
            except client.exceptions.NoSuchKey:
                return None
    cfg = write_config(tmp_path, sftp_toml(server, sftp_client_key, known_hosts), pgp_key, archive_toml)
    return cfg, read, junk


def test_junk_at_a_statement_key_is_a_durable_conflict_and_keep_new_resolves_it(junk_at_key, capsys):
    cfg, read, junk = junk_at_key
    for _ in range(3):
        rc, out = run(cfg, capsys, "fetch")
        assert rc == 1 and "conflict: the archived statement" in out and "OPEN CONFLICT: ibkr-sftp/2026/11/" in out
    assert read(f"encrypted/ibkr-sftp/2026/11/{NAME}.pgp") is None  # never stored as the original
    rc, doc = run_json(cfg, capsys, "verify")
    [ident] = doc["conflicts"]
    assert rc == 1 and doc["planted"] == [KEY]  # nothing in the ledger wrote it
    assert read(f"conflicts/{ident}.statement") == PLAIN[NAME]

    rc, out = run(cfg, capsys, "conflicts", "resolve", ident, "--keep", "new", "--reason", "junk, not IBKR's")
    assert rc == 0 and f"the statement is conflicts/{ident}.statement" in out
    assert run(cfg, capsys, "fetch")[0] == 0
    rc, doc = run_json(cfg, capsys, "verify")
    assert rc == 0 and doc["conflicts"] == [] and doc["planted"] == []  # the resolution acknowledges what it left
    assert read(KEY) == junk  # the first is never deleted or overwritten
    rc, doc = run_json(cfg, capsys, "conflicts", "list", "--all")
    assert rc == 0 and doc["conflicts"][0]["resolution"]["authoritative"] == f"conflicts/{ident}.statement"


def test_resolving_an_unknown_conflict_is_a_usage_error(tmp_path, capsys):
    archive_toml, _ = local_archive(tmp_path)
    cfg = tmp_path / "ibreports.toml"
    cfg.write_text(archive_toml)
    rc, out = run(cfg, capsys, "conflicts", "resolve", "ibkr-sftp/2026/11/x.pgp.0123456789abcdef", "--keep", "new",
                  "--reason", "r")
    assert rc == 2 and "There is no conflict 'ibkr-sftp/2026/11/x.pgp.0123456789abcdef'" in out
    assert run(cfg, capsys, "conflicts", "list")[0] == 0


def test_junk_of_the_same_size_at_the_original_key_is_a_conflict_not_archived(tmp_path, sftp_setup, sftp_client_key,
                                                                                pgp_key, capsys):
    server, known_hosts, delivered = sftp_setup
    original = f"encrypted/ibkr-sftp/2026/11/{NAME}.pgp"
    archive_toml, root = local_archive(tmp_path)
    (root / original).parent.mkdir(parents=True)
    (root / original).write_bytes(b"x" * len(delivered[NAME + ".pgp"]))  # the size alone cannot tell
    cfg = write_config(tmp_path, sftp_toml(server, sftp_client_key, known_hosts), pgp_key, archive_toml)
    for _ in range(2):
        rc, out = run(cfg, capsys, "fetch")
        assert rc == 1 and f"conflict: the archived original {original} has SHA-256" in out
    rc, doc = run_json(cfg, capsys, "conflicts", "list")
    [conflict] = doc["conflicts"]
    assert rc == 1 and conflict["key"] == original and conflict["archived_sha256"] == hashlib.sha256(
        b"x" * len(delivered[NAME + ".pgp"])).hexdigest()
    assert (root / KEY).read_bytes() == PLAIN[NAME]  # the statement itself was verified and archived
    rc, doc = run_json(cfg, capsys, "status")  # the file is not archived while its conflict is open
    [row] = [f for f in doc["files"] if f["name"] == NAME + ".pgp"]
    assert rc == 1 and row["archived"] is False and [c["key"] for c in doc["conflicts"]] == [original]
