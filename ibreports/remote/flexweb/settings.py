"""The flexweb source's own settings: token, queries, url, pacing and polling.

    [[sources]]
    name = "ibkr-flex"
    kind = "flexweb"
    token = "env:IBREPORTS_FLEX_TOKEN"          # a secret reference (env:, file:, prefect:)
    queries = [ { id = "123456", name = "DailyActivity" },
                { id = "234567", name = "MonthlyActivity", dates = "monthly" } ]
    # url = "https://ndcdyn.interactivebrokers.com/AccountManagement/FlexWebService/SendRequest"

``dates`` says what a date range (``fetch --since/--until``, the backfill) asks of a query:
``daily`` (default) one statement per weekday, ``monthly`` one per calendar month,
``range`` one statement for the whole range (in windows of at most 365 days), ``fixed``
none: the query keeps its own period, and a date range is refused for it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...config import Secret
from ...errors import ConfigError
from ...statements import QUERY

DEFAULT_URL = "https://ndcdyn.interactivebrokers.com/AccountManagement/FlexWebService/SendRequest"
DATES = ("daily", "monthly", "range", "fixed")
KEYS = {"token", "queries", "url", "poll_timeout", "poll_interval", "requests_per_minute", "min_interval"}
QUERY_KEYS = {"id", "name", "dates"}


@dataclass(frozen=True)
class FlexQuery:
    """One Flex query: IBKR's id, the name used in statement names, what a date range asks of it."""

    id: str
    name: str
    dates: str = "daily"


@dataclass
class FlexSettings:
    token: Secret
    queries: list[FlexQuery] = field(default_factory=list)
    url: str = DEFAULT_URL
    poll_timeout: float = 600.0  # seconds one statement may take, waits and back-offs included
    poll_interval: float = 5.0  # seconds before the first poll; grows by half each time, up to 30
    requests_per_minute: int = 10  # IBKR's limit per token: lower it when another program shares the token
    min_interval: float = 1.0  # seconds between two requests with the token (IBKR: 1 per second)


def _fail(file: Path, key: str, expected: str) -> ConfigError:
    return ConfigError(f"{file}: '{key}' must be {expected}.", "Fix it and run again.")


def _number(raw: dict[str, Any], file: Path, where: str, key: str, default: float, low: float) -> float:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < low:
        raise _fail(file, f"{where}.{key}", f"a number >= {low:g}")
    return float(value)


def parse_settings(raw: dict[str, Any], file: Path, where: str) -> FlexSettings:
    """Validate the flexweb keys of one [[sources]] table (``where`` is e.g. ``sources.ibkr-flex``)."""
    token = raw.get("token")
    if not isinstance(token, str) or not token:
        raise _fail(file, f"{where}.token", "the Flex Web Service token or a reference such as env:IBREPORTS_FLEX_TOKEN")
    url = raw.get("url", DEFAULT_URL)
    if not isinstance(url, str) or not re.fullmatch(r"https://[^\s/?#]+/[^\s?#]*", url):
        raise _fail(file, f"{where}.url", "an https:// URL of the SendRequest endpoint, without parameters")
    queries = _queries(raw.get("queries"), file, where)
    per_minute = raw.get("requests_per_minute", 10)
    if isinstance(per_minute, bool) or not isinstance(per_minute, int) or per_minute < 1:
        raise _fail(file, f"{where}.requests_per_minute", "an integer >= 1 (IBKR allows 10)")
    return FlexSettings(
        token=Secret(token, f"{where}.token", file.parent),
        queries=queries,
        url=url,
        poll_timeout=_number(raw, file, where, "poll_timeout", 600.0, 1.0),
        poll_interval=_number(raw, file, where, "poll_interval", 5.0, 0.0),
        requests_per_minute=per_minute,
        min_interval=_number(raw, file, where, "min_interval", 1.0, 0.0),
    )


def _queries(value: Any, file: Path, where: str) -> list[FlexQuery]:
    key = f"{where}.queries"
    if not isinstance(value, list) or not value or not all(isinstance(q, dict) for q in value):
        raise _fail(file, key, 'a non-empty list of tables such as [ { id = "123456", name = "DailyActivity" } ]')
    queries = []
    for i, q in enumerate(value):
        unknown = sorted(set(q) - QUERY_KEYS)
        if unknown:
            raise ConfigError(f"{file}: unknown key '{key}[{i}].{unknown[0]}'.",
                              f"Allowed keys in a query: {', '.join(sorted(QUERY_KEYS))}.")
        qid = q.get("id")
        if isinstance(qid, int) and not isinstance(qid, bool):
            qid = str(qid)
        if not isinstance(qid, str) or not qid.isdigit():
            raise _fail(file, f"{key}[{i}].id", "the Flex query's id (digits, shown by its info icon in Client Portal)")
        name = q.get("name")
        if not isinstance(name, str) or not QUERY.fullmatch(name):
            raise _fail(file, f"{key}[{i}].name", "a name of letters, digits, '-' or '_' (used in statement names, "
                        "e.g. DailyActivity)")
        dates = q.get("dates", "daily")
        if dates not in DATES:
            raise _fail(file, f"{key}[{i}].dates", "one of " + ", ".join(f"'{d}'" for d in DATES))
        queries.append(FlexQuery(qid, name, dates))
    names = [q.name for q in queries]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise _fail(file, f"{key}.name", f"unique within the source (duplicate: {dup[0]})")
    return queries
