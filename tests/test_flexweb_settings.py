"""The flexweb source's settings: token reference, queries, url, pacing."""

from __future__ import annotations

from pathlib import Path

import pytest

from ibreports.errors import ConfigError
from ibreports.remote.flexweb.settings import DEFAULT_URL, FlexQuery, parse_settings

FILE = Path("/etc/ibreports/ibreports.toml")


def parse(**raw):
    return parse_settings({"token": "env:IBREPORTS_FLEX_TOKEN", "queries": [{"id": "123456", "name": "DailyActivity"}],
                           **raw}, FILE, "sources.flex")


def test_defaults_and_a_secret_reference(monkeypatch):
    monkeypatch.setenv("IBREPORTS_FLEX_TOKEN", "123456789012345678901234")
    s = parse()
    assert s.url == DEFAULT_URL
    assert s.queries == [FlexQuery("123456", "DailyActivity", "daily")]
    assert (s.requests_per_minute, s.min_interval) == (10, 1.0)
    assert s.token.get() == "123456789012345678901234" and "1234567890" not in repr(s)


def test_query_ids_may_be_integers_and_dates_are_chosen_per_query():
    s = parse(queries=[{"id": 123456, "name": "DailyActivity"}, {"id": "7", "name": "Monthly", "dates": "monthly"}])
    assert s.queries == [FlexQuery("123456", "DailyActivity"), FlexQuery("7", "Monthly", "monthly")]


@pytest.mark.parametrize("raw, key", [
    ({"token": ""}, "sources.flex.token"),
    ({"url": "http://ndcdyn.interactivebrokers.com/x/SendRequest"}, "sources.flex.url"),
    ({"url": DEFAULT_URL + "?t=1"}, "sources.flex.url"),
    ({"queries": []}, "sources.flex.queries"),
    ({"queries": [{"id": "12a", "name": "Q"}]}, "sources.flex.queries[0].id"),
    ({"queries": [{"id": "1", "name": "Daily Activity"}]}, "sources.flex.queries[0].name"),
    ({"queries": [{"id": "1", "name": "Q", "dates": "weekly"}]}, "sources.flex.queries[0].dates"),
    ({"queries": [{"id": "1", "name": "Q"}, {"id": "2", "name": "Q"}]}, "sources.flex.queries.name"),
    ({"queries": [{"id": "1", "name": "Q", "period": "x"}]}, "sources.flex.queries[0].period"),
    ({"requests_per_minute": 0}, "sources.flex.requests_per_minute"),
    ({"poll_timeout": 0}, "sources.flex.poll_timeout"),
])
def test_bad_values_name_the_key(raw, key):
    with pytest.raises(ConfigError) as caught:
        parse(**raw)
    assert f"'{key}'" in caught.value.message and str(FILE) in caught.value.message
