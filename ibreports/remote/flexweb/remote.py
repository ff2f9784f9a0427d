"""A flexweb source: statements made on demand by IBKR's Flex Web Service, one query at a time.

It has no listing: ``produce(since, until, staging)`` asks each query for its statements
and yields them, already in staging, for the pipeline to archive like a downloaded plain
delivery. Without dates each query runs with its own period (as set in Client Portal);
with dates each query is asked per its ``dates`` setting (see settings.py) using the
Flex Web Service's date override (``fd``/``td``, yyyymmdd, at most 365 days).

A refused query does not stop the others: its error is kept and raised by ``close()``
(so by leaving ``with remote:``), once the caller has handled what the other queries
produced; a caller that lists ``produce()`` whole loses nothing. A refused token
(expired, invalid, wrong IP) or an unreachable service stops ``produce()`` at once:
every further request would fail the same way.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Collection, Iterator

from ...config import SourceConfig
from ...errors import AuthenticationError, ConfigError, ConnectionFailure, IbreportsError, StatementUnavailable
from ...files import sha256_file
from ...statements import parse, query_token
from ..registry import Produced
from .client import open_client
from .settings import FlexQuery, FlexSettings
from .csvsplit import split_csv
from .split import Piece, looks_like_xml
from .xmlsplit import Expect, split_xml

log = logging.getLogger(__name__)

MAX_WINDOW = 365  # days: the longest date override IBKR accepts


@dataclass(frozen=True)
class Window:
    start: date | None
    end: date | None

    @property
    def label(self) -> str:
        if self.start is None:
            return "its own period"
        return f"{self.start:%Y-%m-%d}" if self.start == self.end else f"{self.start:%Y-%m-%d}..{self.end:%Y-%m-%d}"


def windows(query: FlexQuery, since: date | None, until: date | None, today: date) -> list[Window]:
    """The date windows to ask ``query`` for; ConfigError when it cannot take a date range."""
    if since is None and until is None:
        return [Window(None, None)]
    until = until or today - timedelta(days=1)
    since = since or until
    if since > until:
        raise ConfigError(f"The date range {since}..{until} is empty (--since is after --until).",
                          "Swap the dates.")
    if query.dates == "fixed":
        raise ConfigError(
            f"Flex query {query.label} ({query.id}) has a fixed period (dates = 'fixed'): it cannot be asked for "
            f"{since}..{until}, and was not.",
            "Run this source without --since/--until, or set the query's dates to 'daily', 'monthly' or 'range' "
            "(IBKR's date override, at most 365 days per request).",
        )
    if query.dates == "daily":
        days = (since + timedelta(days=i) for i in range((until - since).days + 1))
        return [Window(d, d) for d in days if d.weekday() < 5]
    if query.dates == "monthly":
        out, first = [], since.replace(day=1)
        while first <= until:
            nxt = (first + timedelta(days=32)).replace(day=1)
            last = nxt - timedelta(days=1)
            # A month is a statement once it is over, dated its last day (which the range must hold,
            # as the pipeline files statements by that date).
            if since <= last <= until and last < today:
                out.append(Window(first, last))
            first = nxt
        return out
    out, start = [], since
    while start <= until:
        end = min(until, start + timedelta(days=MAX_WINDOW - 1))
        out.append(Window(start, end))
        start = end + timedelta(days=1)
    return out


class FlexRemote:
    """One flexweb source, open: its client and queries."""

    def __init__(self, source: SourceConfig) -> None:
        self.source = source
        self.settings: FlexSettings = source.settings
        self._failures: list[IbreportsError] = []
        self._names: dict[str, str] = {}  # query id -> IBKR's queryName, for queries without a name
        self._warned: set[str] = set()
        self.client = open_client(source)

    def close(self) -> None:
        """Close the client, then raise the first error a query met (each was logged when met)."""
        self.client.close()
        failures, self._failures = self._failures, []
        if failures:
            first = failures[0]
            if len(failures) > 1:
                first.message += f" ({len(failures) - 1} more Flex Web Service error(s) logged.)"
            raise first

    def __enter__(self) -> "FlexRemote":
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
            return
        self._failures = []  # an error is already on its way; these were logged when met
        self.client.close()

    def produce(self, since: date | None, until: date | None, staging: Path, today: date | None = None, *,
                archived: Collection[str] = (), reconnect_minutes: float | None = None) -> Iterator[Produced]:
        """Every statement of every query for the dates asked (each query's own period without dates).

        ``archived``: statement names the archive holds; a dated window every known account of
        the query already has is not asked again (a backfill spends IBKR's requests on gaps).
        ``reconnect_minutes``: how long a lost connection is tried again ([run] reconnect_minutes)."""
        today = today or date.today()
        if reconnect_minutes is not None:
            self.client.reconnect_seconds = reconnect_minutes * 60
        failures = self._failures
        made: dict[str, str] = {}
        have = _Archived(archived)
        for query in self.settings.queries:
            try:
                asked = windows(query, since, until, today)
                skipped = 0
                for window in asked:
                    name = query.name or self._names.get(query.id)  # known after the first answer
                    if name is not None and have.covers(name, window):
                        skipped += 1
                        continue
                    for piece in self._ask(query, window, staging, today):
                        produced = _produced(piece)
                        if made.setdefault(produced.name, produced.sha256) != produced.sha256:
                            failures.append(ConfigError(
                                f"Flex Web Service: two answers in this run hold different statements named "
                                f"{produced.name}.", "Give each query its own name in the source's queries."))
                            continue
                        yield produced
                if skipped:
                    log.info("Flex Web Service: query %s: %d of %d date window(s) already archived for every "
                             "account; not asked again", query.label, skipped, len(asked))
            except (AuthenticationError, ConnectionFailure):
                raise
            except IbreportsError as exc:
                log.error("%s", exc)
                failures.append(exc)

    def _ask(self, query: FlexQuery, window: Window, staging: Path, today: date) -> Iterator[Piece]:
        what = f"query {query.label} ({query.id}) for {window.label}"
        fd = f"{window.start:%Y%m%d}" if window.start else None
        td = f"{window.end:%Y%m%d}" if window.end else None
        part = staging / f".flexweb-{query.id}-{fd or 'own'}-{td or 'own'}.part"
        try:
            try:
                self.client.fetch(query.id, what, part, fd, td)
            except IbreportsError as exc:
                if window.start is not None and exc.code == 1003:
                    log.info("Flex Web Service: no statement for %s (IBKR: not available); nothing to archive", what)
                    return
                raise
            if part.stat().st_size == 0:
                raise StatementUnavailable(f"Flex Web Service, {what}: IBKR's answer is empty.",
                                      "Run the fetch again; if it persists, check the query in Client Portal.")
            expect = Expect(window.start, window.end)
            named = lambda reported: self._query_name(query, reported, what)  # noqa: E731
            if looks_like_xml(part):
                yield from split_xml(part, None, what, staging, expect, named)
            else:
                yield from split_csv(part, None, what, staging, expect, today, named)
        finally:
            part.unlink(missing_ok=True)


    def _query_name(self, query: FlexQuery, reported: str, what: str) -> str:
        """The query part of the statements' names: the configured name, else IBKR's queryName."""
        reported = reported.strip()
        if query.name is not None:
            if reported and reported != query.name and query.id not in self._warned:
                self._warned.add(query.id)
                log.warning("Flex Web Service: query %s (%s) is named %r at IBKR, whose sFTP deliveries of it are "
                            "therefore named <account>.%s.<dates>: they are not recognised as the same statements "
                            "as these (leave the query's name out to use IBKR's)", query.name, query.id, reported,
                            reported)
            return query.name
        if not reported:
            raise StatementUnavailable(
                f"Flex Web Service, {what}: the answer does not say the query's name (no queryName, no BOF record), "
                "and the source gives it none.",
                "Give the query a name in the source's queries (its name at IBKR, to match its sFTP files).",
            )
        if query_token(reported) is None:
            raise StatementUnavailable(
                f"Flex Web Service, {what}: IBKR's name of the query, {reported[:60]!r}, cannot be part of a file "
                "name.",
                "Give the query a name in the source's queries, or rename it in Client Portal.",
            )
        known = self._names.setdefault(query.id, reported)
        if known != reported:
            raise StatementUnavailable(
                f"Flex Web Service, {what}: IBKR's answer is for query {reported!r}, but this query's earlier answer "
                f"in this run was for {known!r}; it was not archived.",
                "Run the fetch again; if it persists, report it to IBKR.",
            )
        return reported


class _Archived:
    """Which accounts each query name has statements for, and which statement names exist."""

    def __init__(self, names: Collection[str]) -> None:
        self.names = set(names)
        self.accounts: dict[str, set[str]] = {}
        for name in self.names:
            st = parse(name, 0)
            if st.parsed and st.account and st.query:
                self.accounts.setdefault(st.query, set()).add(st.account)

    def covers(self, query: str, window: Window) -> bool:
        accounts = self.accounts.get(query)
        if window.start is None or window.end is None or not accounts:
            return False
        stem = f"{query}.{window.start:%Y%m%d}.{window.end:%Y%m%d}"
        return all(f"{a}.{stem}.xml" in self.names or f"{a}.{stem}.csv" in self.names for a in accounts)


def _produced(piece: Piece) -> Produced:
    size = piece.path.stat().st_size
    log.info("Flex Web Service: %s (%d bytes)", piece.name, size)
    return Produced(piece.name, piece.path, size, sha256_file(piece.path))
