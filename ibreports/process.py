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

from . import conflicts
from . import content
from .config import SourceConfig
from .content import ContentMismatch
from .errors import (
    ArchiveConfigError,
    ArchiveError,
    ArchiveUnreachable,
    ConnectionFailure,
    DecryptionError,
    DiskFullError,
    FileChangedError,
    IbreportsError,
    SourceDeadline,
    is_transient,
)
from .files import disk_full, is_disk_full, sha256_file
from .pgp import is_openpgp
from .plan import Item, conflict_key
from .remote import Remote
from .report import IN_REPORT, FileOutcome, Outcome, Reason
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
                self.keep_conflict(item=item, path=delivered, why=item.conflict, meta=meta,
                                   statement=self._decrypted_copy(delivered, plain))
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
        except DiskFullError as exc:  # staging, gpg's output or the archive: named, nothing lost
            self._fail(item, Reason.DISK_FULL, exc)
        except DecryptionError as exc:  # its own reason code when it has one (integrity, no-key, ...)
            self._fail(item, getattr(exc, "reason", "") or Reason.DECRYPTION, exc)
        except ArchiveError as exc:
            self._fail(item, Reason.ARCHIVE, exc)
        except ContentMismatch as exc:
            self._fail(item, Reason.MISMATCH, exc)
        except IbreportsError as exc:
            self._fail(item, Reason.ERROR, exc)
        except OSError as exc:  # a local I/O error: this file fails, nothing is lost
            if is_disk_full(exc):
                self._fail(item, Reason.DISK_FULL, self._staging_full(item, exc))
            else:
                self._set(out, Outcome.FAILED, Reason.IO, f"local I/O error: {exc.strerror or exc}")
                log.error("%s: %s failed: %s", self.source.name, item.entry.name, out.reason, extra=IN_REPORT)
        except Exception as exc:  # noqa: BLE001 - a bug fails this file, not the run
            self._set(out, Outcome.FAILED, Reason.ERROR, f"unexpected {type(exc).__name__}: {str(exc)[:300]}")
            log.error("%s: %s failed: %s", self.source.name, item.entry.name, out.reason,
                      exc_info=log.isEnabledFor(logging.DEBUG), extra=IN_REPORT)
        finally:
            delivered.unlink(missing_ok=True)
            plain.unlink(missing_ok=True)
            run.progress("files", 1)

    # -- branches -----------------------------------------------------------------------------

    def encrypted(self, *, item: Item, path: Path, plain: Path, meta: dict[str, str]) -> bool | None:
        """An OpenPGP delivery: keep the original (when configured), decrypt strictly, archive the statement.

        When the archive holds the statement or this original already (another source, a redelivery,
        something planted at the key), nothing is stored before the content is compared: a delivery
        that contradicts the archive goes to quarantine, never in as the encrypted original."""
        out, run = item.outcome, self.run
        keep = run.config.archive.keep_encrypted
        held = run.snapshot()
        if item.statement_key in held or (keep and item.original_key in held):
            return self._compare_first(item=item, path=path, plain=plain, meta=meta, keep=keep)
        original: Future | None = None
        wrote_original = False
        if keep:
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
        # (Another run may archive other content at the statement key meanwhile: then the original
        # above is in, and the conflict below is recorded and stays open until a person resolves it.)
        wrote = self.statement(item=item, path=plain, sha256=None, meta=meta, evidence=path)
        if wrote is None:
            return None
        # The statement was archived before (keep_encrypted turned on later): the original completes it.
        return wrote or (wrote_original and item.statement_key in run.inventory)

    def _compare_first(self, *, item: Item, path: Path, plain: Path, meta: dict[str, str], keep: bool) -> bool | None:
        """Decrypt, compare with what the archive holds, and only then store (see ``encrypted``)."""
        out = item.outcome
        decrypted = self.run.decryptor().decrypt(path, plain)  # a failure stores nothing: the server keeps it
        meta["pgp-key"], meta["pgp-signature"] = decrypted.key, decrypted.signature
        out.signature = decrypted.signature
        wrote = self.statement(item=item, path=plain, sha256=None, meta=meta, evidence=path)
        if wrote is None or not keep:
            return wrote
        wrote_original = self._put(item.original_key, path, out.sha256, dict(meta), private=False)
        out.archive_keys.append(item.original_key)
        if not wrote_original:
            archived = self._archived_sha256(item.original_key)
            if archived != out.sha256:
                why = (f"the archived original {item.original_key} has SHA-256 {archived[:16]}..., "
                       f"this delivery's {out.sha256[:16]}...")
                self.keep_conflict(item=item, path=path, why=why, meta=meta, against=item.original_key,
                                   archived=archived)
                return None
            self.run.confirmed(item.original_key, archived)
        return wrote or wrote_original

    def plain(self, *, item: Item, path: Path, meta: dict[str, str]) -> bool | None:
        """An unencrypted delivery (allowed for this source): archived as it is."""
        return self.statement(item=item, path=path, sha256=item.outcome.sha256, meta=meta, evidence=path)

    def not_pgp(self, *, item: Item, path: Path, meta: dict[str, str]) -> None:
        """Named as encrypted but not OpenPGP: keep the evidence, refuse to call it a statement.

        When the statement is archived already (another source), the evidence is not stored as this
        source's original: that would make the statement look complete for it. It stays on the server."""
        if item.statement_key not in self.run.snapshot():
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
        content.check(path, item.statement)  # another account or period inside: never filed under this name
        written = self._put(item.statement_key, path, sha256, meta, private=True)
        out.archive_keys.append(item.statement_key)
        if written:
            return True
        archived, ours = self._archived_sha256(item.statement_key), sha256 or sha256_file(path)
        if archived == ours:
            self.run.confirmed(item.statement_key, archived)
            return False
        why = f"the archived statement {item.statement_key} has SHA-256 {archived[:16]}..., this delivery's {ours[:16]}..."
        self.keep_conflict(item=item, path=evidence, why=why, meta=meta, against=item.statement_key, archived=archived,
                           statement=path if path != evidence else None)
        return None

    def keep_conflict(self, *, item: Item, path: Path, why: str, meta: dict[str, str], against: str = "",
                      archived: str = "", statement: Path | None = None) -> None:
        """Keep the delivery apart under ``conflicts/`` with a conflict record, and fail it: the conflict
        stays open (every run exits 1) until a person resolves it (``ibreports conflicts resolve``)."""
        out, run = item.outcome, self.run
        delivered = out.sha256 or sha256_file(path)
        key = conflict_key(self.source.name, item.statement, delivered)
        against = against or item.conflict_with or item.statement_key
        kept = {key: delivered}
        self._put(key, path, delivered, {**meta, "conflict": why[:200]}, private=True)
        out.archive_keys.append(key)
        if statement is not None:  # the decrypted statement, ready should a person choose it
            kept[key + conflicts.STATEMENT] = self._put_hashed(key + conflicts.STATEMENT, statement, meta)
            out.archive_keys.append(key + conflicts.STATEMENT)
        record = conflicts.record_key(key)
        held = run.snapshot()
        if conflicts.resolution_key(record) in held:  # a person settled this very delivery already
            self._set(out, Outcome.ALREADY_ARCHIVED, Reason.CONFLICT,
                      f"a resolved conflict ({conflicts.conflict_id(record)}): see `ibreports conflicts list --all`")
            return
        if record not in held:
            data = conflicts.new_record(
                quarantine=key, source=self.source.name, remote_name=item.entry.name,
                statement_date=item.statement.statement_date.isoformat(), run_id=run.report.run_id, key=against,
                archived_sha256=archived or self._archived_sha256(against), delivered_sha256=delivered, why=why,
                kept=kept)
            assert run.staging is not None
            if written := conflicts.write_once(run.archive, record, data, run.staging):
                run.archived(record, 0, written)
        kept_note = "; the server's copy was not deleted" if self.source.delete_after_archive else ""
        self._set(out, Outcome.FAILED, Reason.CONFLICT,
                  f"conflict: {why}; the archived copy was not replaced and this delivery is kept apart as {key}"
                  f"{kept_note}. It stays open (exit 1) until resolved: `ibreports conflicts list`, then "
                  f"`ibreports conflicts resolve {conflicts.conflict_id(record)} --keep archived|new --reason TEXT` "
                  "(ask IBKR if unsure).")
        log.error("%s: %s: %s", self.source.name, item.entry.name, out.reason, extra=IN_REPORT)

    def _decrypted_copy(self, path: Path, plain: Path) -> Path | None:
        """The statement inside a conflicting encrypted delivery, kept beside it for a person to compare."""
        if not is_openpgp(path):
            return None
        try:
            self.run.decryptor().decrypt(path, plain)
        except DecryptionError as exc:
            log.warning("%s: a conflicting delivery could not be decrypted (%s); kept as delivered", self.source.name, exc)
            return None
        return plain

    def _put_hashed(self, key: str, path: Path, meta: dict[str, str]) -> str:
        sha256 = sha256_file(path)
        self._put(key, path, sha256, meta, private=True)
        return sha256

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
            except OSError as exc:  # writing the staged copy (the remote removed the partial file)
                if is_disk_full(exc):
                    raise self._staging_full(item, exc) from None
                raise
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
        archived = self._archived_sha256(key)
        if archived == (sha256 or sha256_file(path)):
            self.run.confirmed(key, archived)
        else:
            raise ArchiveError(
                f"The archived {key} differs from the file on the server (SHA-256 mismatch); "
                "nothing was rewritten and the server's copy was not deleted.",
                "Compare both copies before deciding which to keep.",
            )
        return False

    def _put(self, key: str, path: Path, sha256: str | None, meta: dict[str, str], private: bool) -> bool:
        """archive.put, tried again while the store is unreachable (within the reconnect window)."""
        size = path.stat().st_size
        sha256 = sha256 or sha256_file(path)  # the ledger (the run record) keeps what was written
        attempt = 0
        while True:
            try:
                written = self.run.archive.put(key, path, sha256, meta, private=private)
                self.store_outage.ok()
                if written:
                    self.run.archived(key, size, sha256)
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

    def _staging_full(self, item: Item, exc: OSError) -> DiskFullError:
        assert self.run.staging is not None
        kept = ("the file stays on the server, no partial copy was kept, and the next run fetches it."
                if item.entry.path is None else "no partial copy was kept, and the next run asks for it again.")
        return disk_full(self.run.staging, what="the staging folder", subject=item.entry.name,
                         needed=item.entry.size, move="set [run] staging_dir to a folder on a larger disk",
                         kept=kept, code=exc.errno)

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
        log.error("%s: %s failed: %s", self.source.name, item.entry.name, exc, extra=IN_REPORT)

    @staticmethod
    def _set(out: FileOutcome, outcome: Outcome, code: Reason | str, reason: str) -> None:
        out.outcome, out.code, out.reason = outcome, code, reason
