"""`ibreports verify`: archived objects re-read against the SHA-256 recorded when they were written
(a real local folder and moto's S3 over HTTP)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
from pathlib import Path

import pytest

from ibreports.archive import open_archive
from ibreports.archive.local import SHA256_XATTR
from ibreports.cli import main
from ibreports.config import load_config
from ibreports.report import FileOutcome, RunReport
from tests.fixtures.s3 import s3_test_client

STATEMENT = b"<FlexQueryResponse>statement</FlexQueryResponse>\n"
KEYS = {
    "statements/U1234567/2026/10/U1234567.DailyActivity.20261030.20261030.xml": STATEMENT,
    "statements/U1234567/2026/11/U1234567.DailyActivity.20261102.20261102.xml": STATEMENT + b"2",
    "encrypted/ibkr-sftp/2026/11/U1234567.DailyActivity.20261102.20261102.xml.pgp": b"-----BEGIN PGP MESSAGE-----\n",
}
GONE = "statements/U1234567/2026/11/U1234567.DailyActivity.20261103.20261103.xml"


def write_config(tmp_path: Path, archive_toml: str) -> Path:
    path = tmp_path / "ibreports.toml"
    path.write_text(archive_toml)
    return path


@pytest.fixture(params=["local", "s3"])
def archived(request, tmp_path):
    """(config path, archive, corrupt(key, data), kind) with KEYS archived and a run record naming GONE too."""
    if request.param == "local":
        root = tmp_path / "archive"
        config = write_config(tmp_path, f'[archive]\nurl = "{root}"\n')

        def corrupt(key: str, data: bytes) -> None:
            path = root / key
            os.chmod(path, 0o600)
            path.write_bytes(data)  # same name, same xattr: only the content changed
    else:
        endpoint = request.getfixturevalue("s3_server")
        bucket = request.getfixturevalue("s3_bucket")
        config = write_config(tmp_path, f'[archive]\nurl = "s3://{bucket}/ib"\nendpoint_url = "{endpoint}"\n'
                                        'region = "us-east-1"\n')
        client = s3_test_client(endpoint)

        def corrupt(key: str, data: bytes) -> None:
            old = client.head_object(Bucket=bucket, Key=f"ib/{key}")["Metadata"]
            client.put_object(Bucket=bucket, Key=f"ib/{key}", Body=data, Metadata=old)  # what bit rot or tampering leaves
    archive = open_archive(load_config(config).archive)
    for key, data in KEYS.items():
        staged = tmp_path / "staged"
        staged.write_bytes(data)
        assert archive.put(key, staged, None, {"source": "ibkr-sftp"}, private=key.startswith("statements/"))
        staged.unlink()
    report = RunReport(run_id="20261104T063000Z-abcdef", started="2026-11-04T06:30:00+00:00",
                       written={k: hashlib.sha256(v).hexdigest() for k, v in {**KEYS, GONE: b"gone"}.items()})
    for key in [*KEYS, GONE]:
        report.files.append(FileOutcome("ibkr-sftp", key.rsplit("/", 1)[-1], 1, 0.0, "U1234567", "2026-11-02",
                                        "archived", archive_keys=[key]))
    archive.put_bytes("runs/2026/11/20261104T063000Z-abcdef.json", report.to_record())
    return config, archive, corrupt, request.param


def run_verify(config: Path, capsys, *extra: str) -> tuple[int, dict]:
    rc = main(["--config", str(config), "verify", "--json", *extra])
    captured = capsys.readouterr()
    assert captured.out.startswith("{"), captured.err
    return rc, json.loads(captured.out)


def test_intact_archive_verifies_and_a_missing_object_is_reported(archived, capsys):
    config, _archive, _corrupt, _kind = archived
    rc, doc = run_verify(config, capsys)
    assert (doc["checked"], doc["ok"], doc["mismatch"], doc["unrecorded"]) == (3, 3, [], [])
    assert doc["missing"] == [GONE] and rc == 1
    assert doc["bytes"] == sum(len(v) for v in KEYS.values())


def test_changed_content_is_a_mismatch_and_since_limits_the_check(archived, capsys):
    config, _archive, corrupt, _kind = archived
    october, november = list(KEYS)[0], list(KEYS)[1]
    corrupt(october, STATEMENT.replace(b"statement", b"tampered!"))
    rc, doc = run_verify(config, capsys)
    assert rc == 1 and doc["mismatch"] == [october] and doc["ok"] == 2
    rc, doc = run_verify(config, capsys, "--since", "2026-11-03")
    assert doc["checked"] == 0 and doc["missing"] == [GONE] and rc == 1  # Nov 2 is before the 3rd
    rc, doc = run_verify(config, capsys, "--since", "2026-11-01")
    assert doc["mismatch"] == [] and doc["checked"] == 2
    corrupt(november, b"")
    rc = main(["--config", str(config), "verify"])
    out = capsys.readouterr().out
    assert rc == 1 and f"MISMATCH {november}" in out and f"MISSING  {GONE}" in out
    assert "3 object(s), " in out and "1 ok, 2 mismatch, 0 replaced, 0 unrecorded, 0 planted, 1 missing" in out


def test_an_object_no_record_knows_is_planted_and_a_lost_attribute_is_unrecorded(tmp_path, capsys):
    root = tmp_path / "archive"
    config = write_config(tmp_path, f'[archive]\nurl = "{root}"\n')
    (root / "statements/U1/2026/11").mkdir(parents=True)
    (root / "statements/U1/2026/11/copied.xml").write_bytes(STATEMENT)  # e.g. copied in by hand
    rc, doc = run_verify(config, capsys)
    assert rc == 1 and doc["planted"] == ["statements/U1/2026/11/copied.xml"] and doc["ok"] == 0
    # An old run record (before the ledger) names the key without a hash: its attribute is what counts.
    report = RunReport(run_id="20261104T063000Z-000001", started="2026-11-04T06:30:00+00:00")
    report.files.append(FileOutcome("s", "copied.xml", 1, 0.0, "U1", "2026-11-02", "archived",
                                    archive_keys=["statements/U1/2026/11/copied.xml"]))
    open_archive(load_config(config).archive).put_bytes("runs/2026/11/20261104T063000Z-000001.json", report.to_record())
    rc, doc = run_verify(config, capsys)
    assert rc == 1 and doc["unrecorded"] == ["statements/U1/2026/11/copied.xml"] and doc["planted"] == []
    os.setxattr(root / "statements/U1/2026/11/copied.xml", SHA256_XATTR, hashlib.sha256(STATEMENT).hexdigest().encode())
    rc, doc = run_verify(config, capsys)
    assert rc == 0 and doc["ok"] == 1


def test_s3_objects_from_before_the_metadata_verify_by_their_stored_checksum(s3_server, s3_bucket, tmp_path, capsys):
    config = write_config(tmp_path, f'[archive]\nurl = "s3://{s3_bucket}"\nendpoint_url = "{s3_server}"\n'
                                    'region = "us-east-1"\n')
    client = s3_test_client(s3_server)
    client.put_object(Bucket=s3_bucket, Key="statements/U1/2026/11/single.xml", Body=STATEMENT, ChecksumAlgorithm="SHA256")
    # A multipart object: its checksum is the checksum of its parts' checksums (16 MiB parts, as ibreports uploads).
    big = os.urandom((16 << 20) + 1000)
    key = "encrypted/s/2026/11/big.pgp"
    upload = client.create_multipart_upload(Bucket=s3_bucket, Key=key, ChecksumAlgorithm="SHA256")["UploadId"]
    parts = []
    for number, chunk in enumerate((big[: 16 << 20], big[16 << 20:]), start=1):
        reply = client.upload_part(Bucket=s3_bucket, Key=key, UploadId=upload, PartNumber=number, Body=chunk,
                                   ChecksumAlgorithm="SHA256")
        parts.append({"PartNumber": number, "ETag": reply["ETag"], "ChecksumSHA256": reply["ChecksumSHA256"]})
    client.complete_multipart_upload(Bucket=s3_bucket, Key=key, UploadId=upload, MultipartUpload={"Parts": parts})
    rc, doc = run_verify(config, capsys)
    assert rc == 1 and doc["planted"] == [key, "statements/U1/2026/11/single.xml"]  # no record knows them
    report = RunReport(run_id="20261104T063000Z-000001", started="2026-11-04T06:30:00+00:00")  # before the ledger
    report.files.append(FileOutcome("s", "x", 1, 0.0, "U1", "2026-11-02", "archived",
                                    archive_keys=["statements/U1/2026/11/single.xml", key]))
    client.put_object(Bucket=s3_bucket, Key="runs/2026/11/20261104T063000Z-000001.json", Body=report.to_record())
    rc, doc = run_verify(config, capsys)
    assert rc == 0 and doc["ok"] == 2 and doc["unrecorded"] == [] and doc["mismatch"] == []


@pytest.mark.parametrize("command", ["verify", "coverage"])
def test_an_unreachable_archive_endpoint_exits_3_as_the_help_says(command, s3_server, tmp_path, capsys):
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
    try:
        config = write_config(tmp_path, f'[archive]\nurl = "s3://b/ib"\nendpoint_url = '
                                        f'"http://127.0.0.1:{closed.getsockname()[1]}"\nregion = "us-east-1"\n')
        assert main(["--config", str(config), command]) == 3
    finally:
        closed.close()
    assert "Could not reach the S3 endpoint" in capsys.readouterr().err
    assert main([command, "--help"]) == 0
    assert "3 archive endpoint unreachable" in capsys.readouterr().out


def test_a_delivery_kept_apart_before_conflict_records_is_known_by_its_run_record(tmp_path, capsys):
    root = tmp_path / "archive"
    config = write_config(tmp_path, f'[archive]\nurl = "{root}"\n')
    archive = open_archive(load_config(config).archive)
    kept = "conflicts/ibkr-sftp/2026/11/U1.DailyActivity.20261102.20261102.xml.pgp.0123456789abcdef"
    staged = tmp_path / "staged"
    staged.write_bytes(b"-----BEGIN PGP MESSAGE-----\nother\n")
    assert archive.put(kept, staged, None, {})
    report = RunReport(run_id="20261104T063000Z-000002", started="2026-11-04T06:30:00+00:00")  # no `written`
    report.files.append(FileOutcome("ibkr-sftp", "U1.DailyActivity.20261102.20261102.xml.pgp", 1, 0.0, "U1",
                                    "2026-11-02", "failed", code="conflict", archive_keys=[kept]))
    archive.put_bytes("runs/2026/11/20261104T063000Z-000002.json", report.to_record())
    rc, doc = run_verify(config, capsys)
    assert rc == 0 and doc["ok"] == 1 and doc["planted"] == [] and doc["conflicts"] == []  # no record: not open
