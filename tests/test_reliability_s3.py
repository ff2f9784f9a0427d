"""S3 trouble: throttling (503 SlowDown) and resets are retried; a bucket that rejects writes fails
the run with the files still on the server and the reason named; a full disk under staging fails
cleanly with nothing lost.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest

from ibreports.archive import open_archive
from ibreports.cli import main
from ibreports.errors import ArchiveError
from tests.faultproxy import FaultProxy, HttpFault
from tests.fixtures.s3 import s3_archive_config, s3_test_client
from tests.reliability import (
    assert_archived_exactly, local_archive_toml, local_objects, s3_archive_toml, s3_objects, seed, sftp_toml,
    write_config,
)


@pytest.fixture
def setup(tmp_path, sshd_factory, sftp_client_key, pgp_key, monkeypatch):
    monkeypatch.setenv("TEST_PGP_PASSPHRASE", pgp_key.passphrase)
    monkeypatch.setenv("TEST_SSH_PASSPHRASE", sftp_client_key[2])
    server = sshd_factory([sftp_client_key[1]])
    delivery = seed(server.root / "outgoing", pgp_key.public_file, "ibkr-sftp", count=4, size=30_000, plain_every=4)
    known_hosts = server.write_known_hosts(tmp_path / "known_hosts")
    return server, delivery, known_hosts


@pytest.fixture
def proxy():
    with FaultProxy(max_seconds=240) as p:
        yield p


def s3_config(tmp_path, setup, sftp_client_key, pgp_key, endpoint: str, bucket: str, **source_options) -> Path:
    server, _, known_hosts = setup
    source = sftp_toml("ibkr-sftp", server.port, server, sftp_client_key, known_hosts, **source_options)
    return write_config(tmp_path, source, pgp_key, s3_archive_toml(endpoint, bucket), tmp_path / "staging")


@pytest.mark.parametrize("fault", [
    HttpFault(status=503, code="SlowDown", times=3),
    HttpFault(status=500, code="InternalError", times=2),
    HttpFault(action="reset", at=0.5, times=2),
    HttpFault(action="drop", at=0.0, times=2),
], ids=["503-slowdown", "500-internal", "reset-mid-body", "drop-before-body"])
def test_throttling_and_resets_are_retried(tmp_path, setup, sftp_client_key, pgp_key, proxy, s3_server,
                                           s3_versioned_bucket, fault):
    route = proxy.route(int(s3_server.rsplit(":", 1)[1]))
    route.http.append(fault)
    cfg = s3_config(tmp_path, setup, sftp_client_key, pgp_key, f"http://127.0.0.1:{route.port}", s3_versioned_bucket)
    assert main(["--config", str(cfg), "fetch"]) == 0
    assert fault.fired == fault.times
    client = s3_test_client(s3_server)
    expected = setup[1].expected()
    assert_archived_exactly(s3_objects(client, s3_versioned_bucket), expected)
    versions = client.list_object_versions(Bucket=s3_versioned_bucket).get("Versions", [])
    assert len([v for v in versions if "/runs/" not in v["Key"]]) == len(expected)


def test_bucket_rejecting_writes_fails_and_keeps_the_files_on_the_server(
        tmp_path, setup, sftp_client_key, pgp_key, proxy, s3_server, s3_bucket, capsys):
    server, delivery, _ = setup
    route = proxy.route(int(s3_server.rsplit(":", 1)[1]))
    route.http.append(HttpFault(status=403, code="AccessDenied", times=None))  # every PUT, run record included
    cfg = s3_config(tmp_path, setup, sftp_client_key, pgp_key, f"http://127.0.0.1:{route.port}", s3_bucket,
                    delete_after_archive=True)
    code = main(["--config", str(cfg), "fetch"])
    captured = capsys.readouterr()
    assert code == 1
    assert "Access denied" in captured.out + captured.err and "s3:PutObject" in captured.out + captured.err
    assert sorted(p.name for p in (server.root / "outgoing").iterdir()) == sorted(delivery.files)  # nothing deleted
    assert s3_objects(s3_test_client(s3_server), s3_bucket) == {}
    assert list((tmp_path / "staging").iterdir()) == []


def test_failed_multipart_upload_is_aborted(tmp_path, proxy, s3_server, s3_bucket):
    """Parts are billed until aborted: a part the store refuses ends the upload, nothing left behind.

    A process killed with -9 cannot abort; for that, a bucket lifecycle rule
    (AbortIncompleteMultipartUpload) is the remedy (docs/reliability.md).
    """
    route = proxy.route(int(s3_server.rsplit(":", 1)[1]))
    refuse = HttpFault(status=403, code="AccessDenied", path_contains=b"partNumber=2", times=None)
    route.http.append(refuse)
    archive = open_archive(s3_archive_config(f"http://127.0.0.1:{route.port}", s3_bucket))
    archive.single_put_limit = archive.part_size = 5 * 1024 * 1024  # the S3 minimum part size
    path = tmp_path / "big.zip"
    path.write_bytes(os.urandom(11 * 1024 * 1024))  # three parts
    with pytest.raises(ArchiveError, match="(?i)access denied"):
        archive.put("statements/big.zip", path, hashlib.sha256(path.read_bytes()).hexdigest(), {})
    assert refuse.fired >= 1
    client = s3_test_client(s3_server)
    assert client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []
    assert s3_objects(client, s3_bucket) == {}


def _mount_tmpfs(folder: Path, size: str) -> bool:
    folder.mkdir()
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(folder)],
                          capture_output=True).returncode == 0


def test_full_disk_under_staging_fails_cleanly_nothing_lost(tmp_path, setup, sftp_client_key, pgp_key, capsys):
    server, delivery, known_hosts = setup
    big = "U7777777.DailyActivity.20261120.20261120.csv"
    (server.root / "outgoing" / big).write_bytes(os.urandom(3 << 20))  # does not fit in the 2 MB staging disk
    staging = tmp_path / "staging"
    source = sftp_toml("ibkr-sftp", server.port, server, sftp_client_key, known_hosts, delete_after_archive=True)
    cfg = write_config(tmp_path, source, pgp_key, local_archive_toml(tmp_path / "archive"), staging, workers=1)
    # A real ENOSPC needs a small file system: tmpfs when we may mount (root), else a file-size limit (EFBIG).
    mounted = _mount_tmpfs(staging, "2m")
    try:
        if mounted:
            code = main(["--config", str(cfg), "fetch"])
            out = capsys.readouterr().out
        else:
            import resource
            import sys
            proc = subprocess.run(
                [sys.executable, "-c", "import signal; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
                 "from ibreports.cli import run; run()", "--config", str(cfg), "fetch"],
                capture_output=True, env=dict(os.environ),
                preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (2 << 20, 2 << 20)))
            code, out = proc.returncode, proc.stdout.decode()
        assert code == 1
        assert ("No space left on device" if mounted else "File too large") in out
        objects, temps = local_objects(tmp_path / "archive")
        expected = delivery.expected()
        assert_archived_exactly(objects, expected)  # the others archived, nothing partial
        assert temps == []
        assert (server.root / "outgoing" / big).exists()  # the failed file stays on the server
        assert not any(p.name in delivery.files for p in (server.root / "outgoing").iterdir())  # archived ones deleted
        assert list(staging.iterdir()) == []
    finally:
        if mounted:
            subprocess.run(["umount", str(staging)], capture_output=True)
