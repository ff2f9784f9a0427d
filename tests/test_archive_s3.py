"""S3-only behaviour: encryption, stored checksums, metadata, errors, key-backup transfers."""

from __future__ import annotations

import base64
import hashlib
import socket
import stat
from pathlib import Path
from urllib.parse import unquote

import pytest

from ibreports.archive import ObjectInfo, open_archive
from ibreports.archive.s3 import download_file, upload_file
from ibreports.errors import ArchiveError
from tests.fixtures.s3 import iam_enforced, read_only_user, s3_archive_config, s3_test_client


def _staged(tmp_path: Path, data: bytes, name: str = "f") -> tuple[Path, str]:
    path = tmp_path / name
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()


def _b64(sha256_hex: str) -> str:
    return base64.b64encode(bytes.fromhex(sha256_hex)).decode()


def test_objects_are_encrypted_checksummed_and_carry_metadata(s3_server, s3_bucket, tmp_path):
    archive = open_archive(s3_archive_config(s3_server, s3_bucket))
    path, sha = _staged(tmp_path, b"<FlexStatement accountId='U1234567'/>")
    archive.put("statements/a.xml", path, sha, {"source": "ibkr-sftp", "remote-name": "relevé 株式.xml"})
    head = s3_test_client(s3_server).head_object(Bucket=s3_bucket, Key="ib/statements/a.xml", ChecksumMode="ENABLED")
    assert head["ServerSideEncryption"] == "AES256"
    assert head["ChecksumSHA256"] == _b64(sha)
    assert head["Metadata"]["source"] == "ibkr-sftp"
    encoded = head["Metadata"]["remote-name"]
    assert encoded.startswith("utf-8''") and unquote(encoded[7:]) == "relevé 株式.xml"


def test_multipart_objects_and_put_bytes_are_encrypted_too(s3_server, s3_bucket, tmp_path):
    archive = open_archive(s3_archive_config(s3_server, s3_bucket))
    archive.single_put_limit = archive.part_size = 5 * 1024 * 1024  # the S3 minimum part size
    path, sha = _staged(tmp_path, bytes(range(256)) * (48 * 1024))  # 12 MiB: three parts
    assert archive.put("big.zip", path, sha, {"sha256": sha}) is True
    archive.put_bytes("runs/r.json", b"{}", {"kind": "run-record"})
    client = s3_test_client(s3_server)
    big = client.head_object(Bucket=s3_bucket, Key="ib/big.zip")
    assert big["ServerSideEncryption"] == "AES256" and big["Metadata"] == {"sha256": sha}
    assert big["ETag"].strip('"').endswith("-3")  # really a three-part upload
    run = client.head_object(Bucket=s3_bucket, Key="ib/runs/r.json", ChecksumMode="ENABLED")
    assert run["ServerSideEncryption"] == "AES256"
    assert run["ChecksumSHA256"] == _b64(hashlib.sha256(b"{}").hexdigest())
    assert client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []


def test_kms_encryption_names_the_key(s3_server, s3_bucket, tmp_path):
    key_id = s3_test_kms_key(s3_server)
    archive = open_archive(s3_archive_config(s3_server, s3_bucket, server_side_encryption="aws:kms", kms_key_id=key_id))
    path, sha = _staged(tmp_path, b"statement")
    archive.put("a.xml", path, sha, {})
    head = s3_test_client(s3_server).head_object(Bucket=s3_bucket, Key="ib/a.xml")
    assert head["ServerSideEncryption"] == "aws:kms"
    assert key_id in head["SSEKMSKeyId"]


def s3_test_kms_key(endpoint: str) -> str:
    import boto3

    return boto3.session.Session().client("kms", endpoint_url=endpoint, region_name="us-east-1").create_key()["KeyMetadata"]["KeyId"]


def test_inventory_stays_inside_the_prefix_and_paginates(s3_server, s3_bucket, tmp_path):
    client = s3_test_client(s3_server)
    for key in ("ib2/not-mine.xml", "other/x.xml", "ib/", "ib/folder/"):
        client.put_object(Bucket=s3_bucket, Key=key, Body=b"")
    archive = open_archive(s3_archive_config(s3_server, s3_bucket))
    assert archive.inventory() == {}
    for i in range(23):
        client.put_object(Bucket=s3_bucket, Key=f"ib/s/{i:04d}.xml", Body=b"x" * i)
    archive.page_size = 5  # five pages, the last one partial
    assert archive.inventory() == {f"s/{i:04d}.xml": ObjectInfo(f"s/{i:04d}.xml", i) for i in range(23)}
    whole = open_archive(s3_archive_config(s3_server, s3_bucket, prefix=""))
    assert {"ib2/not-mine.xml", "other/x.xml", "ib/s/0000.xml"} <= set(whole.inventory())


def test_description_names_bucket_prefix_and_endpoint(s3_server, s3_bucket):
    archive = open_archive(s3_archive_config(s3_server, s3_bucket, prefix="ib/reports/"))
    assert archive.description == f"s3://{s3_bucket}/ib/reports at {s3_server}"


def test_missing_bucket_is_a_clear_error(s3_server, tmp_path):
    archive = open_archive(s3_archive_config(s3_server, "no-such-bucket-ibr"))
    path, sha = _staged(tmp_path, b"x")
    for call in (archive.inventory, lambda: archive.put("a", path, sha, {}), lambda: archive.put_bytes("a", b"x")):
        with pytest.raises(ArchiveError) as info:
            call()
        assert info.value.message == "Bucket no-such-bucket-ibr does not exist."
        assert "archive.url" in info.value.remedy


def test_unreachable_endpoint_fails_with_a_remedy(s3_server, tmp_path):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = s3_archive_config(f"http://127.0.0.1:{port}", "bucket")
    archive = open_archive(config, quick=True)  # one attempt, as doctor opens it
    with pytest.raises(ArchiveError) as info:
        archive.inventory()
    assert f"127.0.0.1:{port}" in info.value.message
    assert "endpoint_url" in info.value.remedy


def test_missing_credentials_are_named(s3_server, s3_bucket, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(ArchiveError, match="No usable AWS credentials") as info:
        open_archive(s3_archive_config(s3_server, s3_bucket)).inventory()
    assert "AWS_PROFILE" in info.value.remedy
    monkeypatch.setenv("AWS_PROFILE", "no-such-profile")
    with pytest.raises(ArchiveError, match="No usable AWS credentials.*ProfileNotFound"):
        open_archive(s3_archive_config(s3_server, s3_bucket))


def test_access_denied_names_the_missing_permission(s3_server, s3_bucket, tmp_path, monkeypatch):
    creds = read_only_user(s3_server, s3_bucket, monkeypatch)
    archive = open_archive(s3_archive_config(s3_server, s3_bucket))
    path, sha = _staged(tmp_path, b"x")
    with iam_enforced(s3_server):
        assert archive.inventory() == {}
        with pytest.raises(ArchiveError) as info:
            archive.put("a.xml", path, sha, {})
    assert info.value.message == f"Access denied to put s3://{s3_bucket}/ib/a.xml."
    assert "s3:PutObject" in info.value.remedy
    assert creds["SecretAccessKey"] not in str(info.value) and creds["AccessKeyId"] not in str(info.value)


def test_corrupt_stored_object_is_detected_on_get(s3_server, s3_bucket, tmp_path):
    claimed = _b64(hashlib.sha256(b"the real statement").hexdigest())
    s3_test_client(s3_server).put_object(Bucket=s3_bucket, Key="ib/a.xml", Body=b"tampered!",
                                         ChecksumAlgorithm="SHA256", ChecksumSHA256=claimed)
    dest = tmp_path / "out"
    with pytest.raises(ArchiveError, match="does not match the SHA-256"):
        open_archive(s3_archive_config(s3_server, s3_bucket)).get("a.xml", dest)
    assert not dest.exists()


def test_upload_and_download_single_objects_for_key_backup(s3_server, s3_bucket, tmp_path):
    config = s3_archive_config(s3_server, "unused-archive-bucket")
    bundle, sha = _staged(tmp_path, b"encrypted key bundle" * 100, "bundle")
    url = f"s3://{s3_bucket}/backups/keys.bundle"
    upload_file(config, url, bundle)
    upload_file(config, url, bundle)  # a backup may replace the previous one
    head = s3_test_client(s3_server).head_object(Bucket=s3_bucket, Key="backups/keys.bundle", ChecksumMode="ENABLED")
    assert head["ServerSideEncryption"] == "AES256" and head["ChecksumSHA256"] == _b64(sha)
    dest = tmp_path / "restored"
    download_file(config, url, dest)
    assert dest.read_bytes() == bundle.read_bytes()
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600
    for bad in (f"s3://{s3_bucket}", f"s3://{s3_bucket}/", "s3:///x", f"s3://{s3_bucket}/a/../b"):
        with pytest.raises(ArchiveError):
            upload_file(config, bad, bundle)
    with pytest.raises(ArchiveError, match="not in the archive"):
        download_file(config, f"s3://{s3_bucket}/backups/none", tmp_path / "none")
