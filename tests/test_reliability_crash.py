"""Crash anywhere: `ibreports fetch` killed with SIGKILL at random moments, then restarted.

A slow link (the fault proxy caps the bandwidth in front of a real sshd) stretches the
run so kills land in every phase: start-up, listing, download, decrypt, archive write.
Each round starts from an empty archive; three killed runs, then one run that must
finish. At the end of every round: every file archived exactly once with its hash,
nothing partial, and no plaintext left in the staging folder or TMPDIR.
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
from tests.reliability import (
    assert_archived_exactly, cli_env, files_containing, kill_gpg_agents, local_archive_toml, local_objects,
    run_cli, seed, sftp_toml, start_cli, write_config,
)

KILLS = int(os.environ.get("IBR_CRASH_KILLS", "54"))  # override for a quick local try
KILLS_PER_ROUND = 3
RATE = 1_500_000  # bytes/s through the proxy: downloads take about a second


def kill_when(proc, seen, limit: float) -> bool:
    """SIGKILL ``proc`` as soon as ``seen()`` is true (polled every ms); False if it ended first."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and proc.poll() is None:
        if seen():
            proc.kill()
            return True
        time.sleep(0.001)
    if proc.poll() is None:
        proc.kill()
        return True
    return False


def staged(staging: Path, suffix: str) -> bool:
    return any(staging.glob(f"ibreports-staging-*/*{suffix}"))


def writing(archive: Path) -> bool:
    return archive.exists() and any(p.name.startswith(".tmp-") for p in archive.iterdir())


def phase(staging: Path, archive: Path, before: int) -> str:
    """Where the run was when it died, from what it left behind."""
    folders = [d for d in staging.glob("ibreports-staging-*") if d.is_dir()] if staging.exists() else []
    newest = max(folders, key=lambda d: d.stat().st_mtime_ns, default=None)
    if newest is None or len(folders) == before:
        return "start-up"
    names = [p.name for p in newest.iterdir()]
    if archive.exists() and any(p.name.startswith(".tmp-") for p in archive.iterdir()):
        return "archive write"
    if any(n.endswith(".plain") for n in names):
        return "decrypt"
    if any(n.endswith(".download") for n in names):
        return "download"
    objects, _ = local_objects(archive)
    return "after downloads" if objects else "connect/list"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_kill_9_anywhere_then_restart(tmp_path, sshd_factory, sftp_client_key, pgp_key, request):
    server = sshd_factory([sftp_client_key[1]])
    delivery = seed(server.root / "outgoing", pgp_key.public_file, "ibkr-sftp", count=12, size=240_000, plain_every=6)
    expected = delivery.expected()
    staging = tmp_path / "staging"
    # A short TMPDIR: pgp.py puts GnuPG homes in /tmp when TMPDIR is too long for agent sockets.
    tmpdir = Path(tempfile.mkdtemp(prefix="ibr-crash-", dir="/tmp"))
    # Killed runs orphan their gpg-agents: stop them (by home) and remove TMPDIR whatever happens.
    request.addfinalizer(lambda: (kill_gpg_agents(tmpdir), shutil.rmtree(tmpdir, ignore_errors=True)))
    env = cli_env(pgp_key, sftp_client_key, tmpdir)
    stats = collections.Counter()
    leftovers = collections.Counter()
    rng = random.Random(20261101)
    with FaultProxy(max_seconds=850) as proxy:
        route = proxy.route(server.port)
        route.rate = RATE
        known_hosts = tmp_path / "known_hosts"
        known_hosts.write_text(f"[127.0.0.1]:{route.port} {server.host_key_line()}\n")
        source = sftp_toml("ibkr-sftp", route.port, server, sftp_client_key, known_hosts)

        def config(archive: Path) -> Path:
            return write_config(tmp_path, source, pgp_key, local_archive_toml(archive), staging)

        reference = tmp_path / "reference"
        start = time.monotonic()
        done = run_cli(config(reference), env, "fetch")
        full = time.monotonic() - start
        assert done.returncode == 0, done.stderr.decode()[-2000:]
        assert_archived_exactly(local_objects(reference)[0], expected)

        kills, round_no = 0, 0
        while kills < KILLS:
            round_no += 1
            archive = tmp_path / f"archive-{round_no}"
            for step in range(KILLS_PER_ROUND):
                before = len(list(staging.glob("ibreports-staging-*"))) if staging.exists() else 0
                proc = start_cli(config(archive), env, "fetch")
                if round_no % 3 == 0 and step < 2:  # targeted: the narrow windows random kills rarely hit
                    target = (lambda: staged(staging, ".plain")) if step == 0 else (lambda: writing(archive))
                    killed = kill_when(proc, target, full * 2)
                else:
                    time.sleep(rng.uniform(0.05, full))
                    killed = proc.poll() is None
                    if killed:
                        proc.kill()
                proc.communicate()
                if not killed:  # it finished first: a clean run, not a kill
                    stats["finished before the kill"] += 1
                    continue
                stats[phase(staging, archive, before)] += 1
                kills += 1
                # Whatever the moment, the archive never holds a partial or wrong object.
                objects, temps = local_objects(archive)
                assert all(expected.get(k) == v for k, v in objects.items()), "partial or foreign object"
                leftovers["archive .tmp- files after kills"] += len(temps)
            final = run_cli(config(archive), env, "fetch")
            assert final.returncode == 0, final.stdout.decode()[-2000:] + final.stderr.decode()[-2000:]
            objects, temps = local_objects(archive)
            assert_archived_exactly(objects, expected)
            leftovers["archive .tmp- files after restart"] += len(temps)
            runs = [json.loads(p.read_text()) for p in (archive / "runs").rglob("*.json")]
            archived = collections.Counter(f["name"] for r in runs for f in r["files"] if f["outcome"] == "archived")
            assert all(n == 1 for n in archived.values()), archived  # written exactly once over the round

    leftovers["stale staging folders"] = len([d for d in staging.glob("ibreports-staging-*")])
    leftovers["stale GnuPG homes in TMPDIR"] = kill_gpg_agents(tmpdir)
    plaintext = files_containing([staging, tmpdir], delivery.markers)
    leftovers["files with plaintext in staging/TMPDIR"] = len(plaintext)
    summary = {"rounds": round_no, "kills": kills, "reference run s": round(full, 2), **stats, **leftovers}
    print("\ncrash campaign:", json.dumps(summary))
    assert kills >= 50
    assert plaintext == [], f"plaintext left behind after kill -9: {[str(p) for p in plaintext[:5]]} {summary}"
    # A restarted run must clear what killed runs left (staging folders hold downloads and plaintext).
    assert leftovers["stale staging folders"] == 0, summary
