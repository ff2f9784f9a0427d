"""End to end through `ibreports fetch`: real sshd / FTP server, real gpg, local folder and S3 (moto over HTTP)."""

from __future__ import annotations

import hashlib
import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path

import boto3
import pytest

from ibreports.cli import main
from tests.configs import ftp_toml, sftp_toml
from tests.fixtures.pgpkeys import encrypt_bytes
from tests.helpers import (
    PLAIN, UNENCRYPTED, UNPARSEABLE, UNPARSEABLE_MTIME, Receiver, archived_files, local_archive, s3_archive, seed,
    write_config,
)

DAY = 86400


def age(path: Path, days: float) -> None:
    """Back-date a server file: the purge horizon counts from its mtime."""
    then = time.time() - days * DAY
    os.utime(path, (then, then))


def expected_keys(delivered: dict[str, bytes], source: str) -> dict[str, list[str]]:
    """Remote name -> the archive keys it must land under (docs/fetch-and-archive.md, "Archive layout")."""
    keys = {}
    for name in delivered:
        if name == UNPARSEABLE[0]:
            month = f"{datetime.fromtimestamp(UNPARSEABLE_MTIME, timezone.utc):%Y/%m}"
            keys[name] = [f"encrypted/{source}/{month}/{name}", f"statements/_unsorted/{month}/{name[:-4]}"]
        elif name == UNENCRYPTED[0]:
            keys[name] = ["statements/DU1234567/2026/11/" + name]
        else:
            account, d = name.split(".")[0], name.split(".")[3]
            keys[name] = [f"encrypted/{source}/{d[:4]}/{d[4:6]}/{name}",
                          f"statements/{account}/{d[:4]}/{d[4:6]}/{name.rsplit('.', 1)[0]}"]
    return keys


def assert_complete(files: dict[str, bytes], delivered: dict[str, bytes], source: str) -> None:
    """Every statement equals its plaintext, every original the server's bytes, nothing else."""
    plain = {**PLAIN, UNENCRYPTED[0]: UNENCRYPTED[1], UNPARSEABLE[0][:-4]: UNPARSEABLE[1]}
    keys = expected_keys(delivered, source)
    for name, data in delivered.items():
        *original, statement = keys[name]
        assert files[statement] == plain[statement.rsplit("/", 1)[1]]
        assert all(files[k] == data for k in original)
    assert len(files) == sum(len(k) for k in keys.values())


def s3_objects(s3_server: str, bucket: str) -> dict[str, bytes]:
    """Everything under the ib/ prefix but the run records, keyed like the local archive."""
    s3 = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    listing = s3.list_objects_v2(Bucket=bucket, Prefix="ib/").get("Contents", [])
    return {
        o["Key"][3:]: s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
        for o in listing if not o["Key"].startswith("ib/runs/")
    }


def test_sftp_to_local_archive_then_rerun_writes_nothing(tmp_path, sftp_setup, pgp_key, sftp_client_key, capsys):
    server, known_hosts, delivered = sftp_setup
    archive_toml, root = local_archive(tmp_path)
    cfg = write_config(tmp_path, sftp_toml(server, sftp_client_key, known_hosts), pgp_key, archive_toml)

    assert main(["--config", str(cfg), "fetch"]) == 0
    files = archived_files(root)
    assert_complete(files, delivered, "ibkr-sftp")
    for key in files:
        if key.startswith("statements/"):
            assert (root / key).stat().st_mode & 0o777 == 0o400
    before = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}
    out = capsys.readouterr().out
    assert f"{len(delivered)} archived" in out

    assert main(["--config", str(cfg), "fetch"]) == 0
    after = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}
    new = set(after) - set(before)
    assert all("runs" in p.parts for p in new) and len(new) == 1  # only the second run record
    assert all(after[p] == before[p] for p in before)
    assert f"0 archived, {len(delivered)} already archived" in capsys.readouterr().out


def test_keep_encrypted_turned_on_later_archives_the_missing_originals(tmp_path, sftp_setup, pgp_key, sftp_client_key, capsys):
    server, known_hosts, delivered = sftp_setup
    archive_toml, root = local_archive(tmp_path)
    cfg = write_config(tmp_path, sftp_toml(server, sftp_client_key, known_hosts), pgp_key,
                       archive_toml + "keep_encrypted = false\n")
    assert main(["--config", str(cfg), "fetch"]) == 0
    assert not any(k.startswith("encrypted/") for k in archived_files(root))
    encrypted = [n for n in delivered if n.endswith((".pgp", ".gpg", ".asc"))]
    assert encrypted and len(encrypted) < len(delivered)  # plain deliveries have no separate original
    capsys.readouterr()

    cfg.write_text(cfg.read_text().replace("keep_encrypted = false\n", ""))
    assert main(["--config", str(cfg), "fetch"]) == 0
    # The run that completes a file's archive (here: its original) reports it archived.
    assert f"{len(encrypted)} archived, {len(delivered) - len(encrypted)} already archived" in capsys.readouterr().out
    assert_complete(archived_files(root), delivered, "ibkr-sftp")


def test_dry_run_writes_nothing(tmp_path, sftp_setup, pgp_key, sftp_client_key, capsys):
    server, known_hosts, delivered = sftp_setup
    archive_toml, root = local_archive(tmp_path)
    cfg = write_config(tmp_path, sftp_toml(server, sftp_client_key, known_hosts), pgp_key, archive_toml)
    assert main(["--config", str(cfg), "fetch", "--dry-run"]) == 0
    assert f"{len(delivered)} planned" in capsys.readouterr().out
    assert not root.exists() or not any(p.is_file() for p in root.rglob("*"))


def test_since_until_filter_on_statement_date(tmp_path, sftp_setup, pgp_key, sftp_client_key, capsys):
    server, known_hosts, _ = sftp_setup
    archive_toml, root = local_archive(tmp_path)
    cfg = write_config(tmp_path, sftp_toml(server, sftp_client_key, known_hosts), pgp_key, archive_toml)
    assert main(["--config", str(cfg), "fetch", "--since", "2026-11-02", "--until", "2026-11-03"]) == 0
    names = sorted(k.rsplit("/", 1)[1] for k in archived_files(root) if k.startswith("statements/"))
    assert names == sorted(n for n in PLAIN if ".20261102." in n or ".20261103." in n)
    out = capsys.readouterr().out
    assert "AT RISK" not in out and "out-of-range" not in out  # far from the purge: not worth a line


def test_sftp_to_s3_second_run_adds_no_versions(tmp_path, sftp_setup, pgp_key, sftp_client_key, s3_server,
                                                s3_versioned_bucket, capsys):
    server, known_hosts, delivered = sftp_setup
    bucket = s3_versioned_bucket
    cfg = write_config(tmp_path, sftp_toml(server, sftp_client_key, known_hosts), pgp_key, s3_archive(s3_server, bucket))
    s3 = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")

    def versions() -> int:
        pages = s3.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix="ib/")
        return sum(1 for p in pages for v in p.get("Versions", []) if "/runs/" not in v["Key"])

    assert main(["--config", str(cfg), "fetch"]) == 0
    assert_complete(s3_objects(s3_server, bucket), delivered, "ibkr-sftp")
    keys = expected_keys(delivered, "ibkr-sftp")
    count = versions()
    assert count == sum(len(k) for k in keys.values())

    # Metadata on every object, and the run record: the audit trail of what came from where.
    record_key = capsys.readouterr().out.rsplit("run record: ", 1)[1].strip()
    record = json.loads(s3.get_object(Bucket=bucket, Key=f"ib/{record_key}")["Body"].read())
    rows = {f["name"]: f for f in record["files"]}
    assert sorted(rows) == sorted(delivered)
    for name, data in delivered.items():
        sha = hashlib.sha256(data).hexdigest()
        assert (rows[name]["outcome"], rows[name]["sha256"]) == ("archived", sha)
        assert sorted(rows[name]["archive_keys"]) == sorted(keys[name])
        mtime = str(int((server.root / "outgoing" / name).stat().st_mtime))
        for key in keys[name]:
            meta = s3.head_object(Bucket=bucket, Key=f"ib/{key}")["Metadata"]
            assert (meta["source"], meta["remote-name"]) == ("ibkr-sftp", name)
            assert (meta["remote-mtime"], meta["original-sha256"]) == (mtime, sha)
            decrypted = key.startswith("statements/") and name != UNENCRYPTED[0]
            assert meta.get("pgp-key") == (pgp_key.fingerprint if decrypted else None), key
            assert meta.get("pgp-signature") == ("unsigned" if decrypted else None), key
        assert rows[name]["signature"] == ("unsigned" if name != UNENCRYPTED[0] else "")

    assert main(["--config", str(cfg), "fetch"]) == 0
    assert versions() == count


@pytest.mark.parametrize("archive", ["local", "s3"])
def test_ftp_to_each_archive(tmp_path, ftp_factory, pgp_key, monkeypatch, archive, request):
    server = ftp_factory()
    monkeypatch.setenv("TEST_PGP_PASSPHRASE", pgp_key.passphrase)
    monkeypatch.setenv("TEST_FTP_PASSWORD", server.password)
    delivered = seed(server.root / "outgoing", pgp_key.public_file, unparseable=True)
    if archive == "local":
        archive_toml, root = local_archive(tmp_path)
        files = lambda: archived_files(root)  # noqa: E731
    else:
        s3_server, bucket = request.getfixturevalue("s3_server"), request.getfixturevalue("s3_bucket")
        archive_toml = s3_archive(s3_server, bucket)
        files = lambda: s3_objects(s3_server, bucket)  # noqa: E731
    cfg = write_config(tmp_path, ftp_toml(server, allow_plain=True), pgp_key, archive_toml)
    assert main(["--config", str(cfg), "fetch"]) == 0
    assert_complete(files(), delivered, "ibkr-ftp")


def test_ftp_refuses_plain_deliveries_by_default_and_warns_of_plain_ftp(tmp_path, ftp_factory, pgp_key, monkeypatch,
                                                                         capsys, caplog):
    server = ftp_factory()
    monkeypatch.setenv("TEST_PGP_PASSPHRASE", pgp_key.passphrase)
    monkeypatch.setenv("TEST_FTP_PASSWORD", server.password)
    seed(server.root / "outgoing", pgp_key.public_file)
    archive_toml, root = local_archive(tmp_path)
    cfg = write_config(tmp_path, ftp_toml(server), pgp_key, archive_toml)
    for _ in range(2):  # the warning comes on every run, not once
        caplog.clear()
        assert main(["--config", str(cfg), "fetch"]) == 1
        out = capsys.readouterr().out
        assert "allow_plain = false" in out and UNENCRYPTED[0] in out
        assert "in clear" in out and any("in clear" in r.getMessage() for r in caplog.records)
    assert not any(UNENCRYPTED[0] in str(p) for p in root.rglob("*"))  # never archived as a statement
    assert len(list((root / "statements").rglob("*.xml"))) == len(PLAIN)


def test_bad_files_fail_alone_and_leave_no_plaintext(tmp_path, sftp_setup, pgp_key, other_pgp_key, sftp_client_key, capsys):
    server, known_hosts, delivered = sftp_setup
    out_dir = server.root / "outgoing"
    secret = b"<FlexQueryResponse>SECRET-PLAINTEXT-MARKER</FlexQueryResponse>"
    good = tmp_path / "good.pgp"
    encrypt_bytes(pgp_key.public_file, secret * 50, good)
    body = bytearray(good.read_bytes())
    body[len(body) // 2] ^= 0xFF
    (out_dir / "U1111111.Tampered.20261105.20261105.xml.pgp").write_bytes(bytes(body))
    (out_dir / "U1111111.Truncated.20261105.20261105.xml.pgp").write_bytes(good.read_bytes()[: len(body) // 2])
    (out_dir / "U1111111.Empty.20261105.20261105.xml.pgp").write_bytes(b"")
    encrypt_bytes(other_pgp_key.public_file, secret, out_dir / "U1111111.OtherKey.20261105.20261105.xml.pgp")
    encrypt_bytes(pgp_key.public_file, secret, out_dir / "U1111111.NoMdc.20261105.20261105.xml.pgp", mdc=False)
    staging = tmp_path / "staging"
    archive_toml, root = local_archive(tmp_path)
    cfg = write_config(tmp_path, sftp_toml(server, sftp_client_key, known_hosts), pgp_key,
                       archive_toml + f'[run]\nstaging_dir = "{staging}"\n')

    assert main(["--config", str(cfg), "fetch"]) == 1
    out = capsys.readouterr().out
    assert f"{len(delivered)} archived" in out and "5 failed" in out
    files = archived_files(root)
    for kind in ("Tampered", "Truncated", "Empty", "OtherKey", "NoMdc"):
        name = f"U1111111.{kind}.20261105.20261105.xml"
        assert f"encrypted/ibkr-sftp/2026/11/{name}.pgp" in files  # the evidence is kept
        assert f"statements/U1111111/2026/11/{name}" not in files
    assert not any(secret in data for key, data in files.items() if key.startswith("statements/"))
    assert list(staging.iterdir()) == []  # no plaintext (or anything) left behind
    assert other_pgp_key.subkey_id.upper() in out.upper()  # names the key it needs


@pytest.mark.parametrize("case", ["unknown", "changed"])
def test_host_key_refused_before_anything_downloaded(tmp_path, sftp_setup, pgp_key, sftp_client_key, capsys, case):
    server, known_hosts, _ = sftp_setup
    if case == "unknown":
        known_hosts.write_text("")
    else:
        other = tmp_path / "other_host_key"
        os.system(f"ssh-keygen -q -t ed25519 -N '' -f {other}")
        line = (other.with_suffix(".pub")).read_text().split()[:2]
        known_hosts.write_text(f"[{server.host}]:{server.port} {' '.join(line)}\n")
    archive_toml, root = local_archive(tmp_path)
    cfg = write_config(tmp_path, sftp_toml(server, sftp_client_key, known_hosts), pgp_key, archive_toml)
    assert main(["--config", str(cfg), "fetch"]) == 3
    captured = capsys.readouterr()
    assert "trust-host" in captured.out + captured.err
    assert not any(k.startswith(("statements", "encrypted")) for k in archived_files(root)) if root.exists() else True


def test_wrong_ssh_key_exit_3_with_remedy(tmp_path, sshd_factory, sftp_client_key, pgp_key, env, capsys):
    server = sshd_factory(["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBcJ7p0p4sGq7k0kZ0n2d8vC2x5b0n0dWmQbqC1QfN6X unrelated"])
    known_hosts = tmp_path / "known_hosts"
    server.write_known_hosts(known_hosts)
    archive_toml, _ = local_archive(tmp_path)
    cfg = write_config(tmp_path, sftp_toml(server, sftp_client_key, known_hosts), pgp_key, archive_toml)
    assert main(["--config", str(cfg), "fetch"]) == 3
    captured = capsys.readouterr()
    assert "does not match the public key IBKR holds" in captured.out + captured.err


def test_wrong_ftp_password_exit_3(tmp_path, ftp_factory, pgp_key, monkeypatch, capsys):
    server = ftp_factory()
    monkeypatch.setenv("TEST_PGP_PASSPHRASE", pgp_key.passphrase)
    monkeypatch.setenv("TEST_FTP_PASSWORD", "not-the-password")
    archive_toml, _ = local_archive(tmp_path)
    cfg = write_config(tmp_path, ftp_toml(server), pgp_key, archive_toml)
    assert main(["--config", str(cfg), "fetch"]) == 3
    captured = capsys.readouterr()
    assert "not-the-password" not in captured.out + captured.err
    assert "password" in (captured.out + captured.err).lower()


def test_force_verifies_against_the_archive_and_rewrites_nothing(tmp_path, sftp_setup, pgp_key, sftp_client_key, capsys):
    server, known_hosts, delivered = sftp_setup
    archive_toml, root = local_archive(tmp_path)
    cfg = write_config(tmp_path, sftp_toml(server, sftp_client_key, known_hosts), pgp_key, archive_toml)
    assert main(["--config", str(cfg), "fetch"]) == 0
    stamp = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file() and "runs" not in p.parts}

    capsys.readouterr()
    assert main(["--config", str(cfg), "fetch", "--force"]) == 0  # everything re-downloaded and matches
    assert {p: p.stat().st_mtime_ns for p in stamp} == stamp
    assert f"0 archived, 0 already archived, {len(delivered)} verified" in capsys.readouterr().out

    victim = root / "statements/U1234567/2026/11/U1234567.DailyActivity.20261101.20261101.xml"
    victim.write_bytes(b"<edited/>")
    capsys.readouterr()
    assert main(["--config", str(cfg), "fetch", "--force"]) == 1
    out = capsys.readouterr().out
    assert "conflict: the archived statement" in out and "was not replaced" in out and "1 failed" in out
    assert victim.read_bytes() == b"<edited/>"  # reported, never silently rewritten
    assert list((root / "conflicts").rglob("U1234567.DailyActivity.20261101.20261101.xml.pgp.*"))  # kept aside


def test_delete_after_archive_removes_only_verified_files(tmp_path, sftp_setup, pgp_key, sftp_client_key):
    server, known_hosts, delivered = sftp_setup
    outgoing = server.root / "outgoing"
    (outgoing / "U1111111.Broken.20261105.20261105.xml.pgp").write_bytes(b"\x85\x01garbage")
    archive_toml, root = local_archive(tmp_path)
    source = sftp_toml(server, sftp_client_key, known_hosts) + "delete_after_archive = true\n"
    cfg = write_config(tmp_path, source, pgp_key, archive_toml)
    assert main(["--config", str(cfg), "fetch"]) == 1
    assert sorted(p.name for p in outgoing.iterdir()) == ["U1111111.Broken.20261105.20261105.xml.pgp"]
    files = archived_files(root)
    assert all(f"statements/{n.split('.')[0]}/2026/11/{n}" in files for n in PLAIN)
    assert "encrypted/ibkr-sftp/2026/11/U1111111.Broken.20261105.20261105.xml.pgp" in files


def test_delete_after_archive_keeps_a_file_whose_archived_copy_differs(tmp_path, sftp_setup, pgp_key, sftp_client_key,
                                                                      capsys):
    server, known_hosts, delivered = sftp_setup
    outgoing = server.root / "outgoing"
    archive_toml, root = local_archive(tmp_path)
    keys = expected_keys(delivered, "ibkr-sftp")
    differs, same = "U1234567.DailyActivity.20261101.20261101.xml.pgp", "U7654321.DailyActivity.20261102.20261102.xml.asc"
    for name, data in ((differs, b"another delivery under the same name"), (same, delivered[same])):
        (root / keys[name][0]).parent.mkdir(parents=True, exist_ok=True)
        (root / keys[name][0]).write_bytes(data)  # an original archived before this run
    source = sftp_toml(server, sftp_client_key, known_hosts) + "delete_after_archive = true\n"
    cfg = write_config(tmp_path, source, pgp_key, archive_toml)

    assert main(["--config", str(cfg), "fetch"]) == 1
    out = capsys.readouterr().out
    assert f"{len(delivered) - 1} archived" in out and "1 failed" in out
    assert "conflict: the archived original" in out and "was not deleted" in out
    assert [p.name for p in outgoing.iterdir()] == [differs]  # unverified: kept; verified equal: deleted
    files = archived_files(root)
    assert files[keys[differs][0]] == b"another delivery under the same name" and keys[differs][1] not in files
    assert files[keys[same][1]] == PLAIN[same[:-4]]


def test_a_failing_file_near_the_purge_is_at_risk_and_alerted(tmp_path, sftp_setup, pgp_key, sftp_client_key, capsys):
    server, known_hosts, _ = sftp_setup
    bad = server.root / "outgoing" / "U1111111.Corrupt.20261105.20261105.xml.pgp"
    bad.write_bytes(b"not an OpenPGP message")
    age(bad, 95)
    receiver = Receiver()
    try:
        archive_toml, _ = local_archive(tmp_path)
        cfg = write_config(tmp_path, sftp_toml(server, sftp_client_key, known_hosts), pgp_key,
                           archive_toml + f'[alerts]\nurls = ["{receiver.url}"]\n')
        assert main(["--config", str(cfg), "fetch"]) == 1
        out = capsys.readouterr().out
        assert f"AT RISK: ibkr-sftp/{bad.name} is not archived and the server purges it in 5 day(s)" in out
        titles = sorted(m["title"] for m in receiver.messages)  # sent before fetch returns
    finally:
        receiver.close()
    assert len(titles) == 2 and "1 file(s) at risk" in titles[0] and "failed (1 problem(s))" in titles[1]
    assert all(bad.name in m["message"] for m in receiver.messages)


def test_a_file_outside_since_until_near_the_purge_is_at_risk(tmp_path, sftp_setup, pgp_key, sftp_client_key, capsys):
    server, known_hosts, _ = sftp_setup
    old = server.root / "outgoing" / "U1234567.DailyActivity.20260801.20260801.xml"
    old.write_bytes(b"<FlexQueryResponse/>\n")
    age(old, 95)
    archive_toml, root = local_archive(tmp_path)
    cfg = write_config(tmp_path, sftp_toml(server, sftp_client_key, known_hosts), pgp_key, archive_toml)
    ranged = ["--config", str(cfg), "fetch", "--since", "2026-11-02", "--until", "2026-11-03"]

    assert main(ranged) == 1
    out = capsys.readouterr().out
    assert f"AT RISK: ibkr-sftp/{old.name} (outside --since/--until) is not archived and the server purges it in 5" in out
    assert "2 archived" in out and "out-of-range" not in out  # not in the table of files acted on
    assert not any(old.name in k for k in archived_files(root))
    record = json.loads((root / out.rsplit("run record: ", 1)[1].strip()).read_bytes())
    assert [f["outcome"] for f in record["files"] if f["name"] == old.name] == ["out-of-range"]

    assert main(["--config", str(cfg), "fetch"]) == 0  # archives it
    assert main(ranged) == 0  # archived now: nothing at risk
    assert "AT RISK" not in capsys.readouterr().out


@pytest.mark.parametrize("case", ["missing-key-file", "unset-env-reference"])
def test_a_misconfigured_source_exits_2(tmp_path, sftp_setup, pgp_key, sftp_client_key, capsys, monkeypatch, case):
    server, known_hosts, _ = sftp_setup
    monkeypatch.delenv("IBREPORTS_TEST_UNSET", raising=False)
    if case == "missing-key-file":
        override, cause = {"key_file": str(tmp_path / "absent_rsa")}, "absent_rsa does not exist"
    else:
        override, cause = {"key_passphrase": "env:IBREPORTS_TEST_UNSET"}, "IBREPORTS_TEST_UNSET, which is not set"
    archive_toml, _ = local_archive(tmp_path)
    cfg = write_config(tmp_path, sftp_toml(server, sftp_client_key, known_hosts, **override), pgp_key, archive_toml)
    assert main(["--config", str(cfg), "fetch"]) == 2
    out = capsys.readouterr().out
    assert cause in out and "1 source(s) misconfigured" in out and "unreachable" not in out


def test_misconfigured_and_unreachable_sources_exit_3(tmp_path, sftp_setup, ftp_factory, pgp_key, sftp_client_key,
                                                      capsys, monkeypatch):
    server, known_hosts, _ = sftp_setup
    ftp = ftp_factory()
    monkeypatch.setenv("TEST_FTP_PASSWORD", "not-the-password")
    monkeypatch.delenv("IBREPORTS_TEST_UNSET", raising=False)
    sources = sftp_toml(server, sftp_client_key, known_hosts, key_passphrase="env:IBREPORTS_TEST_UNSET") + ftp_toml(ftp)
    archive_toml, _ = local_archive(tmp_path)
    cfg = write_config(tmp_path, sources, pgp_key, archive_toml)
    assert main(["--config", str(cfg), "fetch"]) == 3  # a login refused outranks a setting to fix
    assert "1 source(s) misconfigured, 1 source(s) login refused" in capsys.readouterr().out
