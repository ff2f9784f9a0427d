"""The flexweb source's keys, parsed from ibreports.toml by the kind's registration."""

from __future__ import annotations

from pathlib import Path

import pytest

from ibreports.config import parse_config
from ibreports.errors import ConfigError
from ibreports.remote.flexweb.settings import DEFAULT_URL, FlexQuery
from ibreports.remote.registry import get_kind

FILE = Path("/etc/ibreports/ibreports.toml")
BASE = '[[sources]]\nname = "ibkr-flex"\nkind = "flexweb"\n'
TOKEN = 'token = "env:IBREPORTS_FLEX_TOKEN"\n'
QUERIES = 'queries = [ { id = "123456", name = "DailyActivity" } ]\n'


def source(text: str):
    [src] = parse_config(BASE + text, FILE).sources
    return src


def test_the_documented_example_parses_with_its_defaults(monkeypatch):
    monkeypatch.setenv("IBREPORTS_FLEX_TOKEN", "123456789012345678901234")
    src = source(TOKEN + QUERIES)
    s = src.settings
    assert src.kind == "flexweb" and s.url == DEFAULT_URL and s.address == "ndcdyn.interactivebrokers.com"
    assert s.queries == (FlexQuery("123456", "DailyActivity", "daily"),)
    assert (s.requests_per_minute, s.min_interval, s.poll_timeout) == (10, 1.0, 600.0)
    assert s.token.get() == "123456789012345678901234" and "1234567890" not in repr(src)


def test_kind_registration_declares_no_listing_no_delete_no_host_keys():
    kind = get_kind("flexweb")
    caps = kind.capabilities
    assert (caps.listing, caps.delete, caps.host_keys) == (False, False, False)


def test_query_ids_may_be_integers_and_dates_are_chosen_per_query():
    src = source(TOKEN + 'queries = [ { id = 123456, name = "DailyActivity" }, '
                 '{ id = "7", name = "Monthly", dates = "monthly" } ]\n')
    assert src.settings.queries == (FlexQuery("123456", "DailyActivity"), FlexQuery("7", "Monthly", "monthly"))


@pytest.mark.parametrize("text, key", [
    (QUERIES, "token"),
    (TOKEN, "queries"),
    (TOKEN + QUERIES + 'url = "http://ndcdyn.interactivebrokers.com/x/SendRequest"\n', "url"),
    (TOKEN + QUERIES + f'url = "{DEFAULT_URL}?t=1"\n', "url"),
    (TOKEN + "queries = []\n", "queries"),
    (TOKEN + 'queries = [ { id = "12a", name = "Q" } ]\n', "queries[0].id"),
    (TOKEN + 'queries = [ { id = "1", name = "Daily/Activity" } ]\n', "queries[0].name"),
    (TOKEN + 'queries = [ { id = "1", name = "Daily " } ]\n', "queries[0].name"),
    (TOKEN + 'queries = [ { id = "1", name = "Q", dates = "weekly" } ]\n', "queries[0].dates"),
    (TOKEN + 'queries = [ { id = "1", name = "Q" }, { id = "2", name = "Q" } ]\n', "queries"),
    (TOKEN + 'queries = [ { id = "1", name = "Q", period = "x" } ]\n', "queries[0].period"),
    (TOKEN + QUERIES + "requests_per_minute = 0\n", "requests_per_minute"),
    (TOKEN + QUERIES + "poll_timeout = 0\n", "poll_timeout"),
    (TOKEN + QUERIES + 'host = "xfer.interactivebrokers.com"\n', "host"),
    (TOKEN + QUERIES + "delete_after_archive = true\n", "delete_after_archive"),
])
def test_bad_values_name_the_key(text, key):
    with pytest.raises(ConfigError) as caught:
        source(text)
    assert f"sources.ibkr-flex.{key}'" in caught.value.message and str(FILE) in caught.value.message
