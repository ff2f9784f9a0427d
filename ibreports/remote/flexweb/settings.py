"""The flexweb source's own settings: token, queries, url, pacing and polling.

    [[sources]]
    name = "ibkr-flex"
    kind = "flexweb"
    token = "env:IBREPORTS_FLEX_TOKEN"          # a secret reference (env:, file:, prefect:)
    queries = [ { id = "123456" },                 # named as IBKR names it (the answer's queryName)
                { id = "234567", name = "MonthlyActivity", dates = "monthly" } ]
    # url = "https://ndcdyn.interactivebrokers.com/AccountManagement/FlexWebService/SendRequest"

``dates`` says what a date range (``fetch --since/--until``, the backfill) asks of a query:
``daily`` (default) one statement per weekday, ``monthly`` one per calendar month,
``range`` one statement for the whole range (in windows of at most 365 days), ``fixed``
none: the query keeps its own period, and a date range is refused for it.

``name`` is the query part of statement names. Left out, it is IBKR's own name of the
query (the answer's ``queryName``, which is also the token of the query's sFTP files),
so the same statement from sFTP and from the Flex Web Service lands on one archive key.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from ...secrets import Secret
from ...statements import query_token
from ..registry import SettingError
from .endpoints import DOCUMENTED_URL

DEFAULT_URL = DOCUMENTED_URL
DATES = ("daily", "monthly", "range", "fixed")
QUERY_KEYS = ("id", "name", "dates")


@dataclass(frozen=True)
class FlexQuery:
    """One Flex query: IBKR's id, the name used in statement names, what a date range asks of it."""

    id: str
    name: str | None  # None: IBKR's queryName, learnt from the first answer
    dates: str = "daily"

    @property
    def label(self) -> str:
        return self.name or f"#{self.id}"


@dataclass(frozen=True)
class FlexSettings:
    """Keys of a ``kind = "flexweb"`` source beyond the common ones (``queries`` ends up a tuple of FlexQuery)."""

    token: Secret | None = None
    queries: list | None = None
    url: str = DEFAULT_URL
    poll_timeout: float = 600.0  # seconds one statement may take, waits and back-offs included
    poll_interval: float = 5.0  # seconds before the first poll; each wait grows by half, up to 30
    requests_per_minute: int = 10  # IBKR's limit per token: lower it when another program shares the token
    min_interval: float = 1.0  # seconds between two requests with the token (IBKR: one per second)

    @property
    def address(self) -> str:
        return urlsplit(self.url).hostname or self.url

    def checked(self) -> "FlexSettings":
        if self.token is None:
            raise SettingError("token", "the Flex Web Service token or a reference such as env:IBREPORTS_FLEX_TOKEN")
        if not re.fullmatch(r"https://[^\s/?#@]+/[^\s?#]*", self.url):
            raise SettingError("url", "an https:// URL of the SendRequest endpoint, without parameters")
        if self.poll_timeout < 1:
            raise SettingError("poll_timeout", "a number of seconds >= 1")
        if self.poll_interval < 0 or self.min_interval < 0:
            raise SettingError("poll_interval" if self.poll_interval < 0 else "min_interval", "a number >= 0")
        if self.requests_per_minute < 1:
            raise SettingError("requests_per_minute", "an integer >= 1 (IBKR allows 10)")
        return dataclasses.replace(self, queries=tuple(_queries(self.queries)))


def _queries(value: Any) -> list[FlexQuery]:
    if isinstance(value, tuple) and all(isinstance(q, FlexQuery) for q in value):
        return list(value)  # already checked
    if not isinstance(value, list) or not value or not all(isinstance(q, dict) for q in value):
        raise SettingError("queries", 'a non-empty list of tables such as [ { id = "123456", name = "DailyActivity" } ]')
    queries = []
    for i, q in enumerate(value):
        unknown = sorted(set(q) - set(QUERY_KEYS))
        if unknown:
            raise SettingError(f"queries[{i}].{unknown[0]}", f"left out: a query's keys are {', '.join(QUERY_KEYS)}")
        qid = q.get("id")
        if isinstance(qid, int) and not isinstance(qid, bool):
            qid = str(qid)
        if not isinstance(qid, str) or not qid.isdigit():
            raise SettingError(f"queries[{i}].id", "the Flex query's id (digits, shown by its info icon in Client Portal)")
        name = q.get("name")
        if name is not None and (not isinstance(name, str) or query_token(name) != name):
            raise SettingError(f"queries[{i}].name", "the query's name as IBKR names its files (e.g. DailyActivity; "
                               "no '/', no leading or trailing dot or space), or leave it out to use IBKR's")
        dates = q.get("dates", "daily")
        if dates not in DATES:
            raise SettingError(f"queries[{i}].dates", "one of " + ", ".join(f"'{d}'" for d in DATES))
        queries.append(FlexQuery(qid, name, dates))
    names = [q.name for q in queries if q.name is not None]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise SettingError("queries", f"queries with different names (two are named {dup[0]})")
    return queries
