"""Building flexweb sources against the emulator (tests/fixtures/flexweb.py)."""

from __future__ import annotations

from pathlib import Path

from ibreports.config import Secret, SourceConfig
from ibreports.remote.flexweb.remote import FlexRemote
from ibreports.remote.flexweb.settings import FlexQuery, FlexSettings

FAST = {"poll_interval": 0.02, "poll_timeout": 10.0, "min_interval": 0.0, "requests_per_minute": 100_000}


def flex_settings(emulator, token: str, queries, **kw) -> FlexSettings:
    """Settings for ``queries`` (emulator Query objects, or (query, dates) pairs), fast pacing by default."""
    items = []
    for q in queries:
        query, dates = q if isinstance(q, tuple) else (q, "daily")
        items.append(FlexQuery(query.id, query.name, dates))
    return FlexSettings(token=Secret(token, "sources.flex.token", Path(".")), queries=items, url=emulator.url,
                        **{**FAST, **kw})


def flex_remote(emulator, token: str, queries, timeout: float = 5.0, **kw) -> FlexRemote:
    source = SourceConfig(name="flex", kind="flexweb", host="", port=0, username="", timeout=timeout)
    return FlexRemote(source, flex_settings(emulator, token, queries, **kw))
