"""One file of a plan: download (or take the produced file) -> verify -> archive -> decrypt -> record.

Each branch (encrypted, plain, conflict) is its own method with keyword-only parameters. Stages pass
plain data (paths in the private staging folder, hashes, keys), never clients or bytes. What stops a
whole source (the archive refusing every write, the server away past the reconnect window, the
source's deadline) is raised once and every file still to do is marked, not attempted.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import threading
import time
from concurrent.futures import Future
from pathlib import Path

from .config import SourceConfig
from .errors import (
    ArchiveConfigError,
    ArchiveError,
    ArchiveUnreachable,
    ConnectionFailure,
    DecryptionError,
    FileChangedError,
    IbreportsError,
    SourceDeadline,
    is_transient,
)
from .files import sha256_file
from .pgp import is_openpgp
from .plan import Item, conflict_key
from .remote import Remote
from .report import FileOutcome, Outcome, Reason
from .runstate import Halted, Outage, RunState

log = logging.getLogger("ibreports.pipeline")
# One line per file handled. Off unless a caller turns it on (the Prefect flows do, for the run's
# logs); the CLI shows progress and a table instead.
files_log = logging.getLogger("ibreports.files")
if files_log.level == logging.NOTSET:
    files_log.setLevel(logging.WARNING)

OVERLAP_BYTES = 4 << 20  # from this size, the original is archived while gpg decrypts
BULK_BYTES = 16 << 20  # from this size, downloads take turns (see Worker.download)


class Worker:
    """Processes the planned files of one source (called from several threads)."""

    def __init__(self, run: RunState, source: SourceConfig, remote: Remote, *, force: bool, deadline: float) -> None:
        self.run = run
        self.source = source
        self.remote = remote
        self.force = force
        self.deadline = deadline
        window = run.config.run.reconnect_minutes * 60
        self.server = Outage(window)
        self.store_outage = Outage(window)
        self.stopped: BaseException | None = None  # what stopped this source (first one wins)
        self._lock = threading.Lock()

    # -- one file ---------------------------------------------------------------------------

    def process(self, item: Item) -> None:
        out = item.outcome
        run = self.run
        assert run.staging is not None
        delivered = item.entry.path or run.staging / f"{self.source.name}-{item.index}.download"
        plain = run.staging / f"{self.source.name}-{item.index}.plain"
        try:
            if self.stopped is not None:
                self._not_attempted(out)
                return
            if item.entry.path is None:
                out.sha256 = self.download(item=item, dest=delivered)
            meta = {
                "source": self.source.name,
                "remote-name": item.entry.name,
                "remote-mtime": str(int(item.entry.mtime)),
                "original-sha256": out.sha256,
            }
            if item.conflict:
                self.keep_conflict(item=item, path=delivered, why=item.conflict, meta=meta)
                return
            if is_openpgp(delivered):
                wrote = self.encrypted(item=item, path=delivered, plain=plain, meta=meta)
            elif item.statement.encryption:
                self.not_pgp(item=item, path=delivered, meta=meta)
                return
            else:  # plain deliveries the planner accepted (allow_plain, no encrypted twin)
                wrote = self.plain(item=item, path=delivered, meta=meta)
            if wrote is None:
                return  # a conflict: reported by the branch
            if self.source.delete_after_archive:
                self.remote.delete(item.entry.name)
                out.deleted_from_server = True  # shown and recorded: the server's copy is gone
                log.info("%s: deleted %s from the server (archived and verified)", self.source.name, item.entry.name)
            # "archived" only by the run that wrote the file's last missing object, so two runs at
            # once never both count a file; --force reports what it compared as "verified".
            out.outcome = Outcome.ARCHIVED if wrote else Outcome.VERIFIED if self.force else Outcome.ALREADY_ARCHIVED
            if out.outcome == Outcome.ALREADY_ARCHIVED and not item.recheck:
                out.code, out.reason = Reason.RACE, "archived meanwhile by another run"
            files_log.info("%s: %s %s (%d bytes)", self.source.name, item.entry.name, out.outcome, item.entry.size)
        except FileChangedError as exc:  # still being written: complete next run, never half
            self._set(out, Outcome.WAITING, Reason.CHANGED, str(exc))
            log.info("%s: %s", self.source.name, exc)
        except SourceDeadline as exc:
            self._stop(exc)
            self._not_attempted(out)
        except (ArchiveConfigError, ArchiveUnreachable) as exc:  # every other write would fail the same way
            self._stop(Halted(exc))  # said once, as the source's error; its files wait for the next run
            self._not_attempted(out)
        except ConnectionFailure as exc:  # host key or credentials on reconnect, or away past the window
            self._stop(exc)
            self._not_attempted(out)
        except DecryptionError as exc:  # its own reason code when it has one (integrity, no-key, ...)
            self._fail(item, getattr(exc, "reason", "") or Reason.DECRYPTION, exc)
        except ArchiveError as exc:
            self._fail(item, Reason.ARCHIVE, exc)
        except IbreportsError as exc:
            self._fail(item, Reason.ERROR, exc)
        except OSError as exc:  # e.g. a full disk under staging: this file fails, nothing is lost
            self._set(out, Outcome.FAILED, Reason.IO, f"local I/O error: {exc.strerror or exc}")
            log.error("%s: %s failed: %s", self.source.name, item.entry.name, out.reason)
        except Exception as exc:  # noqa: BLE001 - a bug fails this file, not the run
            self._set(out, Outcome.FAILED, Reason.ERROR, f"unexpected {type(exc).__name__}: {str(exc)[:300]}")
            log.error("%s: %s failed: %s", self.source.name, item.entry.name, out.reason,
                      exc_info=log.isEnabledFor(logging.DEBUG))
        finally:
            delivered.unlink(missing_ok=True)
            plain.unlink(missing_ok=True)
            run.progress("files", 1)

    # -- branches -----------------------------------------------------------------------------

    def encrypted(self, *, item: Item, path: Path, plain: Path, meta: dict[str, str]) -> bool | None:
        """An OpenPGP delivery: keep the original (when configured), decrypt strictly, archive the statement."""
        out, run = item.outcome, self.run
        original: Future | None = None
        wrote_original = False
        if run.config.archive.keep_encrypted:
            # Big files: archive the original (I/O, fsync) while gpg decrypts (CPU).
            kwargs = dict(out=out, key=item.original_key, path=path, sha256=out.sha256, meta=dict(meta),
                          private=False, verify=self.force or self.source.delete_after_archive)
            if item.entry.size >= OVERLAP_BYTES:
                assert run.side is not None
                original = run.side.submit(lambda: self.store(**kwargs))
            else:
                wrote_original = self.store(**kwargs)
        try:
            decrypted = run.decryptor().decrypt(path, plain)
            meta["pgp-key"], meta["pgp-signature"] = decrypted.key, decrypted.signature
            out.signature = decrypted.signature
        finally:
            if original is not None:
                wrote_original = original.result()  # an archive failure outranks a decryption failure
        wrote = self.statement(item=item, path=plain, sha256=None, meta=meta, evidence=path)
        if wrote is None:
            return None
        # The statement was archived before (keep_encrypted turned on later): the original completes it.
        return wrote or (wrote_original and item.statement_key in run.inventory)

    def plain(self, *, item: Item, path: Path, meta: dict[str, str]) -> bool | None:
        """An unencrypted delivery (allowed for this source): archived as it is."""
        return self.statement(item=item, path=path, sha256=item.outcome.sha256, meta=meta, evidence=path)

    def not_pgp(self, *, item: Item, path: Path, meta: dict[str, str]) -> None:
        """Named as encrypted but not OpenPGP: keep the evidence, refuse to call it a statement."""
        self.store(out=item.outcome, key=item.original_key, path=path, sha256=item.outcome.sha256, meta=meta,
                   private=False, verify=self.force)
        raise DecryptionError(
            "Named as encrypted but the content is not an OpenPGP message "
            + ("(empty file)." if item.entry.size == 0 else "(corrupted or truncated)."),
            "The encrypted original is archived; ask IBKR to redeliver the file.",
        )

    def statement(self, *, item: Item, path: Path, sha256: str | None, meta: dict[str, str],
                  evidence: Path) -> bool | None:
        """Archive the statement; an archived one with other content is a conflict (None), never replaced."""
        out = item.outcome
        written = self._put(item.statement_key, path, sha256, meta, private=True)
        out.archive_keys.append(item.statement_key)
        if written:
            return True
        archived, ours = self._archived_sha256(item.statement_key), sha256 or sha256_file(path)
        if archived == ours:
            return False
        why = f"the archived statement {item.statement_key} has SHA-256 {archived[:16]}..., this delivery's {ours[:16]}..."
        self.keep_conflict(item=item, path=evidence, why=why, meta=meta)
        return None

    def keep_conflict(self, *, item: Item, path: Path, why: str, meta: dict[str, str]) -> None:
        """Keep the delivery aside under ``conflicts/`` and fail it: a person decides which is right."""
        out = item.outcome
        key = conflict_key(self.source.name, item.statement, out.sha256 or sha256_file(path))
        self._put(key, path, out.sha256 or None, {**meta, "conflict": why[:200]}, private=True)
        out.archive_keys.append(key)
        kept = "; the server's copy was not deleted" if self.source.delete_after_archive else ""
        self._set(out, Outcome.FAILED, Reason.CONFLICT,
                  f"conflict: {why}; the archived copy was not replaced and this delivery is kept as {key}{kept}. "
                  "Compare both and keep the right one (ask IBKR if unsure).")
        log.error("%s: %s: %s", self.source.name, item.entry.name, out.reason)

    # -- I/O with bounded retries ------------------------------------------------------------

    def download(self, *, item: Item, dest: Path) -> str:
        """Download; a lost connection is re-established with backoff for ``[run] reconnect_minutes``."""
        attempt = 0
        while True:
            self._check_deadline()
            dest.unlink(missing_ok=True)
            try:
                # Big files one at a time: they share one connection's bandwidth anyway, and the
                # first one done is decrypted and archived while the next downloads.
                with self.run.bulk if item.entry.size >= BULK_BYTES else contextlib.nullcontext():
                    digest = self.remote.download(item.entry.name, dest, item.entry.size, self._progress)
                self.server.ok()
                return digest
            except ConnectionFailure as exc:
                if not is_transient(exc):  # host key, credentials: never retried
                    raise
                attempt += 1
                pause = self.server.pause(attempt)
                if pause is None:
                    raise ConnectionFailure(
                        f"{self.source.name}: the server stayed away longer than [run] reconnect_minutes "
                        f"({self.run.config.run.reconnect_minutes:g}); last error: {exc.message}",
                        "The next run (or the Prefect retry) resumes where this one stopped.",
                    ) from None
                log.warning("%s: %s: attempt %d failed (%s); trying again in %.1f s",
                            self.source.name, item.entry.name, attempt, exc.message, pause)
                time.sleep(pause)

    def store(self, *, out: FileOutcome, key: str, path: Path, sha256: str | None, meta: dict[str, str],
              private: bool, verify: bool) -> bool:
        """Put ``key`` unless present (True when written); with ``verify``, compare an existing object."""
        written = self._put(key, path, sha256, meta, private=private)
        out.archive_keys.append(key)
        if written or not verify:
            return written
        if self._archived_sha256(key) != (sha256 or sha256_file(path)):
            raise ArchiveError(
                f"The archived {key} differs from the file on the server (SHA-256 mismatch); "
                "nothing was rewritten and the server's copy was not deleted.",
                "Compare both copies before deciding which to keep.",
            )
        return False

    def _put(self, key: str, path: Path, sha256: str | None, meta: dict[str, str], private: bool) -> bool:
        """archive.put, tried again while the store is unreachable (within the reconnect window)."""
        size = path.stat().st_size
        attempt = 0
        while True:
            try:
                written = self.run.archive.put(key, path, sha256, meta, private=private)
                self.store_outage.ok()
                if written:
                    self.run.archived(key, size)
                return written
            except ArchiveUnreachable as exc:
                attempt += 1
                pause = self.store_outage.pause(attempt)
                if pause is None:
                    raise
                log.warning("archive: %s: attempt %d failed (%s); trying again in %.1f s", key, attempt, exc.message, pause)
                time.sleep(pause)

    def _archived_sha256(self, key: str) -> str:
        recorded = getattr(self.run.inventory.get(key), "sha256", None)  # archives that record hashes
        if recorded:
            return recorded
        assert self.run.staging is not None
        check = self.run.staging / f"verify-{secrets.token_hex(4)}"
        try:
            self.run.archive.get(key, check)
            return sha256_file(check)
        finally:
            check.unlink(missing_ok=True)

    # -- bookkeeping --------------------------------------------------------------------------

    def _progress(self, n: int) -> None:
        self.run.progress("bytes", n)
        self._check_deadline()  # a server that trickles cannot hold the run past its deadline

    def _check_deadline(self) -> None:
        if time.monotonic() <= self.deadline:
            return
        minutes = self.run.config.run.source_deadline_minutes
        raise SourceDeadline(
            f"{self.source.name}: the source ran longer than [run] source_deadline_minutes ({minutes:g}); "
            "the rest of its files wait for the next run.",
            "If the server is just slow and this repeats, raise source_deadline_minutes; if it trickles, "
            "tell IBKR.",
        )

    def _stop(self, exc: BaseException) -> None:
        with self._lock:
            if self.stopped is None:
                self.stopped = exc  # reported once, as the source's error (pipeline._after)

    def _not_attempted(self, out: FileOutcome) -> None:
        """A file the stopped source did not finish: it waits for the next run (the cause is said once,
        as the source's error, not once per file)."""
        stop = self.stopped
        if isinstance(stop, SourceDeadline):
            self._set(out, Outcome.WAITING, Reason.DEADLINE, "not finished: the source's deadline ran out")
        elif isinstance(stop, Halted):
            self._set(out, Outcome.WAITING, Reason.ARCHIVE, "not finished: the archive refused writes")
        else:
            self._set(out, Outcome.WAITING, Reason.CONNECTION, "not finished: the connection was lost")
        out.archive_keys = []

    def _fail(self, item: Item, code: Reason | str, exc: IbreportsError) -> None:
        self._set(item.outcome, Outcome.FAILED, code, str(exc))
        log.error("%s: %s failed: %s", self.source.name, item.entry.name, exc)

    @staticmethod
    def _set(out: FileOutcome, outcome: Outcome, code: Reason | str, reason: str) -> None:
        out.outcome, out.code, out.reason = outcome, code, reason
