"""The planner: what to do with each file of a listing, as a pure function of plain data.

``plan(listing, inventory, rules, now) -> Plan`` does no I/O and keeps no state: the same
inputs give the same plan, so every decision (settle, purge horizon, since/until, plain and
encrypted twins, conflicts, on-demand sources) is tested in milliseconds.

Rules for plain deliveries (a plain file must never stand in for a verified statement):

- a plain ``X.xml`` whose encrypted twin (``X.xml.pgp|gpg|asc``) is in the same listing, or was
  archived before (its encrypted original is in the inventory), is refused: ``shadow``;
- a source with ``allow_plain = false`` (FTP's default) refuses plain deliveries: ``plain-refused``;
- a statement already archived with a different size than a new plain delivery of it is a
  ``conflict`` (the delivery is downloaded and kept aside, the archived statement never replaced);
  the same holds for an encrypted original archived with another size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path

from . import statements
from .archive import ObjectInfo
from .conflicts import open_deliveries, resolved_deliveries
from .errors import RemoteFileError
from .report import FileOutcome, Outcome, Reason
from .statements import ENCRYPTION_SUFFIXES, Statement


@dataclass(frozen=True)
class RunOptions:
    """What the user asked of one run (CLI flags, flow parameters)."""

    sources: tuple[str, ...] | None = None  # None: every configured source
    since: date | None = None
    until: date | None = None
    dry_run: bool = False
    force: bool = False


@dataclass(frozen=True)
class Rules:
    """Everything the planner needs to know about a source, the archive and the run."""

    source: str
    keep_encrypted: bool = True
    allow_plain: bool = True
    settle_seconds: int = 0
    purge_days: int = 100
    warn_days: int = 14
    since: date | None = None
    until: date | None = None
    force: bool = False
    listing: bool = True  # False: an on-demand source (no settle, no purge horizon)


@dataclass(frozen=True)
class Entry:
    """One delivery to plan: a listed remote file, or a file an on-demand source produced."""

    name: str
    size: int
    mtime: float
    path: Path | None = None  # produced files: already in staging
    sha256: str = ""
    defect: str = ""  # a listing line the remote could not read (bad size or date): reported, never fetched


@dataclass
class Item:
    """One planned file: everything a worker needs, as plain data."""

    index: int
    entry: Entry
    statement: Statement
    outcome: FileOutcome
    original_key: str
    statement_key: str
    conflict: str = ""  # non-empty: the planner already knows this delivery conflicts (why)
    recheck: bool = False  # archived already; the content is at hand (on demand): compare, never rewrite
    conflict_with: str = ""  # the archived key the conflict contradicts


@dataclass
class Plan:
    rows: list[FileOutcome] = field(default_factory=list)  # every row the run reports, in order
    items: list[Item] = field(default_factory=list)  # the files to fetch and archive

    @property
    def total_bytes(self) -> int:
        return sum(i.entry.size for i in self.items)


def plan(listing: list[Entry], inventory: dict[str, ObjectInfo], rules: Rules, now: float) -> Plan:
    """Decide for each entry: fetch it, or report why not. Oldest first (closest to the purge)."""
    result = Plan()
    encrypted_names = {_decrypted(e.name) for e in listing if _encrypted(e.name)}
    verified = _verified_statements(inventory)
    resolved = resolved_deliveries(inventory)
    contested = open_deliveries(inventory)
    for entry in sorted(listing, key=lambda e: (_finite(e.mtime), e.name)):
        row = _row(entry, rules, now)
        try:
            statements.check_name(entry.name)
        except RemoteFileError as exc:
            _set(row, Outcome.REJECTED, Reason.BAD_NAME, exc.message)
            result.rows.append(row)
            continue
        if entry.defect:
            _set(row, Outcome.REJECTED, Reason.BAD_ENTRY, f"the server's listing line for it is unreadable ({entry.defect}); it was not downloaded.")
            result.rows.append(row)
            continue
        if not isinstance(entry.size, int) or entry.size < 0:  # it would wait for ever otherwise
            _set(row, Outcome.REJECTED, Reason.BAD_ENTRY,
                 f"the server listed an impossible size ({entry.size}); it was not downloaded.")
            result.rows.append(row)
            continue
        st = statements.parse(entry.name, entry.mtime)
        if st.refusal:  # e.g. dated 9999-12-31: never archived under that date
            _set(row, Outcome.REJECTED, Reason.BAD_DATE, st.refusal)
            result.rows.append(row)
            continue
        needed = statements.needed_keys(rules.source, st, rules.keep_encrypted)
        archived = all(k in inventory for k in needed) and (rules.source, entry.name) not in contested
        if (rules.since and st.statement_date < rules.since) or (rules.until and st.statement_date > rules.until):
            if not archived and row.days_left <= rules.warn_days:
                _set(row, Outcome.OUT_OF_RANGE, Reason.OUT_OF_RANGE, "outside --since/--until and not archived")
                result.rows.append(row)
            continue
        result.rows.append(row)
        okey, skey = statements.original_key(rules.source, st), statements.statement_key(st)
        conflict, against = "", skey
        if not st.encryption:
            refusal = _refuse_plain(entry, st, skey, rules, encrypted_names, verified)
            if refusal:
                _set(row, Outcome.REJECTED, *refusal)
                continue
            archived_info = inventory.get(skey)
            if archived_info is not None and archived_info.size != entry.size:
                conflict = (f"the archived statement {skey} has {archived_info.size} bytes, "
                            f"this delivery {entry.size}")
        elif rules.keep_encrypted and (known := inventory.get(okey)) is not None and known.size != entry.size:
            conflict, against = f"the archived original {okey} has {known.size} bytes, this delivery {entry.size}", okey
        # A produced file's content is already here: compare it (SHA-256) rather than trust the size,
        # from the inventory when the archive records hashes, else by reading the archived object.
        recheck = archived and entry.path is not None
        recorded = getattr(inventory.get(skey), "sha256", None)
        if recheck and recorded and entry.sha256 and not conflict:
            recheck = False
            if recorded != entry.sha256:
                conflict = f"the archived statement {skey} has SHA-256 {recorded[:16]}..., this one {entry.sha256[:16]}..."
        if archived and not rules.force and not conflict and not recheck:
            row.outcome, row.archive_keys = Outcome.ALREADY_ARCHIVED, needed
            continue
        if not rules.force and resolved.get((rules.source, entry.name)) == entry.size:
            # A conflict a person resolved (ibreports conflicts resolve): the same delivery is settled.
            _set(row, Outcome.ALREADY_ARCHIVED, Reason.CONFLICT, "a resolved conflict: see `ibreports conflicts list --all`")
            continue
        if rules.listing and _settling(now - _finite(entry.mtime), rules.settle_seconds):
            _set(row, Outcome.WAITING, Reason.SETTLING,
                 f"modified {int(now - entry.mtime)} s ago; fetched once it is {rules.settle_seconds} s old")
            continue
        result.items.append(Item(len(result.items), entry, st, row, okey, skey, conflict, recheck,
                                 against if conflict else ""))
    return result


def conflict_key(source: str, st: Statement, sha256: str) -> str:
    """Where a delivery that conflicts with the archive is kept: never over the archived statement."""
    return f"conflicts/{source}/{st.statement_date:%Y/%m}/{statements.check_name(st.name)}.{sha256[:16]}"


def _refuse_plain(entry: Entry, st: Statement, skey: str, rules: Rules, encrypted_names: set[str],
                  verified: set[str]) -> tuple[Reason, str] | None:
    if entry.name in encrypted_names:
        return Reason.SHADOW, (f"a plain file named like the encrypted delivery {entry.name}.pgp (or .gpg/.asc) "
                               "on the same server; only the encrypted one is trusted. Remove the plain copy "
                               "from the server if it is not IBKR's.")
    if skey in verified:
        return Reason.SHADOW, (f"a plain file for a statement already archived from an encrypted delivery ({skey}); "
                               "the verified statement stays. Remove the plain copy from the server if it is "
                               "not IBKR's.")
    if not rules.allow_plain:
        return Reason.PLAIN_REFUSED, (f"not encrypted, and source '{rules.source}' has allow_plain = false "
                                      "(IBKR encrypts every FTP delivery). Set allow_plain = true for this "
                                      "source only if it is expected to deliver unencrypted files.")
    return None


def _verified_statements(inventory: dict[str, ObjectInfo]) -> set[str]:
    """Archived statements that came from an encrypted delivery: the statement key is there and so is an
    encrypted original of it (``encrypted/<source>/<YYYY>/<MM>/<name>.pgp``). An original alone (it failed
    to decrypt) proves nothing about the statement."""
    keys = set()
    for key in inventory:
        parts = key.split("/")
        if len(parts) != 5 or parts[0] != "encrypted" or not _encrypted(parts[4]):
            continue
        st = statements.parse(parts[4], 0)
        skey = f"statements/{st.account or statements.UNSORTED}/{parts[2]}/{parts[3]}/{st.decrypted_name}"
        if skey in inventory:
            keys.add(skey)
    return keys


def _row(entry: Entry, rules: Rules, now: float) -> FileOutcome:
    printable = bool(entry.name) and entry.name.isprintable()
    st = statements.parse(entry.name, entry.mtime) if printable else None
    return FileOutcome(
        source=rules.source, name=entry.name, size=entry.size, mtime=entry.mtime,
        account=st.account if st else None,
        statement_date=(st.statement_date if st else _utc_date(entry.mtime)).isoformat(),
        outcome=Outcome.PLANNED,
        # An on-demand source keeps nothing for us to lose: never "at risk of purge".
        days_left=statements.days_left(entry.mtime, rules.purge_days, now) if rules.listing else rules.purge_days,
        sha256=entry.sha256,
    )


def _set(row: FileOutcome, outcome: Outcome, code: Reason, reason: str) -> None:
    row.outcome, row.code, row.reason = outcome, code, reason


def _encrypted(name: str) -> bool:
    stem, dot, suffix = name.rpartition(".")
    return bool(dot) and suffix.lower() in ENCRYPTION_SUFFIXES and stem not in ("", ".", "..")


def _decrypted(name: str) -> str:
    return name.rpartition(".")[0]


def _settling(age: float, settle_seconds: int) -> bool:
    """Too fresh to fetch. A date more than a day ahead is a wrong clock, not a file being written:
    waiting would last until that date, so it is fetched (the download's size checks still apply)."""
    return -86400 <= age < settle_seconds


def _finite(mtime: float) -> float:
    return mtime if isinstance(mtime, (int, float)) and math.isfinite(mtime) else 0.0


def _utc_date(mtime: float) -> date:
    try:
        return datetime.fromtimestamp(mtime, timezone.utc).date()
    except (ValueError, OverflowError, OSError, TypeError):
        return date(1970, 1, 1)
