"""Crash anywhere: `ibreports fetch` killed with SIGKILL in every phase, then restarted.

A slow link (the fault proxy caps the bandwidth in front of a real sshd, and in front of the
S3 server during killed runs) stretches the run. Each kill aims at one phase (connect/list,
download, decrypt, archive write, or a random moment) and is labelled by what the run was
doing when it died, seen directly: its own staging folder (claimed, ``.download`` growing,
``.plain`` written), the archive's temporary files, bytes flowing up to S3.
Each round starts from an empty archive (local folder, every fourth round S3); a few killed runs,
then one run that must finish. At the end of every round: every file archived exactly once with its
hash, nothing partial, no temporary file, staging folder or GnuPG home left, no plaintext anywhere.
"""

from __future__ import annotations

import collections
import json
import os
import random
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from tests.faultproxy import FaultProxy
from tests.fixtures.s3 import s3_test_client
from tests.reliability import (
    assert_archived_exactly, cli_env, files_containing, kill_gpg_agents, local_archive_toml, local_objects,
    run_cli, s3_archive_toml, s3_objects, seed, sftp_toml, start_cli, write_config,
)

KILLS = int(os.environ.get("IBR_CRASH_KILLS", "60"))  # override for a quick local try
PHASES = ("connect/list", "download", "decrypt", "archive write")
RATE = 1_500_000  # bytes/s through the proxy: downloads take about a second
STAGING = "ibreports-staging-"


class Watch:
    """What one live run is doing, from direct signals (polled every millisecond)."""

    def __init__(self, staging: Path, archive: Path | None, ssh, s3) -> None:
        self.staging, self.archive, self.ssh, self.s3 = staging, archive, ssh, s3
        self.old = {d.name for d in staging.glob(STAGING + "*")}  # the restarted run sweeps these
        self.connections = ssh.connections
        self.up, self.up_at = (s3.bytes_up, 0.0) if s3 else (0, 0.0)
        self.downloaded = False
        self.largest = 0  # bytes in the biggest staged .download

    def active(self) -> list[str]:
        """The phases the run is in now, most telling first (workers overlap: one downloads while another writes)."""
        writing = self.writing()  # every poll, so the inventory's S3 requests (before the claim) never count
        own = [d for d in self.staging.glob(STAGING + "*") if d.name not in self.old]
        if not own or self.ssh.connections == self.connections:
            self.up_at = 0.0
            return ["start-up"]
        try:
            entries = [(e.name, e.stat().st_size) for e in os.scandir(own[0])]
        except OSError:
            entries = []
        found = ["archive write"] if writing else []
        if any(n.endswith(".plain") for n, _ in entries):
            found.append("decrypt")
        sizes = [size for n, size in entries if n.endswith(".download")]
        if sizes:
            self.downloaded, self.largest = True, max(sizes)
            found.append("download")
        if not self.downloaded:
            return found + ["connect/list"]
        return found or ["between files"]

    def writing(self) -> bool:
        if self.s3 is None:
            return any(n.startswith(".tmp-") for n in os.listdir(self.archive)) if self.archive.exists() else False
        now = time.monotonic()
        if self.s3.bytes_up != self.up:  # the proxy forwards a rate-capped body in slices every 50 ms
            self.up, self.up_at = self.s3.bytes_up, now
        return now - self.up_at < 0.08


def kill_in(proc, watch: Watch, target: str, delay: float, limit: float) -> str | None:
    """SIGKILL ``proc`` once it has been in ``target`` for ``delay`` s (download: once ``delay`` MB are staged;
    "random": ``delay`` s after the start). Returns the phase it died in; None if it finished first."""
    start = time.monotonic()
    seen = None
    while proc.poll() is None:
        now, active = time.monotonic(), watch.active()
        seen = (seen or now) if target in active else None
        if target == "random":
            due = now - start >= delay
        elif target == "download":
            due = seen is not None and watch.largest >= delay * 1e6
        else:
            due = seen is not None and now - seen >= delay
        if due or now - start > limit:
            proc.kill()
            return target if target in active else active[0]
        time.sleep(0.001)
    return None


def records(store) -> list[dict]:
    """The run records of one round's archive."""
    if isinstance(store, Path):
        return [json.loads(p.read_text()) for p in (store / "runs").rglob("*.json")]
    client, bucket, prefix = store
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/runs/")
    return [json.loads(client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read())
            for page in pages for o in page.get("Contents", [])]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_kill_9_anywhere_then_restart(tmp_path, sshd_factory, sftp_client_key, pgp_key, s3_server, s3_bucket, request):
    server = sshd_factory([sftp_client_key[1]])
    delivery = seed(server.root / "outgoing", pgp_key.public_file, "ibkr-sftp", count=12, size=240_000, plain_every=6)
    expected = delivery.expected()
    staging = tmp_path / "staging"
    # A short TMPDIR: pgp.py puts GnuPG homes in /tmp when TMPDIR is too long for agent sockets.
    tmpdir = Path(tempfile.mkdtemp(prefix="ibr-crash-", dir="/tmp"))
    # Killed runs orphan their gpg-agents: stop them (by home) and remove TMPDIR whatever happens.
    request.addfinalizer(lambda: (kill_gpg_agents(tmpdir), shutil.rmtree(tmpdir, ignore_errors=True)))
    env = cli_env(pgp_key, sftp_client_key, tmpdir)
    client = s3_test_client(s3_server)
    died = collections.Counter()
    stats = collections.Counter()
    rng = random.Random(20261101)
    delays = {"connect/list": (0, 0.05), "download": (0.005, 0.23), "decrypt": (0, 0.02), "archive write": (0, 0)}
    with FaultProxy(max_seconds=850) as proxy:
        ssh = proxy.route(server.port)
        ssh.rate = RATE
        s3 = proxy.route(int(s3_server.rsplit(":", 1)[1]))
        known_hosts = tmp_path / "known_hosts"
        known_hosts.write_text(f"[127.0.0.1]:{ssh.port} {server.host_key_line()}\n")
        source = sftp_toml("ibkr-sftp", ssh.port, server, sftp_client_key, known_hosts)

        def config(archive: str) -> Path:
            return write_config(tmp_path, source, pgp_key, archive, staging)

        reference = tmp_path / "reference"
        start = time.monotonic()
        done = run_cli(config(local_archive_toml(reference)), env, "fetch")
        full = time.monotonic() - start
        assert done.returncode == 0, done.stderr.decode()[-2000:]
        assert_archived_exactly(local_objects(reference)[0], expected)

        kills, round_no = 0, 0
        while kills < KILLS:
            round_no += 1
            on_s3 = round_no % 4 == 0
            if on_s3:
                root, store = None, (client, s3_bucket, f"crash-{round_no}")
                cfg = config(s3_archive_toml(f"http://127.0.0.1:{s3.port}", s3_bucket, prefix=store[2]))
            else:
                root = store = tmp_path / f"archive-{round_no}"
                cfg = config(local_archive_toml(root))

            def objects() -> dict[str, bytes]:
                return s3_objects(client, s3_bucket, store[2]) if on_s3 else local_objects(root)[0]

            # Kills that may miss (late random moments, the narrow archive-write window) last: a run that
            # finishes leaves the round's later kills nothing to aim at.
            targets = rng.sample(PHASES[:3], 3) + ["random", "archive write"]
            ssh.rate = s3.rate = RATE  # slow killed runs: kills land mid-transfer, mid-PUT
            for target in targets:
                delay = rng.uniform(0.05, full) if target == "random" else rng.uniform(*delays[target])
                watch = Watch(staging, root, ssh, s3 if on_s3 else None)
                proc = start_cli(cfg, env, "fetch")
                phase = kill_in(proc, watch, target, delay, limit=full * 2)
                proc.communicate()
                if phase is None:  # it finished first: a clean run, not a kill
                    stats[f"finished before its {target} kill"] += 1
                    continue
                died[phase] += 1
                kills += 1
                stats["kills in S3 rounds"] += on_s3
                # Whatever the moment, the archive never holds a partial or wrong object.
                assert all(expected.get(k) == v for k, v in objects().items()), "partial or foreign object"
            ssh.rate = s3.rate = None  # the restart runs at full speed
            final = run_cli(cfg, env, "fetch")
            assert final.returncode == 0, final.stdout.decode()[-2000:] + final.stderr.decode()[-2000:]
            assert_archived_exactly(objects(), expected)
            runs = records(store)
            archived = collections.Counter(f["name"] for r in runs for f in r["files"] if f["outcome"] == "archived")
            assert all(n == 1 for n in archived.values()), archived  # written exactly once over the round
            # What the killed runs left, the restarted run removed.
            assert [d.name for d in staging.iterdir()] == [], round_no
            if on_s3:
                stats["S3 rounds"] += 1
                stats["S3 multipart uploads left"] += len(client.list_multipart_uploads(
                    Bucket=s3_bucket, Prefix=store[2] + "/").get("Uploads", []))
            else:
                assert local_objects(root)[1] == [], round_no  # no .tmp- file of a killed run survives
            # Killed runs' GnuPG homes (imported keys) go when the next run starts, whatever it has to do.
            stats["stale GnuPG homes after restarts"] += len(list(tmpdir.glob("ibr-gpg-*")))

    plaintext = files_containing([staging, tmpdir], delivery.markers)
    summary = {"rounds": round_no, "kills": kills, "reference run s": round(full, 2), **died, **stats,
               "files with plaintext in staging/TMPDIR": len(plaintext)}
    print("\ncrash campaign:", json.dumps(summary))
    assert kills >= 50
    assert plaintext == [], f"plaintext left behind after kill -9: {[str(p) for p in plaintext[:5]]} {summary}"
    assert all(died[p] >= 5 for p in PHASES), summary
    assert stats["stale GnuPG homes after restarts"] == 0, summary
