"""Two `ibreports fetch` runs at the same time on the same archive (local folder, versioned S3 bucket):
no duplicate objects, no corruption, both exit cleanly.
"""

from __future__ import annotations

import re
import subprocess
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.fixtures.s3 import s3_test_client
from tests.reliability import (
    assert_archived_exactly, cli_env, local_archive_toml, local_objects, s3_archive_toml, s3_objects, seed,
    sftp_toml, start_cli, write_config,
)

RUNS = 2


def finish(proc: subprocess.Popen, timeout: float = 120) -> tuple[int, bytes, bytes]:
    """(exit code, stdout, stderr); a run still going after ``timeout`` is killed, not left behind."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    return proc.returncode, out, err


@pytest.mark.parametrize("store", ["local", "s3"])
@pytest.mark.parametrize("round_no", range(3))
def test_two_runs_at_once(tmp_path, sshd_factory, sftp_client_key, pgp_key, s3_server, s3_versioned_bucket, store,
                          round_no, request):
    server = sshd_factory([sftp_client_key[1]])
    delivery = seed(server.root / "outgoing", pgp_key.public_file, "ibkr-sftp", count=16, size=20_000, plain_every=5)
    known_hosts = server.write_known_hosts(tmp_path / "known_hosts")
    source = sftp_toml("ibkr-sftp", server.port, server, sftp_client_key, known_hosts)
    archive = local_archive_toml(tmp_path / "archive") if store == "local" else s3_archive_toml(s3_server, s3_versioned_bucket)
    cfg = write_config(tmp_path, source, pgp_key, archive, tmp_path / "staging")
    tmpdir = Path(tempfile.mkdtemp(prefix="ibr-conc-", dir="/tmp"))
    request.addfinalizer(lambda: shutil.rmtree(tmpdir, ignore_errors=True))
    env = cli_env(pgp_key, sftp_client_key, tmpdir)
    procs = [start_cli(cfg, env, "fetch") for _ in range(RUNS)]
    with ThreadPoolExecutor(RUNS) as pool:  # read both pipes at once: a full pipe must not stall a run
        results = list(pool.map(finish, procs))
    for code, out, err in results:
        assert code == 0, out.decode()[-2000:] + err.decode()[-2000:]
        assert b"Traceback" not in err
    expected = delivery.expected()
    archived = sum(int(re.search(r"(\d+) archived, (\d+) already", out.decode()).group(1)) for _, out, _ in results)
    if store == "local":
        objects, temps = local_objects(tmp_path / "archive")
        assert temps == []
    else:
        client = s3_test_client(s3_server)
        objects = s3_objects(client, s3_versioned_bucket)
        versions = [v for v in client.list_object_versions(Bucket=s3_versioned_bucket).get("Versions", [])
                    if "/runs/" not in v["Key"]]
        assert len(versions) == len(expected)  # create-if-absent: the loser of each race wrote nothing
    assert_archived_exactly(objects, expected)
    assert archived == len(delivery.files)  # each file counted by the one run that completed its archive
    assert list((tmp_path / "staging").iterdir()) == []
    assert not list(tmpdir.iterdir())  # no GnuPG home or anything else left in TMPDIR
