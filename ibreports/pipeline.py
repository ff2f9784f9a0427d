"""The retrieval run: plan (remote listing minus archive inventory), then per file
download -> verify -> archive original -> decrypt -> archive statement -> record.

The archive is the only state: object keys are deterministic (statements.py), so a
run lists the archive once and fetches only what is missing. Stages pass plain
data (paths in a private staging folder, hashes, keys), never clients or bytes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Callable

from . import statements
from .archive import Archive, ObjectInfo, open_archive
from .config import Config, SourceConfig
from .errors import ConnectionFailure, DecryptionError, FileChangedError, IbreportsError, RemoteFileError
from .files import claim_workdir, private_base, release_workdir, sha256_file, sweep_abandoned
from .pgp import Decryptor, is_openpgp, sweep_abandoned_homes
from .remote import Remote, RemoteFile, open_remote
from .report import OUT_OF_RANGE, FileOutcome, RunReport

log = logging.getLogger("ibreports.pipeline")

ProgressHook = Callable[[str, int], None]  # ("files", n) | ("bytes", n) | ("total-files", n) | ("total-bytes", n)
DOWNLOAD_ATTEMPTS = 3
OVERLAP_BYTES = 4 << 20  # from this size, the original is archived while gpg decrypts
BULK_BYTES = 16 << 20  # from this size, downloads take turns (see _Run.download)
STAGING_PREFIX = "ibreports-staging-"


@dataclass
class _Item:
    """One planned file: everything a worker needs, as plain data."""

    index: int
    remote: RemoteFile
    statement: statements.Statement
    outcome: FileOutcome
    original_key: str
    statement_key: str


def fetch(
    config: Config,
    sources: list[str] | None = None,
    since: date | None = None,
    until: date | None = None,
    dry_run: bool = False,
    force: bool = False,
    progress: ProgressHook | None = None,
    origin: dict[str, str] | None = None,
) -> RunReport:
    """One retrieval run over the selected sources (all by default).

    ``origin`` goes into the run record as is (the flows put the Prefect flow run's id and URL there).
    """
    selected = config.select(sources)
    now = datetime.now(timezone.utc)
    report = RunReport(
        run_id=now.strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3),
        started=now.isoformat(timespec="seconds"),
        dry_run=dry_run,
        force=force,
        sources=[s.name for s in selected],
        warn_days=config.retention.warn_days,
        origin=dict(origin or {}),
    )
    archive = open_archive(config.archive)
    if config.archive.object_lock is not None:  # a bucket that would not keep the retention: refuse before any download
        from .archive.objectlock import check_lock

        check_lock(archive)
    inventory = archive.inventory()
    with _Run(config, archive, inventory, report, progress) as run:
        for source in selected:
            try:
                run.source(source, since, until, dry_run, force)
            except IbreportsError as exc:
                log.error("%s: %s", source.name, exc)
                report.source_errors[source.name] = str(exc)
                report.source_error_types[source.name] = type(exc).__name__
    report.finished = datetime.now(timezone.utc).isoformat(timespec="seconds")
    if not dry_run:
        key = f"runs/{now:%Y/%m}/{report.run_id}.json"
        try:
            archive.put_bytes(key, report.to_record(), {"kind": "run-record"})
            report.record_key = key
        except IbreportsError as exc:  # the per-file outcomes still reach the user
            log.error("the run record could not be written: %s", exc)
    log.info("run %s: %s", report.run_id, report.summary_line())
    return report


class _Run:
    """State of one run: archive, staging folder, lazily started decryptor."""

    def __init__(self, config: Config, archive: Archive, inventory: dict[str, ObjectInfo],
                 report: RunReport, progress: ProgressHook | None) -> None:
        self.config = config
        self.archive = archive
        self.inventory = inventory
        self.report = report
        self.progress = progress or (lambda event, n: None)
        self._decryptor: Decryptor | None = None
        self._decryptor_error: IbreportsError | None = None
        self._lock = threading.Lock()
        self.staging: Path | None = None
        self._staging_lock = -1
        self._bulk = threading.Lock()
        self.side: ThreadPoolExecutor | None = None

    def __enter__(self) -> "_Run":
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
        self.side = ThreadPoolExecutor(max(1, self.config.run.workers), thread_name_prefix="archive-original")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.side is not None:
            self.side.shutdown(wait=True)
        if self._decryptor is not None:
            self._decryptor.close()
        if self.staging is not None:
            release_workdir(self.staging, self._staging_lock)

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
        passphrase = pgp.passphrase.get() if pgp.passphrase else None
        return Decryptor(pgp.secret_key_files, passphrase, homes=min(2, os.cpu_count() or 1))

    # -- planning -------------------------------------------------------------------------

    def source(self, source: SourceConfig, since: date | None, until: date | None,
               dry_run: bool, force: bool) -> None:
        with open_remote(source) as remote:
            listing = remote.list()
            items = self.plan(source, listing, since, until, force)
            self.progress("total-files", len(items))
            self.progress("total-bytes", sum(i.remote.size for i in items))
            if dry_run:
                for item in items:
                    item.outcome.outcome = "planned"
                    self.progress("files", 1)
                return
            if items:  # start gpg (key import, passphrase check) while the first downloads run
                self.side.submit(self._warm_up)
            workers = max(1, min(self.config.run.workers, source.connections))
            with ThreadPoolExecutor(workers, thread_name_prefix=f"fetch-{source.name}") as pool:
                list(pool.map(lambda item: self.process(source, remote, item, force), items))

    def plan(self, source: SourceConfig, listing: list[RemoteFile], since: date | None,
             until: date | None, force: bool) -> list[_Item]:
        now = time.time()
        keep = self.config.archive.keep_encrypted
        items: list[_Item] = []
        for rf in sorted(listing, key=lambda f: (f.mtime, f.name)):  # oldest = closest to purge first
            st = statements.parse(rf.name, rf.mtime) if _printable(rf.name) else None
            outcome = FileOutcome(
                source=source.name, name=rf.name, size=rf.size, mtime=rf.mtime,
                account=st.account if st else None,
                statement_date=(st.statement_date if st else _utc_date(rf.mtime)).isoformat(),
                outcome="planned",
                days_left=statements.days_left(rf.mtime, self.config.retention.purge_days, now),
            )
            try:
                statements.check_name(rf.name)
            except RemoteFileError as exc:
                outcome.outcome, outcome.reason = "rejected", exc.message
                log.warning("%s: rejected remote name %r: %s", source.name, rf.name[:80], exc.message)
                self.report.files.append(outcome)
                continue
            assert st is not None
            needed = statements.needed_keys(source.name, st, keep)
            archived = all(k in self.inventory for k in needed)
            if (since and st.statement_date < since) or (until and st.statement_date > until):
                if not archived and outcome.days_left <= self.config.retention.warn_days:
                    outcome.outcome, outcome.reason = OUT_OF_RANGE, "outside --since/--until and not archived"
                    self.report.files.append(outcome)
                continue
            self.report.files.append(outcome)
            okey, skey = statements.original_key(source.name, st), statements.statement_key(st)
            if not force and archived:
                outcome.outcome, outcome.archive_keys = "already-archived", needed
                continue
            if now - rf.mtime < source.settle_seconds:
                outcome.outcome = "waiting"
                outcome.reason = f"modified {int(now - rf.mtime)} s ago; fetched once it is {source.settle_seconds} s old"
                continue
            items.append(_Item(len(items), rf, st, outcome, okey, skey))
        return items

    # -- one file -------------------------------------------------------------------------

    def process(self, source: SourceConfig, remote: Remote, item: _Item, force: bool) -> None:
        out = item.outcome
        assert self.staging is not None
        encrypted = self.staging / f"{item.index}.download"
        plain = self.staging / f"{item.index}.plain"
        # An object that was already there is compared, not trusted, before the server's copy goes.
        verify = force or source.delete_after_archive
        try:
            out.sha256 = self.download(remote, item, encrypted)
            meta = {
                "source": source.name,
                "remote-name": item.remote.name,
                "remote-mtime": str(int(item.remote.mtime)),
                "original-sha256": out.sha256,
            }
            if is_openpgp(encrypted):
                original, wrote_original = None, False
                if self.config.archive.keep_encrypted:
                    # Big files: archive the original (I/O, fsync) while gpg decrypts (CPU).
                    args = (out, item.original_key, encrypted, out.sha256, dict(meta), verify, False)
                    if item.remote.size >= OVERLAP_BYTES:
                        original = self.side.submit(self.store, *args)
                    else:
                        wrote_original = self.store(*args)
                try:
                    meta["pgp-key"] = self.decryptor().decrypt(encrypted, plain)
                finally:
                    if original is not None:
                        wrote_original = original.result()  # an archive failure outranks a decryption failure
                    encrypted.unlink(missing_ok=True)
                # No second hash of the plaintext here: there is nothing independent to compare with.
                wrote = self.store(out, item.statement_key, plain, None, meta, verify, private=True)
                # The statement was archived before (keep_encrypted turned on later): the original completes it.
                wrote = wrote or (wrote_original and item.statement_key in self.inventory)
            elif item.statement.encryption:
                # Named as encrypted but not OpenPGP: keep the evidence, refuse to call it a statement.
                self.store(out, item.original_key, encrypted, out.sha256, meta, verify, private=False)
                raise DecryptionError(
                    "Named as encrypted but the content is not an OpenPGP message "
                    + ("(empty file)." if item.remote.size == 0 else "(corrupted or truncated)."),
                    "The encrypted original is archived; ask IBKR to redeliver the file.",
                )
            else:  # sFTP deliveries may be plain XML/CSV: archived as they are
                wrote = self.store(out, item.statement_key, encrypted, out.sha256, meta, verify, private=True)
            if source.delete_after_archive:
                remote.delete(item.remote.name)
                out.deleted_from_server = True  # shown and recorded: the server's copy is gone
                log.info("%s: deleted %s from the server (archived and verified)", source.name, item.remote.name)
            # "archived" only by the run that wrote the file's last missing object, so two runs at
            # once never both count a file; --force reports what it compared as "verified".
            out.outcome = "archived" if wrote else "verified" if force else "already-archived"
            if out.outcome == "already-archived":
                out.reason = "archived meanwhile by another run"
        except FileChangedError as exc:  # still being written: complete next run, never half
            out.outcome, out.reason = "waiting", str(exc)
            log.info("%s: %s", source.name, exc)
        except IbreportsError as exc:
            out.outcome, out.reason = "failed", str(exc)
            log.error("%s: %s failed: %s", source.name, item.remote.name, exc)
        except OSError as exc:  # e.g. a full disk under staging: this file fails, nothing is lost
            out.outcome, out.reason = "failed", f"local I/O error: {exc.strerror or exc}"
            log.error("%s: %s failed: %s", source.name, item.remote.name, out.reason)
        finally:
            encrypted.unlink(missing_ok=True)
            plain.unlink(missing_ok=True)
            self.progress("files", 1)

    def download(self, remote: Remote, item: _Item, dest: Path) -> str:
        """Download with bounded retries (a dropped connection costs a retry, not the file); returns the SHA-256."""
        for attempt in range(1, DOWNLOAD_ATTEMPTS + 1):
            dest.unlink(missing_ok=True)
            try:
                # Big files one at a time: they share one connection's bandwidth anyway, and the
                # first one done is decrypted and archived while the next downloads.
                with self._bulk if item.remote.size >= BULK_BYTES else contextlib.nullcontext():
                    return remote.download(item.remote.name, dest, item.remote.size, lambda n: self.progress("bytes", n))
            except ConnectionFailure as exc:
                if attempt == DOWNLOAD_ATTEMPTS or type(exc) is not ConnectionFailure:
                    raise
                log.warning("%s: attempt %d failed (%s); retrying", item.remote.name, attempt, exc.message)
                time.sleep(min(2 ** attempt, 10) * 0.5)

    def store(self, out: FileOutcome, key: str, path: Path, sha256: str | None, meta: dict[str, str], verify: bool,
              private: bool) -> bool:
        """Put ``key`` unless present (True when written); with ``verify``, compare an existing object
        instead of rewriting it."""
        written = self.archive.put(key, path, sha256, meta, private=private)
        out.archive_keys.append(key)
        if written or not verify:
            return written
        assert self.staging is not None
        check = self.staging / f"verify-{secrets.token_hex(4)}"
        try:
            self.archive.get(key, check)
            if sha256_file(check) != (sha256 or sha256_file(path)):
                raise RemoteFileError(
                    f"The archived {key} differs from the file on the server (SHA-256 mismatch); "
                    "nothing was rewritten and the server's copy was not deleted.",
                    "Compare both copies before deciding which to keep.",
                )
        finally:
            check.unlink(missing_ok=True)
        return False


def _printable(name: str) -> bool:
    return bool(name) and name.isprintable()


def _utc_date(mtime: float) -> date:
    return datetime.fromtimestamp(mtime, timezone.utc).date()
