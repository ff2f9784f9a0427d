"""End to end through `ibreports fetch`: real sshd / FTP server, real gpg, local folder and S3 (moto over HTTP)."""

from __future__ import annotations

import os
from pathlib import Path

import boto3
import pytest

from ibreports.cli import main
from tests.configs import ftp_toml, sftp_toml  # noqa: F401 - sftp_toml re-used by test_flows
from tests.fixtures.pgpkeys import encrypt_bytes

PLAIN = {
    "U1234567.DailyActivity.20261101.20261101.xml": b"<FlexQueryResponse queryName='DailyActivity'>one</FlexQueryResponse>\n",
    "U7654321.DailyActivity.20261102.20261102.xml": b"<FlexQueryResponse queryName='DailyActivity'>two</FlexQueryResponse>\n",
    "F1234567.TradeConfirms.20261103.20261103.xml": b"<FlexQueryResponse queryName='TradeConfirms'>three</FlexQueryResponse>\n",
}
UNENCRYPTED = ("DU1234567.Activity.20261104.20261104.csv", b"Header,Value\nCash,100\n")


def seed(outgoing: Path, public_file: Path) -> dict[str, bytes]:
    """Encrypted deliveries (binary and armored) plus one plain file; returns name -> server bytes."""
    outgoing.mkdir(parents=True, exist_ok=True)
    delivered = {}
    for i, (name, data) in enumerate(PLAIN.items()):
        suffix = ".asc" if i == 1 else ".pgp"
        encrypt_bytes(public_file, data, outgoing / (name + suffix), armor=suffix == ".asc")
        delivered[name + suffix] = (outgoing / (name + suffix)).read_bytes()
    (outgoing / UNENCRYPTED[0]).write_bytes(UNENCRYPTED[1])
    delivered[UNENCRYPTED[0]] = UNENCRYPTED[1]
    return delivered


def write_config(tmp: Path, source_toml: str, pgp_key, archive_toml: str) -> Path:
    cfg = tmp / "ibreports.toml"
    cfg.write_text(
        f"""{source_toml}
[pgp]
secret_key_file = "{pgp_key.secret_file}"
passphrase = "env:TEST_PGP_PASSPHRASE"

{archive_toml}
"""
    )
    return cfg


@pytest.fixture
def env(monkeypatch, pgp_key, sftp_client_key):
    monkeypatch.setenv("TEST_PGP_PASSPHRASE", pgp_key.passphrase)
    monkeypatch.setenv("TEST_SSH_PASSPHRASE", sftp_client_key[2])


@pytest.fixture
def sftp_setup(tmp_path, sshd_factory, sftp_client_key, pgp_key, env):
    server = sshd_factory([sftp_client_key[1]])
    known_hosts = tmp_path / "known_hosts"
    server.write_known_hosts(known_hosts)
    delivered = seed(server.root / "outgoing", pgp_key.public_file)
    return server, known_hosts, delivered


def local_archive(tmp_path: Path) -> tuple[str, Path]:
    return f'[archive]\nurl = "{tmp_path / "archive"}"\n', tmp_path / "archive"


def archived_files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and not p.relative_to(root).parts[0] == "runs"
    }


def assert_complete(files: dict[str, bytes], delivered: dict[str, bytes], source: str) -> None:
    for name, data in PLAIN.items():
        account, yyyy, mm = name.split(".")[0], name.split(".")[3][:4], name.split(".")[3][4:6]
        assert files[f"statements/{account}/{yyyy}/{mm}/{name}"] == data
    for name, data in delivered.items():
        if name != UNENCRYPTED[0]:
            d = name.split(".")[3]
            assert files[f"encrypted/{source}/{d[:4]}/{d[4:6]}/{name}"] == data
    assert files["statements/DU1234567/2026/11/" + UNENCRYPTED[0]] == UNENCRYPTED[1]
    assert len(files) == len(PLAIN) * 2 + 1


def test_sftp_to_local_archive_then_rerun_writes_nothing(tmp_path, sftp_setup, pgp_key, sftp_client_key, capsys):
    server, known_hosts, delivered = sftp_setup
    archive_toml, root = local_archive(tmp_path)
    cfg = write_config(tmp_path, sftp_toml(server, sftp_client_key, known_hosts), pgp_key, archive_toml)

    assert main(["--config", str(cfg), "fetch"]) == 0
    files = archived_files(root)
    assert_complete(files, delivered, "ibkr-sftp")
    for key in files:
        if key.startswith("statements/"):
            assert (root / key).stat().st_mode & 0o777 == 0o600
    before = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}
    out = capsys.readouterr().out
    assert "4 archived" in out

    assert main(["--config", str(cfg), "fetch"]) == 0
    after = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}
    new = set(after) - set(before)
    assert all("runs" in p.parts for p in new) and len(new) == 1  # only the second run record
    assert all(after[p] == before[p] for p in before)
    assert "0 archived, 4 already archived" in capsys.readouterr().out


def test_dry_run_writes_nothing(tmp_path, sftp_setup, pgp_key, sftp_client_key, capsys):
    server, known_hosts, _ = sftp_setup
    archive_toml, root = local_archive(tmp_path)
    cfg = write_config(tmp_path, sftp_toml(server, sftp_client_key, known_hosts), pgp_key, archive_toml)
    assert main(["--config", str(cfg), "fetch", "--dry-run"]) == 0
    assert "4 planned" in capsys.readouterr().out
    assert not root.exists() or not any(p.is_file() for p in root.rglob("*"))


def test_since_until_filter_on_statement_date(tmp_path, sftp_setup, pgp_key, sftp_client_key):
    server, known_hosts, _ = sftp_setup
    archive_toml, root = local_archive(tmp_path)
    cfg = write_config(tmp_path, sftp_toml(server, sftp_client_key, known_hosts), pgp_key, archive_toml)
    assert main(["--config", str(cfg), "fetch", "--since", "2026-11-02", "--until", "2026-11-03"]) == 0
    names = sorted(k.rsplit("/", 1)[1] for k in archived_files(root) if k.startswith("statements/"))
    assert names == sorted(n for n in PLAIN if ".20261102." in n or ".20261103." in n)


def test_sftp_to_s3_second_run_adds_no_versions(tmp_path, sftp_setup, pgp_key, sftp_client_key, s3_server, s3_versioned_bucket):
    server, known_hosts, delivered = sftp_setup
    archive_toml = f'[archive]\nurl = "s3://{s3_versioned_bucket}/ib"\nendpoint_url = "{s3_server}"\nregion = "us-east-1"\n'
    cfg = write_config(tmp_path, sftp_toml(server, sftp_client_key, known_hosts), pgp_key, archive_toml)
    s3 = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")

    def objects() -> dict[str, bytes]:
        listing = s3.list_objects_v2(Bucket=s3_versioned_bucket, Prefix="ib/").get("Contents", [])
        return {
            o["Key"][3:]: s3.get_object(Bucket=s3_versioned_bucket, Key=o["Key"])["Body"].read()
            for o in listing if not o["Key"].startswith("ib/runs/")
        }

    def versions() -> int:
        pages = s3.get_paginator("list_object_versions").paginate(Bucket=s3_versioned_bucket, Prefix="ib/")
        return sum(1 for p in pages for v in p.get("Versions", []) if "/runs/" not in v["Key"])

    assert main(["--config", str(cfg), "fetch"]) == 0
    assert_complete(objects(), delivered, "ibkr-sftp")
    count = versions()
    assert count == len(PLAIN) * 2 + 1
    assert main(["--config", str(cfg), "fetch"]) == 0
    assert versions() == count


def test_ftp_to_local_archive(tmp_path, ftp_factory, pgp_key, monkeypatch):
    server = ftp_factory()
    monkeypatch.setenv("TEST_PGP_PASSPHRASE", pgp_key.passphrase)
    monkeypatch.setenv("TEST_FTP_PASSWORD", server.password)
    delivered = seed(server.root / "outgoing", pgp_key.public_file)
    archive_toml, root = local_archive(tmp_path)
    cfg = write_config(tmp_path, ftp_toml(server), pgp_key, archive_toml)
    assert main(["--config", str(cfg), "fetch"]) == 0
    assert_complete(archived_files(root), delivered, "ibkr-ftp")


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
    assert "4 archived" in out and "5 failed" in out
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
    server, known_hosts, _ = sftp_setup
    archive_toml, root = local_archive(tmp_path)
    cfg = write_config(tmp_path, sftp_toml(server, sftp_client_key, known_hosts), pgp_key, archive_toml)
    assert main(["--config", str(cfg), "fetch"]) == 0
    stamp = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file() and "runs" not in p.parts}

    assert main(["--config", str(cfg), "fetch", "--force"]) == 0  # everything re-downloaded and matches
    assert {p: p.stat().st_mtime_ns for p in stamp} == stamp

    victim = root / "statements/U1234567/2026/11/U1234567.DailyActivity.20261101.20261101.xml"
    victim.write_bytes(b"<edited/>")
    capsys.readouterr()
    assert main(["--config", str(cfg), "fetch", "--force"]) == 1
    out = capsys.readouterr().out
    assert "differs from the file on the server" in out and "1 failed" in out
    assert victim.read_bytes() == b"<edited/>"  # reported, never silently rewritten


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
