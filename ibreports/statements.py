"""Statement file names: safety check, best-effort grammar, archive keys, purge horizon.

Pure functions, no I/O. IBKR's delivery names (``GRAMMAR``; tests/test_statements.py
holds the table of real ones) are

- ``<account>.<query>.<from>[.<to>].<fmt>[.<pgp|gpg|asc>]``: Flex queries (activity, trade
  confirmations, MTM, ...), e.g. ``U1234567.DailyActivity.20261101.20261101.xml.pgp``; the
  query is IBKR's name of the query as typed in Client Portal, so it may hold spaces and
  dots (``U1234567.Daily Activity.20261101.20261101.xml``);
- ``<account>_<kind>_<from>[_<to>].<fmt>[...]``: statements IBKR names itself, e.g.
  ``U1234567_Quarterly_20261001_20261231.zip.pgp``, ``U1234567_Activity_20261101.pdf``
  (the kind may hold underscores, or be absent: ``U1234567_20261101.xml``).

Accounts are ``U1234567``, ``DU1234567`` (paper), ``F1234567`` (advisor master) and the
like. Anything else still parses, with ``parsed=False`` and the file's date.

Archive layout (deterministic, so a run lists the archive once and fetches the rest):

- ``encrypted/<source>/<YYYY>/<MM>/<name>``: the file exactly as delivered;
- ``statements/<account or _unsorted>/<YYYY>/<MM>/<decrypted name>``: the statement.

``YYYY/MM`` come from the statement date: the period end, else the file's UTC date.
The same statement delivered by two sources maps to one statement key.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone

from .errors import ConfigError, RemoteFileError

MAX_NAME_BYTES = 255
ENCRYPTION_SUFFIXES = ("pgp", "gpg", "asc")
FORMATS = {"xml", "csv", "zip", "txt", "pdf", "html", "htm", "json", "tsv", "xls", "xlsx", "gz", "qfx", "ofx"}
ACCOUNT = re.compile(r"[A-Z]{1,3}\d{5,10}")
QUERY = re.compile(r"[A-Za-z0-9_-]+")
DATE = re.compile(r"\d{8}")
UNSORTED = "_unsorted"
PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")  # IBKR's names: safe at a glance
CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
SURROGATE = re.compile("[\ud800-\udfff]")
DAY = 86400.0
EARLIEST = date(1990, 1, 1)  # no IBKR statement is older; a name dated before it is refused
AHEAD_DAYS = 366  # nor dated more than a year ahead (e.g. 99991231)


def _shown(name: str) -> str:
    """repr() of a name, cut to ~80 characters: safe in logs and messages."""
    text = repr(name)
    return text if len(text) <= 80 else text[:77] + "..."


def check_name(name: str) -> str:
    """Return ``name`` if it is a safe plain file name; RemoteFileError naming the problem otherwise."""
    if isinstance(name, str) and PLAIN_NAME.fullmatch(name):  # the common case, in one step
        return name
    problem = None
    if not isinstance(name, str):
        problem = "is not text"
    elif name == "":
        problem = "is empty"
    elif name in (".", ".."):
        problem = "is a relative folder reference"
    elif "/" in name or "\\" in name:
        problem = "contains a path separator"
    elif "\0" in name:
        problem = "contains a NUL byte"
    elif CONTROL.search(name):
        problem = "contains a control character"
    elif SURROGATE.search(name):
        problem = "is not valid UTF-8"
    elif not name.isprintable():
        # Line/paragraph separators, bidi overrides, unassigned code points: log spoofing risks.
        problem = "contains an invisible or non-printable character"
    elif len(name.encode("utf-8")) > MAX_NAME_BYTES:
        problem = f"is longer than {MAX_NAME_BYTES} bytes"
    if problem:
        shown = _shown(name) if isinstance(name, str) else type(name).__name__
        raise RemoteFileError(
            f"Remote file name {shown} {problem}; it was not downloaded.",
            "Remove or rename the file on the server if it is yours.",
        )
    return name


@dataclass(frozen=True)
class Statement:
    """What a file name says about a statement (best effort)."""

    name: str
    account: str | None
    query: str | None
    period_start: date | None
    period_end: date | None
    fmt: str | None
    encryption: str | None
    statement_date: date
    parsed: bool
    refusal: str = ""  # non-empty: the name is refused, and why (a date outside the sane window)

    @property
    def decrypted_name(self) -> str:
        """The name without its .pgp/.gpg/.asc suffix (unchanged when not named as encrypted)."""
        if self.encryption:
            return self.name[: -(len(self.encryption) + 1)]
        return self.name


def _utc_date(mtime: float) -> date:
    try:
        if not math.isfinite(mtime):
            raise ValueError
        return datetime.fromtimestamp(mtime, timezone.utc).date()
    except (ValueError, OverflowError, OSError, TypeError):
        return date(1970, 1, 1)  # an absurd timestamp must not stop the run


def _date(text: str) -> date | None:
    if not DATE.fullmatch(text):
        return None
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        return None


def _split_dates(parts: list[str]) -> tuple[list[str], date, date] | None:
    """(the parts before the dates, first date, last date) when ``parts`` end in one or two dates."""
    for count in (2, 1):
        if len(parts) >= count:
            days = [_date(p) for p in parts[-count:]]
            if all(days) and days[0] <= days[-1]:
                return parts[:-count], days[0], days[-1]  # type: ignore[return-value]
    return None


def _dotted(stem: str) -> tuple[str, str | None, date, date] | None:
    """``<account>.<query>.<from>[.<to>]``: the query may hold dots and spaces, never a date part."""
    parts = stem.split(".")
    if not ACCOUNT.fullmatch(parts[0]):
        return None
    found = _split_dates(parts[1:])
    if found is None:
        return None
    middle, start, end = found
    query = ".".join(middle)
    # A date among several query parts would make the dates ambiguous; one query part may be anything.
    if not middle or any(not p or (len(middle) > 1 and DATE.fullmatch(p)) for p in middle) or query != query.strip():
        return None
    return parts[0], query, start, end


def _underscored(stem: str) -> tuple[str, str | None, date, date] | None:
    """``<account>_<kind>_<from>[_<to>]`` (the kind may hold underscores, or be absent)."""
    parts = stem.split("_")
    if "." in stem or not ACCOUNT.fullmatch(parts[0]):
        return None
    found = _split_dates(parts[1:]) if len(parts) > 1 else None
    if found is None:
        return None
    middle, start, end = found
    if any(not QUERY.fullmatch(p) or DATE.fullmatch(p) for p in middle):
        return None
    return parts[0], "_".join(middle) or None, start, end


GRAMMAR = (_dotted, _underscored)  # tried in this order on the name without its format and encryption


def query_token(name: str) -> str | None:
    """``name`` when it can be the query part of a statement name (it parses back whole), else None."""
    if not isinstance(name, str) or not name or "/" in name or "\\" in name:
        return None
    try:
        check_name(name)
    except RemoteFileError:
        return None
    st = parse(f"U1234567.{name}.20000101.20000101.xml", 0)
    return name if st.parsed and st.query == name else None


def parse(name: str, mtime: float) -> Statement:
    """Parse an IBKR statement name; never raises for a str (unparseable -> parsed=False)."""
    fallback = _utc_date(mtime)
    parts = name.split(".")
    encryption = None
    # The suffix counts only when a usable name remains once it is removed.
    if len(parts) > 1 and parts[-1].lower() in ENCRYPTION_SUFFIXES and name[: -len(parts[-1]) - 1] not in ("", ".", ".."):
        encryption = parts[-1]
        parts = parts[:-1]
    fmt = None
    if len(parts) > 1 and parts[-1].lower() in FORMATS:
        fmt = parts[-1].lower()
        parts = parts[:-1]
    account = query = start = end = None
    ok, refusal = False, ""
    stem = ".".join(parts)
    for rule in GRAMMAR:
        found = rule(stem)
        if found is not None:
            refusal = _out_of_window(found[2], found[3])
            if not refusal:
                (account, query, start, end), ok = found, True
            break
    return Statement(
        name=name,
        account=account,
        query=query,
        period_start=start,
        period_end=end,
        fmt=fmt,
        encryption=encryption.lower() if encryption else None,
        statement_date=end or fallback,
        parsed=ok,
        refusal=refusal,
    )


def _out_of_window(start: date, end: date) -> str:
    """Why a statement period cannot be real (before 1990, or more than a year ahead), else ""."""
    latest = datetime.now(timezone.utc).date() + timedelta(days=AHEAD_DAYS)
    if start >= EARLIEST and end <= latest:
        return ""
    return (f"its name dates it {start.isoformat()}..{end.isoformat()}, outside {EARLIEST.isoformat()}.."
            f"{latest.isoformat()} (no statement is older than 1990 or dated more than a year ahead); "
            "it was not downloaded. Rename or remove the file on the server, or ask IBKR why it has that name.")


def _month(st: Statement) -> str:
    return f"{st.statement_date.year:04d}/{st.statement_date.month:02d}"


def original_key(source: str, st: Statement) -> str:
    """Archive key of the file as delivered: ``encrypted/<source>/<YYYY>/<MM>/<name>``."""
    try:
        check_name(source)
    except RemoteFileError:
        raise ConfigError(f"Source name {_shown(source)} cannot be used in an archive key.", "Rename the source.") from None
    return f"encrypted/{source}/{_month(st)}/{check_name(st.name)}"


def statement_key(st: Statement) -> str:
    """Archive key of the statement: ``statements/<account or _unsorted>/<YYYY>/<MM>/<decrypted name>``."""
    return f"statements/{st.account or UNSORTED}/{_month(st)}/{check_name(st.decrypted_name)}"


def needed_keys(source: str, st: Statement, keep_encrypted: bool) -> list[str]:
    """Archive keys whose presence means "archived": the statement, plus the encrypted original
    when encrypted deliveries are kept. The pipeline and ``status`` share this one rule."""
    skey = statement_key(st)
    return [skey, original_key(source, st)] if keep_encrypted and st.encryption else [skey]


def age_days(mtime: float, now: float) -> int:
    """Whole days since ``mtime`` (0 for a file dated in the future)."""
    try:
        return max(0, math.floor((now - mtime) / DAY))
    except (ValueError, OverflowError):
        return 0


def days_left(mtime: float, purge_days: int, now: float) -> int:
    """Days until the server purges the file (negative once it is overdue)."""
    return purge_days - age_days(mtime, now)
