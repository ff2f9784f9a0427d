"""Throwaway GnuPG homes: private, locked while used, gone on every exit path.

A home holds imported secret keys and an agent that has their passphrases cached,
so it must not outlive its process. Normal exits and exceptions (SIGINT included)
close it; for everything else (SIGTERM, ``kill -9``, a crash) a small watchdog
process, started once per process in its own session, reads a pipe from us: when
the pipe closes because we died, it stops the agents of the homes still listed and
deletes them. Whatever still escapes (the watchdog killed too, a reboot) is swept
at the start of the next command.

The shared temporary folder is shared with other local users: the sweep takes only folders
of ours (owner, 0700, no link), and gpgconf is pointed only at an agent socket of ours, never
at a planted Assuan redirect that would make it stop someone else's agent.
"""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from ..files import claim_workdir, release_workdir, sweep_abandoned
from .gpgrun import kill_agent, minimal_env, run

log = logging.getLogger(__name__)

HOME_PREFIX = "ibr-gpg-"  # the decryptor's homes
# Every kind of temporary folder that may hold key material, and who makes it:
# the decryptor, keygen / key fingerprints (keyfiles.gnupg_home), the backup flow's test restore.
TEMP_PREFIXES = (HOME_PREFIX, "ibreports-gpg-", "ibreports-verify-")

_WATCHDOG = r"""
import os, shutil, stat, subprocess, sys
homes = set()
for line in sys.stdin.buffer:
    op, _, hexpath = line.strip().partition(b" ")
    try:
        path = os.fsdecode(bytes.fromhex(hexpath.decode()))
    except ValueError:
        continue
    if op == b"+":
        homes.add(path)
    elif op == b"-":
        homes.discard(path)
def stop_processes(path):
    # gpg children working in a home (normally already killed by their parent-death signal)
    want = os.fsencode(path)
    for pid in os.listdir("/proc"):
        try:
            if pid.isdigit() and want in open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0"):
                os.kill(int(pid), 9)
        except OSError:
            pass
def own_agent(path):
    # As homes.own_agent_socket: gpgconf is only pointed at a socket of ours, never at a redirect.
    try:
        where = subprocess.run(["gpgconf", "--homedir", path, "--list-dirs", "agent-socket"],
                               stdin=subprocess.DEVNULL, capture_output=True, timeout=30).stdout.strip()
        info = os.lstat(where or os.path.join(path, "S.gpg-agent"))
    except Exception:
        return False
    return stat.S_ISSOCK(info.st_mode) and info.st_uid == os.geteuid()
for path in homes:
    try:
        info = os.lstat(path)
    except OSError:
        continue
    if stat.S_ISDIR(info.st_mode) and info.st_uid == os.geteuid():
        stop_processes(path)
        if own_agent(path):
            try:
                subprocess.run(["gpgconf", "--homedir", path, "--kill", "gpg-agent"], stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)
            except Exception:
                pass
        shutil.rmtree(path, ignore_errors=True)
"""


class _Watchdog:
    """The per-process watchdog: ``+ path`` / ``- path`` lines on a pipe only we hold."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pid = 0
        self._fd = -1
        self._proc: subprocess.Popen | None = None

    def _ensure(self) -> int:
        if self._pid != os.getpid():  # first use, or a forked child: a watchdog of our own
            read, write = os.pipe()
            try:
                self._proc = subprocess.Popen(
                    [sys.executable, "-I", "-S", "-c", _WATCHDOG], stdin=read, stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL, env=minimal_env(), start_new_session=True, close_fds=True,
                )
            except OSError:
                os.close(write)
                write = -1
            finally:
                os.close(read)
            self._pid, self._fd = os.getpid(), write
        return self._fd

    def send(self, op: str, path: Path) -> None:
        with self._lock:
            fd = self._ensure()
            if fd < 0:
                return
            try:
                os.write(fd, f"{op} {os.fsencode(str(path)).hex()}\n".encode())
            except OSError:  # the watchdog is gone: the sweep at the next start still applies
                pass

    @property
    def pid(self) -> int | None:
        """The watchdog's process ID (for tests)."""
        return self._proc.pid if self._proc is not None and self._pid == os.getpid() else None


WATCHDOG = _Watchdog()


def home_base() -> Path | None:
    # gpg-agent's socket lives in the home: keep the path short (sun_path is ~108 bytes).
    return None if len(tempfile.gettempdir()) < 60 else Path("/tmp")


def claim_home(prefix: str = HOME_PREFIX, base: Path | None = None) -> tuple[Path, int]:
    """A new 0700 home, locked while in use and watched until released."""
    home, lock = claim_workdir(prefix, base if base is not None else home_base())
    WATCHDOG.send("+", home)
    return home, lock


def release_home(home: Path, lock: int) -> None:
    """Stop the home's agent, delete it, drop its lock (idempotent per home)."""
    kill_agent(home)
    release_workdir(home, lock)
    WATCHDOG.send("-", home)


def release_homes(homes: list[tuple[Path, int]]) -> None:
    for home, lock in homes:
        release_home(home, lock)


def own_agent_socket(home: Path) -> bool:
    """True when the agent socket of ``home`` is a real socket owned by us.

    ``gpgconf --kill`` follows what it finds there: an Assuan redirect (a regular file reading
    ``%Assuan%`` / ``socket=PATH``) or a symbolic link would make it stop whatever agent PATH
    belongs to, another user's or another run's. No socket of ours: no agent of ours to stop.
    """
    try:
        done = run(["gpgconf", "--homedir", str(home), "--list-dirs", "agent-socket"], timeout=30)
        where = done.stdout.decode("utf-8", "replace").strip() if done.returncode == 0 else ""
        info = os.lstat(where or home / "S.gpg-agent")
    except OSError:
        return False
    return stat.S_ISSOCK(info.st_mode) and info.st_uid == os.geteuid()


def _stop_abandoned_agent(home: Path) -> None:
    if own_agent_socket(home):
        kill_agent(home)
    elif os.path.lexists(home / "S.gpg-agent"):
        log.warning("%s: its S.gpg-agent is not a socket of ours (a redirect or a link, planted?); "
                    "no agent was stopped through it", home)


def sweep_abandoned_homes() -> int:
    """Stop the agents of, and delete, temporary homes and key folders left by killed runs
    (any kind in TEMP_PREFIXES; a folder whose lock a live process holds is left alone, and so is
    anything not ours: see files.sweep_abandoned and own_agent_socket)."""
    bases = {Path(tempfile.gettempdir()), home_base() or Path(tempfile.gettempdir())}
    removed = 0
    for base in bases:
        for prefix in TEMP_PREFIXES:
            removed += sweep_abandoned(prefix, base, _stop_abandoned_agent)
    return removed
