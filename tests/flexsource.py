"""Building flexweb sources against the emulator (tests/fixtures/flexweb.py)."""

from __future__ import annotations

from pathlib import Path

from ibreports.config import Secret, SourceConfig
from ibreports.remote.flexweb.remote import FlexRemote
from ibreports.remote.flexweb.settings import FlexSettings

FAST = {"poll_interval": 0.02, "poll_timeout": 10.0, "min_interval": 0.0, "requests_per_minute": 100_000}


def flex_settings(emulator, token: str, queries, names: bool = True, **kw) -> FlexSettings:
    """Settings for ``queries`` (emulator Query objects, or (query, dates) pairs), fast pacing by default;
    ``names=False`` leaves the queries' names out (IBKR's queryName is used)."""
    items = []
    for q in queries:
        query, dates = q if isinstance(q, tuple) else (q, "daily")
        items.append({"id": query.id, "dates": dates, **({"name": query.name} if names else {})})
    return FlexSettings(token=Secret(token, "sources.flex.token", Path(".")), queries=items,
                        **{"url": emulator.url, **FAST, **kw}).checked()


def produce(emulator, token: str, queries, staging: Path, since=None, until=None, **kw) -> list:
    """Everything a flexweb source over ``queries`` produces into ``staging`` (made if missing)."""
    staging.mkdir(exist_ok=True)
    with flex_remote(emulator, token, queries, **kw) as remote:
        return list(remote.produce(since, until, staging))


def flex_source(emulator, token: str, queries, timeout: float = 5.0, name: str = "flex", **kw) -> SourceConfig:
    return SourceConfig(name=name, kind="flexweb", settings=flex_settings(emulator, token, queries, **kw),
                        timeout=timeout, connections=1)


def flex_remote(emulator, token: str, queries, timeout: float = 5.0, **kw) -> FlexRemote:
    return FlexRemote(flex_source(emulator, token, queries, timeout=timeout, **kw))


def flex_toml(emulator, queries, name: str = "ibkr-flex", token_ref: str = "env:IBREPORTS_FLEX_TOKEN",
              names: bool = True, **kw) -> str:
    """A [[sources]] table for ``queries`` (emulator Query objects or (query, dates) pairs)."""
    items = []
    for q in queries:
        query, dates = q if isinstance(q, tuple) else (q, "daily")
        named = f'name = "{query.name}", ' if names else ""
        items.append(f'{{ id = "{query.id}", {named}dates = "{dates}" }}')
    url = kw.pop("url", None) or emulator.url
    extra = "".join(f"{k} = {v!r}\n" if not isinstance(v, str) else f'{k} = "{v}"\n' for k, v in {**FAST, **kw}.items())
    return (f'[[sources]]\nname = "{name}"\nkind = "flexweb"\ntoken = "{token_ref}"\n'
            f'queries = [ {", ".join(items)} ]\nurl = "{url}"\n{extra}')
