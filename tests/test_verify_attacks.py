"""`ibreports verify` against an attacker who can write to the archive but not to its ledger's history:
statements fetched for real (sshd, gpg), then replaced, edited, planted, deleted or stripped of their
hash record, in a local folder and in moto's S3 (versioned, unversioned, Object Lock)."""

from __future__ import annotations

import json
import os
import subprocess
import uuid

import pytest

from ibreports.cli import main
from tests.configs import sftp_toml
from tests.fixtures.s3 import iam_enforced, read_only_user, s3_test_client
from tests.helpers import PLAIN, local_archive, s3_archive, write_config

NAME = "U1234567.DailyActivity.20261101.20261101.xml"
KEY = f"statements/U1234567/2026/11/{NAME}"
ORIGINAL = f"encrypted/ibkr-sftp/2026/11/{NAME}.pgp"


def verify(cfg, capsys, *extra) -> tuple[int, dict]:
    rc = main(["--config", str(cfg), "verify", "--json", *extra])
    out = capsys.readouterr().out
    return rc, json.loads(out)


def verify_text(cfg, capsys) -> tuple[int, str]:
    rc = main(["--config", str(cfg), "verify"])
    return rc, capsys.readouterr().out


@pytest.fixture
def fetched_local(tmp_path, sftp_setup, sftp_client_key, pgp_key, capsys):
    """(config, archive folder) after a real fetch; verify passes on it."""
    server, known_hosts, _ = sftp_setup
    archive_toml, root = local_archive(tmp_path)
    cfg = write_config(tmp_path, sftp_toml(server, sftp_client_key, known_hosts), pgp_key, archive_toml)
    assert main(["--config", str(cfg), "fetch"]) == 0
    capsys.readouterr()
    rc, doc = verify(cfg, capsys)
    assert rc == 0 and doc["ok"] == doc["checked"] > 0 and doc["ledger"]["recorded"] == doc["checked"], doc
    return cfg, root


def test_local_replace_by_rename_is_named_replaced(fetched_local, capsys):
    cfg, root = fetched_local
    path = root / KEY
    tmp = path.with_name(".edit")
    tmp.write_bytes(PLAIN[NAME].replace(b"one", b"two"))
    os.rename(tmp, path)  # a new file in its place: no recorded attribute, other content
    rc, doc = verify(cfg, capsys)
    assert rc == 1 and doc["replaced"] == [KEY] and doc["ok"] == doc["checked"] - 1
    rc, out = verify_text(cfg, capsys)
    assert rc == 1 and f"REPLACED {KEY}: a new object without the recorded SHA-256 took its place" in out


def test_local_sed_in_place_is_caught(fetched_local, capsys):
    cfg, root = fetched_local
    subprocess.run(["sed", "-i", "s/one/ONE/", str(root / KEY)], check=True)
    rc, doc = verify(cfg, capsys)
    assert rc == 1 and doc["replaced"] == [KEY]  # GNU sed writes a new file and renames it: the attribute is gone
    assert (root / KEY).read_bytes() != PLAIN[NAME]


def test_local_same_content_without_its_attribute_is_unrecorded_never_a_pass(fetched_local, capsys):
    cfg, root = fetched_local
    os.removexattr(root / KEY, "user.ibreports.sha256")
    rc, doc = verify(cfg, capsys)
    assert rc == 1 and doc["unrecorded"] == [KEY]


def test_local_planted_deleted_and_non_utf8_names(fetched_local, capsys):
    cfg, root = fetched_local
    planted = root / "statements/U1234567/2026/11/U1234567.DailyActivity.20261105.20261105.xml"
    planted.write_bytes(b"<FlexQueryResponse>forged</FlexQueryResponse>\n")
    os.setxattr(planted, "user.ibreports.sha256", b"0" * 64)  # an attribute alone proves nothing
    (root / ORIGINAL).unlink()
    odd = os.fsencode(str(root / "statements/U1234567/2026/11")) + b"/bad\xff\xfe.xml"
    with open(odd, "wb") as fh:
        fh.write(b"junk")
    link = "statements/U1234567/2026/11/U1234567.DailyActivity.20261106.20261106.xml"
    os.symlink("/etc/hostname", root / link)  # never followed, never counted as archived: named
    rc, doc = verify(cfg, capsys)
    bad = "statements/U1234567/2026/11/bad\\xff\\xfe.xml"
    assert rc == 1 and doc["missing"] == [ORIGINAL]
    assert doc["planted"] == [str(planted.relative_to(root)), link, bad]
    rc, out = verify_text(cfg, capsys)
    assert rc == 1 and f"PLANTED  {bad}: no run record or resolution knows this object" in out
    assert f"MISSING  {ORIGINAL}: the ledger says it was archived" in out
    assert f"PLANTED  {link}: no run record or resolution knows this object: something other than ibreports put it " \
           "there (is a symbolic link)" in out


@pytest.fixture
def fetched_s3(tmp_path, sftp_setup, sftp_client_key, pgp_key, s3_server, capsys):
    """make(bucket) -> config after a real fetch into s3://bucket/ib; verify passes on it."""
    server, known_hosts, _ = sftp_setup

    def make(bucket: str):
        cfg = write_config(tmp_path, sftp_toml(server, sftp_client_key, known_hosts), pgp_key,
                           s3_archive(s3_server, bucket))
        assert main(["--config", str(cfg), "fetch"]) == 0
        capsys.readouterr()
        rc, doc = verify(cfg, capsys)
        assert rc == 0 and doc["ok"] == doc["checked"] > 0 and doc["notes"] == [], doc
        return cfg

    return make


def locked_bucket(endpoint: str) -> str:
    name = f"ibr-lock-{uuid.uuid4().hex[:16]}"
    s3_test_client(endpoint).create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
    return name


@pytest.mark.parametrize("bucket_kind", ["versioned", "object-lock"])
def test_s3_plain_put_over_a_statement_is_a_replacement_and_its_original_version_is_named(
        bucket_kind, fetched_s3, s3_server, s3_versioned_bucket, capsys):
    bucket = s3_versioned_bucket if bucket_kind == "versioned" else locked_bucket(s3_server)
    cfg = fetched_s3(bucket)
    client = s3_test_client(s3_server)
    client.put_object(Bucket=bucket, Key=f"ib/{KEY}", Body=PLAIN[NAME].replace(b"one", b"two"))
    rc, doc = verify(cfg, capsys)
    assert rc == 1 and doc["replaced"] == [KEY]
    versions = client.list_object_versions(Bucket=bucket, Prefix=f"ib/{KEY}")["Versions"]
    [first] = [v["VersionId"] for v in versions if not v["IsLatest"]]
    [newer] = [v["VersionId"] for v in versions if v["IsLatest"]]
    rc, out = verify_text(cfg, capsys)
    assert rc == 1 and f"REPLACED {KEY}: 2 versions: it was overwritten after ibreports wrote it" in out
    assert f"its oldest version {first} is the original and matches the ledger" in out
    assert f"aws s3api delete-object --bucket {bucket} --key 'ib/{KEY}' --version-id {newer}" in out
    client.delete_object(Bucket=bucket, Key=f"ib/{KEY}", VersionId=newer)  # as the remedy says
    assert verify(cfg, capsys)[0] == 0  # the original alone again
    # Even the same bytes again, with the metadata copied: a second version is a replacement.
    head = client.head_object(Bucket=bucket, Key=f"ib/{ORIGINAL}")
    body = client.get_object(Bucket=bucket, Key=f"ib/{ORIGINAL}")["Body"].read()
    client.put_object(Bucket=bucket, Key=f"ib/{ORIGINAL}", Body=body, Metadata=head["Metadata"])
    rc, doc = verify(cfg, capsys)
    assert rc == 1 and doc["replaced"] == [ORIGINAL]


def test_s3_unversioned_put_without_metadata_is_caught(fetched_s3, s3_server, s3_bucket, capsys):
    cfg = fetched_s3(s3_bucket)
    client = s3_test_client(s3_server)
    client.put_object(Bucket=s3_bucket, Key=f"ib/{KEY}", Body=PLAIN[NAME].replace(b"one", b"two"))
    body = client.get_object(Bucket=s3_bucket, Key=f"ib/{ORIGINAL}")["Body"].read()
    client.put_object(Bucket=s3_bucket, Key=f"ib/{ORIGINAL}", Body=body)  # same bytes, metadata lost
    rc, doc = verify(cfg, capsys)
    assert rc == 1 and doc["replaced"] == [KEY] and doc["unrecorded"] == [ORIGINAL]


def test_s3_planted_and_deleted_objects(fetched_s3, s3_server, s3_versioned_bucket, capsys):
    cfg = fetched_s3(s3_versioned_bucket)
    client = s3_test_client(s3_server)
    planted = "statements/U1234567/2026/11/U1234567.DailyActivity.20261105.20261105.xml"
    client.put_object(Bucket=s3_versioned_bucket, Key=f"ib/{planted}", Body=b"<forged/>",
                      Metadata={"sha256": "0" * 64})
    client.delete_object(Bucket=s3_versioned_bucket, Key=f"ib/{ORIGINAL}")  # a delete marker on top
    rc, doc = verify(cfg, capsys)
    assert rc == 1 and doc["planted"] == [planted] and doc["missing"] == [ORIGINAL]
    rc, out = verify_text(cfg, capsys)
    assert f"MISSING  {ORIGINAL}: the ledger says it was archived, the archive does not hold it (deleted" in out


def test_s3_a_rewritten_run_record_is_a_replacement(fetched_s3, s3_server, s3_versioned_bucket, capsys):
    cfg = fetched_s3(s3_versioned_bucket)
    client = s3_test_client(s3_server)
    [record] = [o["Key"] for o in client.list_objects_v2(Bucket=s3_versioned_bucket, Prefix="ib/runs/")["Contents"]]
    client.put_object(Bucket=s3_versioned_bucket, Key=record, Body=b'{"written": {}}')  # the ledger forged
    rc, doc = verify(cfg, capsys)
    # Its (forged) latest version knows nothing, so every object is now unknown: all named, none passes.
    assert rc == 1 and doc["replaced"] == [record[3:]] and KEY in doc["planted"] and doc["ok"] == 0


def test_objects_of_a_run_without_its_record_are_planted_until_fetch_force_confirms_them(fetched_local, capsys):
    """A run killed before it wrote its run record (here: the record removed) left objects no ledger knows."""
    cfg, root = fetched_local
    for record in (root / "runs").rglob("*.json"):
        record.unlink()
    rc, doc = verify(cfg, capsys)
    assert rc == 1 and KEY in doc["planted"] and doc["ok"] == 0 and doc["ledger"]["runs"] == 0
    assert main(["--config", str(cfg), "fetch", "--force"]) == 0  # compared with fresh deliveries, rewrites nothing
    capsys.readouterr()
    rc, doc = verify(cfg, capsys)
    assert rc == 0 and doc["planted"] == [] and doc["ok"] == doc["checked"] > 0


def test_s3_without_permission_to_list_versions_verify_says_so_and_still_catches_an_overwrite(
        fetched_s3, s3_server, s3_versioned_bucket, monkeypatch, capsys):
    cfg = fetched_s3(s3_versioned_bucket)
    s3_test_client(s3_server).put_object(Bucket=s3_versioned_bucket, Key=f"ib/{KEY}", Body=b"<overwritten/>")
    read_only_user(s3_server, s3_versioned_bucket, monkeypatch)  # s3:ListBucket and s3:GetObject only
    with iam_enforced(s3_server):
        rc, doc = verify(cfg, capsys)
    assert rc == 1 and doc["replaced"] == [KEY]  # by its content and lost metadata
    assert doc["notes"] == ["the bucket's version history could not be listed (s3:ListBucketVersions): a plain "
                            "overwrite is found by its content and metadata only"]
