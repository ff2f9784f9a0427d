"""State one run shares across its sources (archive, inventory, staging, the lazy decryptor), and the
outage clock that bounds reconnects: a lost connection is tried again with backoff and jitter for
``[run] reconnect_minutes``, then what is left fails at once.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from pathlib import Path
from typing import Callable

from .threads import ContextThreadPool
from .archive import Archive, ObjectInfo
from .config import Config
from .errors import ArchiveError, DecryptionError, IbreportsError
from .files import claim_workdir, private_base, release_workdir, sweep_abandoned
from .pgp import Decryptor, decryptor_for, listed_again, sweep_abandoned_homes
from .report import RunReport

log = logging.getLogger("ibreports.pipeline")

ProgressHook = Callable[[str, int], None]  # ("files", n) | ("bytes", n) | ("total-files", n) | ("total-bytes", n)
DOWNLOAD_ATTEMPTS = 3  # a dropped connection is always worth this many tries, whatever the window
STAGING_PREFIX = "ibreports-staging-"
BACKOFF_CAP = 15.0  # seconds between two reconnect attempts, at most


class Halted(Exception):
    """The archive refused a write in a way no other file can avoid (missing bucket, no credentials, ...)."""

    def __init__(self, cause: ArchiveError) -> None:
        super().__init__(str(cause))
        self.cause = cause


class RunState:
    """State of one run shared by its sources: archive, inventory, staging folder, lazy decryptor."""

    def __init__(self, config: Config, archive: Archive, inventory: dict[str, ObjectInfo],
                 report: RunReport, progress: ProgressHook | None) -> None:
        self.config = config
        self.archive = archive
        self.inventory = inventory
        self.report = report
        self.progress = progress or (lambda event, n: None)
        self.halted: IbreportsError | None = None  # set: the other sources are not attempted
        self._decryptor: Decryptor | None = None
        self._decryptor_error: IbreportsError | None = None
        self._lock = threading.Lock()
        self.staging: Path | None = None
        self._staging_lock = -1
        self.bulk = threading.Lock()
        self.side: ContextThreadPool | None = None

    def __enter__(self) -> "RunState":
        base = self.config.run.staging_dir
        if base is not None:  # 0700, tightened if open to others, refused if another user's
            private_base(base, "staging folder", "[run] staging_dir")
        swept = sweep_abandoned(STAGING_PREFIX, base)
        if swept:
            log.warning("removed %d staging folder(s) left by an interrupted run", swept)
        # Even a run with nothing to decrypt removes a killed run's GnuPG homes (imported keys).
        if homes := sweep_abandoned_homes():
            log.warning("removed %d GnuPG home(s) left by an interrupted run", homes)
        # A private 0700 folder, locked while this run lives: plaintext never sits where
        # others can read it, and a killed run's leftovers are removed by the next run.
        self.staging, self._staging_lock = claim_workdir(STAGING_PREFIX, base)
        self.staging = self.staging.resolve()
        self.side = ContextThreadPool(max(1, self.config.run.workers), thread_name_prefix="archive-original")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.side is not None:
            self.side.shutdown(wait=True)
        if self._decryptor is not None:
            self._decryptor.close()
        if self.staging is not None:
            release_workdir(self.staging, self._staging_lock)

    def private_folder(self, name: str) -> Path:
        """A 0700 folder inside staging (an on-demand source writes its files there)."""
        assert self.staging is not None
        folder = self.staging / name
        folder.mkdir(mode=0o700, exist_ok=True)
        os.chmod(folder, 0o700)  # whatever the umask
        return folder

    def snapshot(self) -> dict[str, ObjectInfo]:
        with self._lock:
            return dict(self.inventory)

    def archived(self, key: str, size: int, sha256: str = "") -> None:
        """A key this run wrote: the next source's plan sees it (twins across sources), and the run
        record keeps its SHA-256 (the ledger ``verify`` checks the archive against)."""
        with self._lock:
            self.inventory[key] = ObjectInfo(key, size)
            if sha256:
                self.report.written[key] = sha256

    def confirmed(self, key: str, sha256: str) -> None:
        """An archived object this run compared with a fresh delivery and found equal: recorded too
        (``fetch --force`` thus records objects archived before the ledger, or by a killed run)."""
        with self._lock:
            self.report.written.setdefault(key, sha256)

    def decryptor(self) -> Decryptor:
        with self._lock:
            if self._decryptor_error is not None:  # a wrong passphrase fails once, not once per file
                raise self._decryptor_error
            if self._decryptor is None:
                try:
                    self._decryptor = self._start_decryptor()
                except IbreportsError as exc:
                    self._decryptor_error = exc
                    raise
            return self._decryptor

    def warm_up(self) -> None:
        assert self.side is not None
        self.side.submit(self._warm_up)

    def _warm_up(self) -> None:
        try:
            self.decryptor()
        except IbreportsError:
            pass  # cached: reported on the first encrypted file, if there is one

    def _start_decryptor(self) -> Decryptor:
        pgp = self.config.pgp
        if not pgp.secret_key_files:
            raise DecryptionError(
                "The file is PGP-encrypted but no PGP secret key is configured.",
                "Set [pgp] secret_key_file (ibreports keygen writes keys/ibkr_pgp_secret.asc).",
            )
        for note in listed_again(pgp):
            log.warning("%s", note)
        decryptor = decryptor_for(pgp)
        for problem in decryptor.problems:  # once per run; only the files encrypted to that key fail
            log.error("PGP key in %s cannot be used: %s", problem.file, problem.error)
        return decryptor


class Outage:
    """How long a server (or the archive) has been away; shared by a source's workers.

    A lost connection is tried again with exponential backoff and jitter while the outage is
    younger than the window; past it, every file still to do fails at once.
    """

    def __init__(self, window_seconds: float) -> None:
        self.window = window_seconds
        self._since: float | None = None
        self._lock = threading.Lock()

    def ok(self) -> None:
        with self._lock:
            self._since = None

    def pause(self, attempt: int) -> float | None:
        """Seconds to wait before attempt ``attempt + 1``, or None once the window is spent."""
        with self._lock:
            now = time.monotonic()
            if self._since is None:
                self._since = now
            left = self._since + self.window - now
        if attempt >= DOWNLOAD_ATTEMPTS and left <= 0:
            return None
        pause = min(BACKOFF_CAP, 0.5 * 2 ** (attempt - 1)) * random.uniform(0.5, 1.5)
        return min(pause, max(left, 0.5)) if attempt >= DOWNLOAD_ATTEMPTS else pause
