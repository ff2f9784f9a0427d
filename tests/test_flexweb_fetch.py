"""A flexweb source through fetch: from the emulator into a local archive, like any other source."""

from __future__ import annotations

import json
from datetime import date, timedelta
from pathlib import Path

from ibreports.cli import main
from tests.fixtures.flexweb import FLEX_ACCOUNTS as ACCOUNTS
from tests.helpers import archived_files


def last_record(root: Path) -> dict:
    latest = max((root / "runs").rglob("*.json"), key=lambda p: p.stat().st_mtime_ns)  # ids sort by second only
    return json.loads(latest.read_text())


def _day(emulator) -> date:
    day = emulator.today - timedelta(days=1)
    while day.weekday() >= 5:
        day -= timedelta(days=1)
    return day


def test_fetch_archives_one_statement_per_account_and_a_rerun_writes_nothing(flex, capsys):
    emulator, query, cfg, archive = flex
    assert main(["--config", str(cfg), "fetch"]) == 0
    day = _day(emulator).strftime("%Y%m%d")
    got = archived_files(archive)
    assert sorted(got) == sorted(
        f"statements/{a}/{day[:4]}/{day[4:6]}/{a}.DailyActivity.{day}.{day}.xml" for a in ACCOUNTS)
    assert all(b"<FlexStatements count=\"1\">" in data for data in got.values())
    record = last_record(archive)
    assert sorted(f["outcome"] for f in record["files"]) == ["archived", "archived"]
    assert emulator.token not in json.dumps(record) and emulator.token not in capsys.readouterr().out

    capsys.readouterr()
    assert main(["--config", str(cfg), "fetch"]) == 0  # IBKR makes the statements again: same bytes
    assert archived_files(archive) == got
    assert "0 archived, 2 already archived" in capsys.readouterr().out


def test_different_content_for_an_archived_statement_is_a_conflict(flex, capsys):
    emulator, query, cfg, archive = flex
    assert main(["--config", str(cfg), "fetch"]) == 0
    before = archived_files(archive)
    query.version += 1  # IBKR corrected the statements after we archived them
    assert main(["--config", str(cfg), "fetch"]) == 1
    out = capsys.readouterr().out
    assert "conflict" in out
    after = archived_files(archive)
    assert {k: v for k, v in after.items() if k.startswith("statements/")} == before  # never replaced
    kept = [k for k in after if k.startswith("conflicts/")]
    assert sum(not k.endswith(".conflict.json") for k in kept) == 2  # kept aside for a person to look at
    assert sum(k.endswith(".conflict.json") for k in kept) == 2  # each recorded: open until resolved


def test_fetch_since_until_fills_only_the_missing_weekdays(flex):
    emulator, query, cfg, archive = flex
    emulator.today = date(2026, 11, 20)
    assert main(["--config", str(cfg), "fetch", "--since", "2026-11-09", "--until", "2026-11-10"]) == 0
    emulator.hits.clear()
    assert main(["--config", str(cfg), "fetch", "--since", "2026-11-06", "--until", "2026-11-12"]) == 0
    asked = [h.params.get("fd") for h in emulator.hits if h.path.endswith("SendRequest")]
    assert asked == ["20261106", "20261111", "20261112"]  # the 9th and 10th were archived already
    days = {k.rsplit(".", 3)[-2] for k in archived_files(archive)}
    assert days == {"20261106", "20261109", "20261110", "20261111", "20261112"}


def test_an_expired_token_fails_the_source_with_exit_3_and_the_remedy(flex, capsys):
    import time

    emulator, query, cfg, archive = flex
    emulator.tokens[emulator.token].expires = time.time() - 1
    assert main(["--config", str(cfg), "fetch"]) == 3
    out = capsys.readouterr()
    text = out.out + out.err
    assert "error 1012" in text and "Flex Web Service Configuration" in text and emulator.token not in text


def test_a_statement_not_ready_in_time_fails_alone_with_exit_1(flex, capsys):
    emulator, query, cfg, archive = flex
    slow = emulator.add_query("TradeConfirms", ["U1234567"], generation_polls=10_000)
    text = cfg.read_text().replace(
        f'dates = "daily" }} ]', f'dates = "daily" }}, {{ id = "{slow.id}", name = "TradeConfirms" }} ]')
    cfg.write_text(text.replace("poll_timeout = 10.0", "poll_timeout = 1.0"))
    assert main(["--config", str(cfg), "fetch"]) == 1
    out = capsys.readouterr()
    assert "error 1019" in out.out + out.err
    assert sorted(k.split("/")[1] for k in archived_files(archive)) == ACCOUNTS  # the other query's statements are in


def _config(cfg: Path, **changes: str) -> None:
    """Rewrite the first line of the `flex` fixture's config setting each key (the source's)."""
    lines = cfg.read_text().splitlines()
    for key, new in changes.items():
        first = next(i for i, line in enumerate(lines) if line.startswith(f"{key} = "))
        lines[first] = new
    cfg.write_text("\n".join(lines) + "\n")


def test_the_old_endpoint_is_refused_at_once_with_exit_2_naming_the_documented_one(flex, capsys):
    from tests.fixtures.flexweb import LEGACY

    emulator, query, cfg, archive = flex
    _config(cfg, url=f'url = "{emulator.base}{LEGACY}.SendRequest"')
    assert main(["--config", str(cfg), "fetch"]) == 2
    out = capsys.readouterr()
    text = out.out + out.err
    assert "old FlexStatementService endpoint" in text and "AccountManagement/FlexWebService/SendRequest" in text
    assert emulator.hits == []  # not 600 s of 1001


def test_an_unreachable_getstatement_everywhere_is_exit_3_and_names_both(flex, capsys):
    emulator, query, cfg, archive = flex
    emulator.documented_get = False
    emulator.url_target = "foreign"
    assert main(["--config", str(cfg), "fetch"]) == 3
    out = capsys.readouterr()
    assert "GetStatement endpoint" in out.out + out.err and "HTTP 404" in out.out + out.err


def test_the_answers_url_rescues_a_missing_documented_endpoint(flex):
    emulator, query, cfg, archive = flex
    emulator.documented_get = False
    emulator.url_target = "self-legacy"
    assert main(["--config", str(cfg), "fetch"]) == 0
    assert len(archived_files(archive)) == len(ACCOUNTS)


def test_run_reconnect_minutes_bounds_how_long_a_lost_connection_is_tried_again(flex, monkeypatch):
    from ibreports.remote.flexweb import client

    monkeypatch.setattr(client, "BACKOFF_CAP", 0.01)
    emulator, query, cfg, archive = flex
    cfg.write_text(cfg.read_text() + "[run]\nreconnect_minutes = 0\n")
    emulator.faults.extend(["drop"] * 5)
    assert main(["--config", str(cfg), "fetch"]) == 3  # 0: the transport's own few attempts only
    emulator.faults.clear()
    cfg.write_text(cfg.read_text().replace("reconnect_minutes = 0", "reconnect_minutes = 1"))
    emulator.faults.extend(["drop"] * 5)
    assert main(["--config", str(cfg), "fetch"]) == 0
    assert len(archived_files(archive)) == len(ACCOUNTS)


def test_a_query_without_a_name_is_archived_under_its_account_with_ibkrs_name(flex):
    emulator, query, cfg, archive = flex
    query.name = "Daily Activity"  # IBKR's name, space included
    cfg.write_text(cfg.read_text().replace('name = "DailyActivity", ', ""))
    assert main(["--config", str(cfg), "fetch"]) == 0
    day = _day(emulator).strftime("%Y%m%d")
    assert sorted(archived_files(archive)) == sorted(
        f"statements/{a}/{day[:4]}/{day[4:6]}/{a}.Daily Activity.{day}.{day}.xml" for a in ACCOUNTS)


def test_an_answer_for_other_dates_fails_alone_with_exit_1(flex, capsys):
    emulator, query, cfg, archive = flex
    emulator.today = date(2026, 11, 20)
    query.shift_days = 1
    assert main(["--config", str(cfg), "fetch", "--since", "2026-11-10", "--until", "2026-11-10"]) == 1
    out = capsys.readouterr()
    assert "not for the dates asked" in out.out + out.err and archived_files(archive) == {}
