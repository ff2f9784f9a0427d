"""S3 Object Lock on every archive write (moto's ThreadedMotoServer over HTTP), and the local archive's
read-only statements."""

from __future__ import annotations

import json
import os
import stat
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from ibreports.archive.s3 import S3Archive
from ibreports.cli import main
from ibreports.config import ObjectLock
from ibreports.files import sha256_file
from tests.configs import sftp_toml
from tests.fixtures.s3 import s3_archive_config, s3_test_client
from tests.fixtures.pgpkeys import encrypt_bytes

STATEMENT = b"<FlexQueryResponse queryName='DailyActivity'>locked</FlexQueryResponse>\n"
NAME = "U1234567.DailyActivity.20261101.20261101.xml"


def locked_bucket(endpoint: str, default: dict | None = None) -> str:
    name = f"ibr-lock-{uuid.uuid4().hex[:16]}"
    client = s3_test_client(endpoint)
    client.create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)  # versioning comes with it
    if default:
        client.put_object_lock_configuration(Bucket=name, ObjectLockConfiguration={
            "ObjectLockEnabled": "Enabled", "Rule": {"DefaultRetention": default}})
    return name


def assert_retained(client, bucket: str, key: str, mode: str, days: int, before: datetime, after: datetime) -> str:
    head = client.head_object(Bucket=bucket, Key=key)
    assert head["ObjectLockMode"] == mode
    until = head["ObjectLockRetainUntilDate"]
    # Whole seconds, rounded up: never shorter than configured, at most a second longer.
    assert before + timedelta(days=days) <= until <= after + timedelta(days=days, seconds=1)
    return head["VersionId"]


def staged(tmp_path: Path, data: bytes, name: str = "staged") -> tuple[Path, str]:
    path = tmp_path / name
    path.write_bytes(data)
    return path, sha256_file(path)


@pytest.mark.parametrize("mode", ["COMPLIANCE", "GOVERNANCE"])
def test_every_write_carries_the_configured_retention_and_cannot_be_deleted_or_overwritten(s3_server, tmp_path, mode):
    bucket = locked_bucket(s3_server)
    client = s3_test_client(s3_server)
    archive = S3Archive(s3_archive_config(s3_server, bucket, object_lock=ObjectLock(mode, 30)))
    archive.single_put_limit = archive.part_size = 5 << 20  # the big file goes multipart
    small, small_sha = staged(tmp_path, STATEMENT, "small")
    big, big_sha = staged(tmp_path, os.urandom(6 << 20), "big")
    sent: list[dict] = []  # what went over the wire (moto keeps no lock from CreateMultipartUpload)
    archive.client.meta.events.register("before-call.s3.CreateMultipartUpload",
                                        lambda params, **_: sent.append(dict(params["headers"])))
    before = datetime.now(timezone.utc)
    assert archive.put("statements/U1234567/2026/11/" + NAME, small, small_sha, {"source": "s"}, private=True)
    assert archive.put("encrypted/s/2026/11/big.pgp", big, big_sha, {})
    archive.put_bytes("runs/2026/11/r.json", b"{}", {"kind": "run-record"})
    after = datetime.now(timezone.utc)
    [headers] = sent
    assert headers["x-amz-object-lock-mode"] == mode and headers["x-amz-checksum-algorithm"] == "SHA256"
    until = datetime.fromisoformat(headers["x-amz-object-lock-retain-until-date"].replace("Z", "+00:00"))
    assert before + timedelta(days=30) <= until <= after + timedelta(days=30, seconds=1)
    for key in ("statements/U1234567/2026/11/" + NAME, "runs/2026/11/r.json"):
        version = assert_retained(client, bucket, f"ib/{key}", mode, 30, before, after)
        with pytest.raises(ClientError) as denied:
            client.delete_object(Bucket=bucket, Key=f"ib/{key}", VersionId=version)
        assert denied.value.response["Error"]["Code"] == "AccessDenied"
    key = "ib/statements/U1234567/2026/11/" + NAME
    first = client.head_object(Bucket=bucket, Key=key)["VersionId"]
    # ibreports itself never overwrites: a second put of the key is "already there".
    assert archive.put("statements/U1234567/2026/11/" + NAME, big, big_sha, {}) is False
    # A plain PUT with the same credentials only adds a version; the locked one is intact.
    client.put_object(Bucket=bucket, Key=key, Body=b"tampered")
    assert client.get_object(Bucket=bucket, Key=key, VersionId=first)["Body"].read() == STATEMENT
    head = client.head_object(Bucket=bucket, Key=key, VersionId=first)
    assert head["Metadata"]["sha256"] == small_sha


def test_a_bucket_without_object_lock_fails_fetch_before_any_download(s3_server, s3_bucket, tmp_path, sftp_env, capsys):
    server, config = sftp_env(f"s3://{s3_bucket}/ib", s3_server)
    assert main(["--config", str(config), "fetch"]) == 2
    err = capsys.readouterr().err
    assert f"bucket {s3_bucket} does not have Object Lock enabled" in err and "put-object-lock-configuration" in err
    assert (server.root / "outgoing" / NAME).exists()  # nothing fetched, nothing deleted
    assert s3_test_client(s3_server).list_objects_v2(Bucket=s3_bucket).get("KeyCount") == 0


def test_fetch_with_delete_after_archive_and_force_on_a_locked_bucket(s3_server, tmp_path, sftp_env, pgp_key, capsys):
    bucket = locked_bucket(s3_server)
    client = s3_test_client(s3_server)
    server, config = sftp_env(f"s3://{bucket}/ib", s3_server, delete_after_archive=True)
    outgoing = server.root / "outgoing"
    encrypt_bytes(pgp_key.public_file, STATEMENT, outgoing / (NAME + ".pgp"))
    delivered = (outgoing / (NAME + ".pgp")).read_bytes()
    before = datetime.now(timezone.utc)
    assert main(["--config", str(config), "fetch"]) == 0
    after = datetime.now(timezone.utc)
    assert not (outgoing / NAME).exists() and not (outgoing / (NAME + ".pgp")).exists()  # deleted once archived
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]]
    assert len([k for k in keys if k.startswith("ib/runs/")]) == 1
    assert {k for k in keys if not k.startswith("ib/runs/")} == {
        f"ib/statements/U1234567/2026/11/{NAME}", f"ib/encrypted/ibkr-sftp/2026/11/{NAME}.pgp"}
    for key in keys:
        assert_retained(client, bucket, key, "GOVERNANCE", 7, before, after)
    capsys.readouterr()
    # The server offers the file again: --force compares with the locked objects, rewrites nothing.
    (outgoing / (NAME + ".pgp")).write_bytes(delivered)
    assert main(["--config", str(config), "fetch", "--force"]) == 0
    assert "1 verified" in capsys.readouterr().out
    versions = client.list_object_versions(Bucket=bucket, Prefix="ib/statements/")["Versions"]
    assert len(versions) == 1
    capsys.readouterr()
    assert main(["--config", str(config), "verify", "--json"]) == 0  # the locked objects read back intact
    doc = json.loads(capsys.readouterr().out)
    assert (doc["checked"], doc["ok"], doc["missing"]) == (2, 2, [])


def test_doctor_reports_the_lock_and_keeps_its_probe(s3_server, tmp_path, sftp_env, capsys):
    bucket = locked_bucket(s3_server, {"Mode": "GOVERNANCE", "Days": 1})
    _server, config = sftp_env(f"s3://{bucket}/ib", s3_server)
    assert main(["--config", str(config), "doctor", "--json"]) == 0
    archive = {s["name"]: s for s in json.loads(capsys.readouterr().out)["sections"]}["archive"]
    steps = {s["name"]: s for s in archive["steps"]}
    assert steps["object lock"]["status"] == "ok"
    assert "Object Lock enabled, versioning on, default retention GOVERNANCE 1 days" in steps["object lock"]["detail"]
    assert "every object is written with GOVERNANCE retention for 7 days" in steps["object lock"]["detail"]
    assert (steps["write"]["status"], steps["read"]["status"], steps["delete"]["status"]) == ("ok", "ok", "skip")
    assert s3_test_client(s3_server).head_object(Bucket=bucket, Key="ib/doctor/probe")["ContentLength"] > 0


@pytest.mark.parametrize("problem", ["stricter-default", "no-lock"])
def test_doctor_fails_on_a_mismatch(s3_server, s3_bucket, tmp_path, sftp_env, capsys, problem):
    bucket = locked_bucket(s3_server, {"Mode": "COMPLIANCE", "Days": 30}) if problem == "stricter-default" else s3_bucket
    _server, config = sftp_env(f"s3://{bucket}/ib", s3_server)
    assert main(["--config", str(config), "doctor", "--json"]) == 2
    archive = {s["name"]: s for s in json.loads(capsys.readouterr().out)["sections"]}["archive"]
    steps = {s["name"]: s for s in archive["steps"]}
    assert steps["object lock"]["status"] == "FAIL"
    expected = "weaker than the default retention" if problem == "stricter-default" else "does not have Object Lock enabled"
    assert expected in steps["object lock"]["cause"]
    assert steps["write"]["status"] == "skip"  # nothing written on a bucket that does not match


def test_object_lock_on_a_local_archive_is_unsupported(tmp_path, sftp_env, capsys):
    _server, config = sftp_env(str(tmp_path / "archive"), None)
    for command in (["fetch"], ["status"], ["doctor"]):
        assert main(["--config", str(config), *command]) == 2, command
        out = capsys.readouterr()
        assert "archive.object_lock is unsupported" in out.err + out.out
    assert not (tmp_path / "archive" / "statements").exists()


def test_local_statements_are_read_only_with_their_sha256_recorded(tmp_path, sftp_env):
    from ibreports.archive.local import LocalArchive, recorded_sha256
    from ibreports.config import ArchiveConfig

    archive = LocalArchive(ArchiveConfig(url=str(tmp_path / "archive")))
    path, sha = staged(tmp_path, STATEMENT)
    assert archive.put("statements/U1/2026/11/a.xml", path, None, {}, private=True)
    assert archive.put("encrypted/s/2026/11/a.xml.pgp", path, sha, {})
    for key, mode in (("statements/U1/2026/11/a.xml", 0o400), ("encrypted/s/2026/11/a.xml.pgp", 0o400)):
        file = tmp_path / "archive" / key
        assert stat.S_IMODE(file.stat().st_mode) == mode
        assert recorded_sha256(file) == sha
    assert archive.put("statements/U1/2026/11/a.xml", path, sha, {}, private=True) is False  # never rewritten


@pytest.fixture
def sftp_env(tmp_path, sshd_factory, sftp_client_key, pgp_key, monkeypatch):
    """make(archive_url, endpoint, **source overrides) -> (server, config path) with object_lock GOVERNANCE 7 days
    and one plain statement on the server."""
    monkeypatch.setenv("TEST_PGP_PASSPHRASE", pgp_key.passphrase)
    monkeypatch.setenv("TEST_SSH_PASSPHRASE", sftp_client_key[2])
    server = sshd_factory([sftp_client_key[1]])
    known_hosts = server.write_known_hosts(tmp_path / "known_hosts")

    def make(url: str, endpoint: str | None, **overrides):
        (server.root / "outgoing").mkdir(exist_ok=True)
        if not overrides.get("delete_after_archive"):
            (server.root / "outgoing" / NAME).write_bytes(STATEMENT)
        s3 = f'endpoint_url = "{endpoint}"\nregion = "us-east-1"\n' if endpoint else ""
        config = tmp_path / "ibreports.toml"
        config.write_text(sftp_toml(server, sftp_client_key, known_hosts, **overrides) + f"""
[pgp]
secret_key_file = "{pgp_key.secret_file}"
passphrase = "env:TEST_PGP_PASSPHRASE"

[archive]
url = "{url}"
{s3}object_lock = {{ mode = "GOVERNANCE", days = 7 }}
""")
        return server, config

    return make


@pytest.mark.parametrize("value, message", [
    ('"COMPLIANCE"', "'archive.object_lock' must be"),
    ('{ mode = "compliance", days = 7 }', "'archive.object_lock.mode' must be 'COMPLIANCE' or 'GOVERNANCE'"),
    ('{ mode = "GOVERNANCE" }', "'archive.object_lock.days' must be set"),
    ('{ mode = "GOVERNANCE", days = 0 }', "'archive.object_lock.days' must be an integer >= 1"),
    ('{ mode = "GOVERNANCE", days = 7, years = 1 }', "unknown key 'archive.object_lock.years'"),
])
def test_object_lock_settings_are_validated(tmp_path, value, message):
    from ibreports.config import parse_config
    from ibreports.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        parse_config(f'[archive]\nurl = "s3://b/p"\nobject_lock = {value}\n', tmp_path / "ibreports.toml")
    assert message in err.value.message
    lock = parse_config('[archive]\nurl = "s3://b/p"\nobject_lock = { mode = "COMPLIANCE", days = 2190 }\n',
                        tmp_path / "ibreports.toml").archive.object_lock
    assert (lock.mode, lock.days) == ("COMPLIANCE", 2190)
