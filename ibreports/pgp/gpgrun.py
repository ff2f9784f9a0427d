"""Running gpg: a minimal environment, no core dumps, children that die with us.

Every gpg (and, through gpg's autostart, every gpg-agent) gets an environment of
PATH and LC_ALL only: a passphrase read from ``env:`` never reaches
``/proc/<pid>/environ`` of a child. A gpg child is killed by the kernel when the
thread that started it dies (PR_SET_PDEATHSIG), so ``kill -9`` of a run leaves no
gpg writing into a deleted file; the agents are handled by homes.py's watchdog.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import resource
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

GPG_BASE = ["gpg", "--batch", "--no-tty", "--no-options", "--no-greeting"]
GPG_OPTIONS = [
    "--no-auto-key-locate", "--no-auto-key-retrieve", "--no-auto-check-trustdb",
    "--trust-model", "always", "--no-symkey-cache", "--pinentry-mode", "loopback",
]
_PR_SET_PDEATHSIG = 1
SLACK = 1 << 20  # gpg's own --max-output sits this far above our bound: we see the crossing first
POLL = 0.05

try:
    _prctl = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).prctl
except (OSError, AttributeError):  # not Linux: no parent-death signal, the time-outs still apply
    _prctl = None


def minimal_env() -> dict[str, str]:
    """What gpg and gpg-agent need, and nothing else (no secrets from our own environment)."""
    return {"PATH": os.environ.get("PATH") or os.defpath, "LC_ALL": "C"}


def disable_core_dumps() -> None:
    """No core file of this process (or of the gpg children, which inherit the limit) while
    secrets are in memory; the hard limit is left alone."""
    try:
        _, hard = resource.getrlimit(resource.RLIMIT_CORE)
        resource.setrlimit(resource.RLIMIT_CORE, (0, hard))
    except (ValueError, OSError):
        pass


def _die_with_parent(parent: int):
    def preexec() -> None:  # in the child, between fork and exec: no locks, no imports
        if _prctl is not None:
            _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            if os.getppid() != parent:  # the parent died before the signal was armed
                os._exit(1)
    return preexec


# util-linux's setpriv arms the parent-death signal and execs the program: ~1 ms, where a
# preexec_fn forces a full fork of this process (tens of ms per gpg under load).
_SETPRIV = shutil.which("setpriv")


def popen(args: list[str], **kwargs) -> subprocess.Popen:
    """Start a gpg-family program with the minimal environment, killed when we die."""
    if _SETPRIV:
        return subprocess.Popen([_SETPRIV, "--pdeathsig", "KILL", "--", *args], env=minimal_env(), **kwargs)
    return subprocess.Popen(args, env=minimal_env(), preexec_fn=_die_with_parent(os.getpid()), **kwargs)


def run(args: list[str], stdin: bytes | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run to completion (killed after ``timeout`` seconds); stdout and stderr captured as bytes."""
    with popen(args, stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
               stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        try:
            out, err = proc.communicate(stdin, timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            return subprocess.CompletedProcess(args, -9, out, err + b"\nibreports: timed out\n")
        return subprocess.CompletedProcess(args, proc.returncode, out, err)


def gpg(home: Path, *args: str, stdin: bytes | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    """gpg in ``home`` with status lines on stdout."""
    return run([*GPG_BASE, "--homedir", str(home), "--status-fd", "1", *GPG_OPTIONS, *args],
               stdin=stdin, timeout=timeout)


def kill_agent(home: Path) -> None:
    """Stop the gpg-agent of ``home`` (a no-op when none runs)."""
    try:
        run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], timeout=30)
    except OSError:
        pass


def status(text: str | bytes) -> list[list[str]]:
    """The [GNUPG:] status lines of a gpg run, split into words."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return [line.split()[1:] for line in text.splitlines() if line.startswith("[GNUPG:] ")]


def decrypt_bounded(home: Path, src: Path, dest: Path, limit: int, timeout: float) -> tuple[int, str, str, str | None]:
    """gpg --decrypt ``src`` into ``dest``, killed as soon as ``dest`` outgrows ``limit`` or the
    time-out passes. Returns (exit code, status output, stderr, None | "oversized" | "timeout")."""
    args = [*GPG_BASE, "--homedir", str(home), "--status-fd", "1", *GPG_OPTIONS, "--yes",
            "--max-output", str(limit + SLACK), "--output", str(dest), "--decrypt", "--", str(src)]
    with tempfile.TemporaryFile(dir=home) as out, tempfile.TemporaryFile(dir=home) as err:
        deadline = time.monotonic() + timeout
        verdict: list[str] = []
        done = threading.Event()
        with popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=err) as proc:

            def guard() -> None:  # polls the output; the caller's wait() returns as soon as gpg exits
                while not done.wait(POLL):
                    if _size(dest) > limit or time.monotonic() > deadline:
                        verdict.append("oversized" if _size(dest) > limit else "timeout")
                        proc.kill()
                        return

            watcher = threading.Thread(target=guard, name="gpg-bound", daemon=True)
            watcher.start()
            try:
                proc.wait()
            finally:
                done.set()
                watcher.join()
        stopped = verdict[0] if verdict else None
        if stopped is None and _size(dest) > limit:
            stopped = "oversized"
        out.seek(0)
        err.seek(0)
        return (proc.returncode, out.read(1 << 20).decode("utf-8", "replace"),
                err.read(1 << 16).decode("utf-8", "replace"), stopped)


def _size(path: Path) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0
