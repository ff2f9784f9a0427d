"""Leftovers of killed runs: locked work folders and stale archive temp files are cleaned up."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time

from ibreports.archive.local import LocalArchive
from ibreports.config import ArchiveConfig
from ibreports.files import claim_workdir, release_workdir, sweep_abandoned
from tests.waiting import eventually

CLAIM_AND_DIE = """
import os, signal, sys
from pathlib import Path
from ibreports.files import claim_workdir
path, _ = claim_workdir("ibr-test-", Path(sys.argv[1]))
(path / "1.plain").write_bytes(b"plaintext")
print(path, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_folders_of_killed_processes_are_swept_live_ones_kept(tmp_path):
    dead = subprocess.run([sys.executable, "-c", CLAIM_AND_DIE, str(tmp_path)], capture_output=True, text=True)
    dead_path = dead.stdout.strip()
    assert dead.returncode == -9 and os.path.isdir(dead_path)
    live, fd = claim_workdir("ibr-test-", tmp_path)
    unlocked_old = tmp_path / "ibr-test-nolock"
    unlocked_old.mkdir(mode=0o700)  # as mkdtemp makes them: only such a folder is ours to sweep
    os.utime(unlocked_old, (time.time() - 3600, time.time() - 3600))
    unlocked_new = tmp_path / "ibr-test-starting"
    unlocked_new.mkdir(mode=0o700)
    seen = []

    assert sweep_abandoned("ibr-test-", tmp_path, before_remove=seen.append) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, "ibr-test-starting"])
    assert oct(live.stat().st_mode & 0o777) == "0o700" and len(seen) == 2
    release_workdir(live, fd)
    assert not live.exists()


def test_local_archive_removes_temp_files_of_dead_runs_only(tmp_path):
    archive = LocalArchive(ArchiveConfig(url=str(tmp_path / "a")))
    dead, live = tmp_path / "a" / ".tmp-dead", tmp_path / "a" / ".tmp-live"
    dead.write_bytes(b"half")  # nobody holds its lock: its writer died
    live.write_bytes(b"in flight")
    fd = os.open(live, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # as a put in a live run holds it
    try:
        assert archive.inventory() == {}
        assert not dead.exists() and live.exists()
    finally:
        os.close(fd)


DECRYPTOR_AND_DIE = """
import os, signal, sys
from pathlib import Path
from ibreports.pgp import Decryptor
from ibreports.pgp.homes import WATCHDOG
d = Decryptor([Path(sys.argv[1])], sys.argv[2], homes=1)
print(d.homes[0], flush=True)
os.kill(WATCHDOG.pid, signal.SIGKILL)  # the watchdog would remove the home at once: the sweep is the last line
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_gnupg_homes_of_a_killed_run_are_swept_with_their_agent(pgp_key):
    from ibreports.pgp import sweep_abandoned_homes

    dead = subprocess.run([sys.executable, "-c", DECRYPTOR_AND_DIE, str(pgp_key.secret_file), pgp_key.passphrase],
                          capture_output=True, text=True, timeout=120)
    home = dead.stdout.strip()
    assert dead.returncode == -9 and os.path.isdir(home)  # holds the imported secret key and a live agent
    agents = [p for p in os.listdir("/proc") if p.isdigit() and _cmdline(p).count(home)]
    assert agents, "the killed run's gpg-agent should still be running"
    assert sweep_abandoned_homes() >= 1
    assert not os.path.exists(home)
    assert eventually(lambda: not [p for p in agents if os.path.exists(f"/proc/{p}") and home in _cmdline(p)])


def _cmdline(pid: str) -> str:
    try:
        return open(f"/proc/{pid}/cmdline", "rb").read().decode(errors="replace")
    except OSError:
        return ""
