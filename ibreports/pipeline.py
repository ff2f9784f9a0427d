"""The retrieval run: per source, list (or produce) -> plan (plan.py, pure) -> process each file
(process.py: download -> verify -> archive original -> decrypt -> archive statement) -> record.

The archive is the only state: object keys are deterministic (statements.py), so a run lists the
archive once and fetches only what is missing. No exception of any kind escapes a source: it is
recorded for that source and the run goes on; the run record is always written.
"""

from __future__ import annotations

import inspect
import logging
import secrets
import threading
import time
from datetime import date, datetime, timezone
from pathlib import Path

from .threads import ContextThreadPool
from .archive import open_archive
from .config import Config, SourceConfig
from .conflicts import conflict_id, open_records
from .errors import ArchiveConfigError, ArchiveUnreachable, IbreportsError, SourceDeadline
from .files import disk_full, is_disk_full
from .plan import Entry, RunOptions, Rules, plan
from .process import Worker
from .runstate import Halted, ProgressHook, RunState
from .remote import Remote
from .remote.registry import kind_of
from .report import IN_REPORT, Outcome, Reason, RunReport

log = logging.getLogger("ibreports.pipeline")

__all__ = ["fetch", "RunOptions", "ProgressHook"]


def fetch(
    config: Config,
    sources: list[str] | None = None,
    since: date | None = None,
    until: date | None = None,
    dry_run: bool = False,
    force: bool = False,
    progress: ProgressHook | None = None,
    origin: dict[str, str] | None = None,
    *,
    options: RunOptions | None = None,
) -> RunReport:
    """One retrieval run over the selected sources (all by default); ``options`` replaces the flags.

    ``origin`` goes into the run record as is (the flows put the Prefect flow run's id and URL there).
    """
    opts = options or RunOptions(tuple(sources) if sources else None, since, until, dry_run, force)
    selected = config.select(list(opts.sources) if opts.sources else None)
    now = datetime.now(timezone.utc)
    report = RunReport(
        run_id=now.strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3),
        started=now.isoformat(timespec="seconds"),
        dry_run=opts.dry_run,
        force=opts.force,
        sources=[s.name for s in selected],
        warn_days=config.retention.warn_days,
        origin=dict(origin or {}),
    )
    archive = open_archive(config.archive)
    if config.archive.object_lock is not None:  # a bucket that would not keep the retention: refuse before any download
        from .archive.objectlock import check_lock

        check_lock(archive)
    inventory = archive.inventory()
    with RunState(config, archive, inventory, report, progress) as run:
        for source in selected:
            if run.halted is not None:  # the archive refuses every write: said once, for the source that met it
                report.source_errors[source.name] = "not attempted: the archive refused writes (see above)."
                report.source_error_types[source.name] = type(run.halted).__name__
                continue
            _warn_plain_ftp(source, report)
            try:
                _source(run, source, opts)
            except Exception as exc:  # noqa: BLE001 - nothing escapes a source: recorded, the run goes on
                _record(report, source.name, exc)
    # Conflicts are durable: every run exits 1 while one is open (this run's and earlier ones).
    report.open_conflicts = [conflict_id(k) for k in open_records(inventory)]
    report.finished = datetime.now(timezone.utc).isoformat(timespec="seconds")
    if not opts.dry_run:
        key = f"runs/{now:%Y/%m}/{report.run_id}.json"
        try:
            archive.put_bytes(key, report.to_record(), {"kind": "run-record"})
            report.record_key = key
        except Exception as exc:  # noqa: BLE001 - the per-file outcomes still reach the user
            log.error("the run record could not be written: %s", exc)
    log.info("run %s: %s", report.run_id, report.summary_line(), extra=IN_REPORT)
    return report


def _record(report: RunReport, source: str, exc: BaseException) -> None:
    if isinstance(exc, IbreportsError):
        log.error("%s: %s", source, exc, extra=IN_REPORT)
        message = str(exc)
    else:  # a bug: the type and message say what; the traceback only with --debug
        log.error("%s: unexpected %s: %s", source, type(exc).__name__, exc,
                  exc_info=log.isEnabledFor(logging.DEBUG), extra=IN_REPORT)
        message = (f"unexpected {type(exc).__name__}: {str(exc)[:300]}; the other sources went on. "
                   "Run again with --debug for the traceback and report it.")
    report.source_errors[source] = message
    report.source_error_types[source] = type(exc).__name__


def _warn_plain_ftp(source: SourceConfig, report: RunReport) -> None:
    # Any kind whose settings have ``tls = false`` (today: ftp); no switch on the kind's name.
    if getattr(source.settings, "tls", None) is False:
        note = (f"source {source.name}: {source.kind} without TLS (tls = false) sends the password and every "
                "file in clear; "
                "anyone on the network path can read them or forge deliveries. Set tls = true if the server "
                "offers FTPS (ibreports doctor's tls step shows whether it does).")
        log.warning(note, extra=IN_REPORT)
        report.notes.append(note)


def _open(source: SourceConfig) -> tuple[Remote, bool]:
    """Connect through the source kind's registration; (remote, has a listing)."""
    kind = kind_of(source)
    return kind.open(source), kind.capabilities.listing


def _source(run: RunState, source: SourceConfig, opts: RunOptions) -> None:
    deadline = time.monotonic() + run.config.run.source_deadline_minutes * 60
    remote, listing = _open(source)
    # At the deadline a watchdog closes the session: a listing the server trickles cannot hold the
    # run (downloads also check the deadline on every block they receive).
    expired = threading.Event()
    watchdog = threading.Timer(max(0.0, deadline - time.monotonic()), _expire, (remote, expired))
    watchdog.daemon = True
    watchdog.start()
    try:
        with remote:
            _work(run, source, opts, remote, listing, deadline, expired)
    finally:
        watchdog.cancel()


def _expire(remote: Remote, expired: threading.Event) -> None:
    expired.set()
    try:
        remote.close()
    except Exception:  # noqa: BLE001 - best effort: the session is being abandoned anyway
        pass


def _gather(run: RunState, source: SourceConfig, opts: RunOptions, remote: Remote, listing: bool,
            expired: threading.Event) -> list[Entry]:
    """The source's listing, or what an on-demand source produced; SourceDeadline when the watchdog cut it."""
    try:
        if listing:
            files = remote.list()
            # Lines the remote could not read are planned too, so the run names them instead of a log line.
            skipped = [Entry(name, 0, 0.0, defect=reason) for name, reason in getattr(files, "skipped", ())]
            return [Entry(f.name, f.size, f.mtime) for f in files] + skipped
        folder = run.private_folder(f"produced-{source.name}")  # on demand: made now, straight into staging
        extra = {}
        # It may skip what is archived already (--force: it makes everything again, to be verified).
        accepts = inspect.signature(remote.produce).parameters
        if not opts.force and "archived" in accepts:
            extra["archived"] = {k.rsplit("/", 1)[-1] for k in run.snapshot() if k.startswith("statements/")}
        if "reconnect_minutes" in accepts:  # a lost connection is tried again as long as for listing kinds
            extra["reconnect_minutes"] = run.config.run.reconnect_minutes
        return [Entry(p.name, p.size, time.time(), Path(p.path), p.sha256)
                for p in remote.produce(opts.since, opts.until, folder, **extra)]
    except OSError as exc:
        if not is_disk_full(exc):
            raise
        raise disk_full(run.staging or Path("."), what="the staging folder", subject=f"a statement of {source.name}",
                        needed=None, code=exc.errno, move="set [run] staging_dir to a folder on a larger disk",
                        kept="no partial statement was kept, and the next run asks for it again.") from None
    except Exception:
        if expired.is_set():
            raise _deadline_error(run, source, "while listing") from None
        raise


def _deadline_error(run: RunState, source: SourceConfig, where: str) -> SourceDeadline:
    minutes = run.config.run.source_deadline_minutes
    return SourceDeadline(
        f"{source.name}: the source ran longer than [run] source_deadline_minutes ({minutes:g}) {where}; "
        "its files wait for the next run.",
        "If the server is just slow and this repeats, raise source_deadline_minutes; if it trickles, tell IBKR.",
    )


def _work(run: RunState, source: SourceConfig, opts: RunOptions, remote: Remote, listing: bool, deadline: float,
          expired: threading.Event) -> None:
    entries = _gather(run, source, opts, remote, listing, expired)
    rules = Rules(
        source=source.name, keep_encrypted=run.config.archive.keep_encrypted, allow_plain=source.allow_plain,
        settle_seconds=source.settle_seconds, purge_days=run.config.retention.purge_days,
        warn_days=run.config.retention.warn_days, since=opts.since, until=opts.until, force=opts.force,
        listing=listing,
    )
    planned = plan(entries, run.snapshot(), rules, time.time())
    run.report.files.extend(planned.rows)
    for row in planned.rows:
        if row.outcome == Outcome.REJECTED:
            log.warning("%s: rejected %r: %s", source.name, row.name[:80], row.reason, extra=IN_REPORT)
    run.progress("total-files", len(planned.items))
    run.progress("total-bytes", planned.total_bytes)
    if opts.dry_run:
        for item in planned.items:
            item.outcome.outcome = Outcome.PLANNED
            run.progress("files", 1)
        return
    if planned.items:
        run.warm_up()  # gpg key import and passphrase check while the first downloads run
    worker = Worker(run, source, remote, force=opts.force, deadline=deadline)
    workers = max(1, min(run.config.run.workers, source.connections))
    with ContextThreadPool(workers, thread_name_prefix=f"fetch-{source.name}") as pool:
        list(pool.map(worker.process, planned.items))
    _after(run, source, worker)


def _after(run: RunState, source: SourceConfig, worker: Worker) -> None:
    """Turn what stopped the source (archive refusal, outage past the window, deadline) into its error."""
    stop = worker.stopped
    if stop is None:
        return
    if isinstance(stop, Halted):
        stop = stop.cause
    left = [f for f in run.report.files if f.source == source.name and f.code == Reason.DEADLINE]
    if isinstance(stop, SourceDeadline) and left:
        stop = SourceDeadline(f"{stop.message} {len(left)} file(s) were left for the next run.", stop.remedy)
    if isinstance(stop, (ArchiveConfigError, ArchiveUnreachable)):
        run.halted = stop  # the archive refuses everything: the other sources are not attempted
    raise stop
