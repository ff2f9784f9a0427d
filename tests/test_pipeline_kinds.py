"""The pipeline with toy source kinds registered by this test only (the library never knows them):

- "ondemand": no listing; produces statements into staging (as the Flex Web Service kind does);
  planned without settle/purge rules, stored like plain deliveries, conflicts detected;
- "exploding": produces nothing but an exception no library code expects: recorded for that source,
  the other sources go on and the run record is written. (On demand, so the remote contract suite,
  which wants a server for every listing kind, leaves it alone.)

Real gpg is not needed (plain statements); the archive is a real local folder.
"""

from __future__ import annotations

import hashlib
import json
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pytest

from ibreports.cli import main
from ibreports.config import load_config
from ibreports.pipeline import RunOptions, fetch
from ibreports.remote.registry import Capabilities, SettingError, SourceKind, register
from tests.fakes import Made, OnDemandRemote
from tests.memory_remote import SERVERS, MemoryServer, Stored

NAME = "U1234567.DailyActivity.20261101.20261101.xml"
STATEMENT = f"statements/U1234567/2026/11/{NAME}"
MADE: dict[str, list[Made]] = {}  # store name -> what the toy on-demand source holds


@dataclass(frozen=True)
class ToySettings:
    store: str = ""

    def checked(self) -> "ToySettings":
        if not self.store:
            raise SettingError("store", "the name of a toy store")
        return self


class Exploding:
    def __init__(self, source) -> None:
        pass

    def produce(self, since, until, staging):
        raise RuntimeError("the parser met something nobody expected")

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


def _no_doctor(source, checklist, stack: ExitStack, staging: Path):
    return None


register(SourceKind(name="ondemand", settings=ToySettings, open=lambda s: OnDemandRemote(MADE[s.settings.store]),
                    doctor=_no_doctor, slots=lambda s: [], capabilities=Capabilities(listing=False)))
register(SourceKind(name="exploding", settings=ToySettings, open=Exploding, doctor=_no_doctor, slots=lambda s: [],
                    capabilities=Capabilities(listing=False)))


def config(tmp_path: Path, *sources: tuple[str, str, str]) -> Path:
    text = "".join(f'[[sources]]\nname = "{n}"\nkind = "{k}"\nstore = "{s}"\nsettle_seconds = 3600\n\n'
                   for n, k, s in sources)
    cfg = tmp_path / "ibreports.toml"
    cfg.write_text(text + f'[archive]\nurl = "{tmp_path / "archive"}"\n')
    return cfg


@pytest.fixture
def store(request) -> str:
    name = request.node.name
    MADE[name] = [Made(NAME, date(2026, 11, 1), b"<FlexQueryResponse>day one</FlexQueryResponse>\n"),
                  Made("U1234567.DailyActivity.20261102.20261102.xml", date(2026, 11, 2), b"<Flex>two</Flex>\n")]
    request.addfinalizer(lambda: MADE.pop(name, None))
    return name


def test_on_demand_statements_are_archived_without_settle_and_never_at_risk(tmp_path, store):
    cfg = config(tmp_path, ("flex", "ondemand", store))  # settle_seconds = 3600: does not apply
    report = fetch(load_config(cfg))
    assert report.count("archived") == 2 and report.exit_code == 0 and not report.at_risk
    assert (tmp_path / "archive" / STATEMENT).read_bytes() == MADE[store][0].data
    again = fetch(load_config(cfg))
    assert again.count("already-archived") == 2 and again.exit_code == 0


def test_on_demand_since_until_reach_the_source(tmp_path, store):
    cfg = config(tmp_path, ("flex", "ondemand", store))
    report = fetch(load_config(cfg), options=RunOptions(since=date(2026, 11, 2), until=date(2026, 11, 2)))
    assert [f.name for f in report.files] == [MADE[store][1].name]


@pytest.mark.parametrize("same_size", [True, False])
def test_on_demand_content_that_differs_from_the_archive_is_a_conflict(tmp_path, store, same_size):
    cfg = config(tmp_path, ("flex", "ondemand", store))
    assert fetch(load_config(cfg)).exit_code == 0
    changed = MADE[store][0].data.replace(b"day one", b"day 0ne" if same_size else b"day one, revised")
    MADE[store][0] = Made(NAME, date(2026, 11, 1), changed)
    report = fetch(load_config(cfg))
    [row] = [f for f in report.files if f.name == NAME]
    assert (row.outcome, row.code) == ("failed", "conflict") and report.exit_code == 1
    assert (tmp_path / "archive" / STATEMENT).read_bytes() == b"<FlexQueryResponse>day one</FlexQueryResponse>\n"
    [kept] = [p for p in (tmp_path / "archive" / "conflicts" / "flex").rglob(f"{NAME}.*") if p.suffix != ".json"]
    assert (kept.parent / (kept.name + ".conflict.json")).exists()  # the conflict is recorded: open until resolved
    assert kept.read_bytes() == changed and kept.name.endswith(hashlib.sha256(changed).hexdigest()[:16])


def test_an_unexpected_exception_stays_inside_its_source(tmp_path, store, capsys):
    listed = "U7654321.DailyActivity.20261101.20261101.xml"
    SERVERS[store] = MemoryServer(files={listed: Stored(bytearray(b"<Flex>listed</Flex>\n"), 1_700_000_000.0)})
    try:
        cfg = config(tmp_path, ("broken", "exploding", store), ("flex", "ondemand", store), ("mem", "memory", store))
        code = main(["--config", str(cfg), "fetch"])
    finally:
        SERVERS.pop(store, None)
    out = capsys.readouterr()
    assert code == 1  # a bug: neither a configuration (2) nor a connection (3) problem
    assert "source broken: unexpected RuntimeError: the parser met something nobody expected" in out.out
    assert "Traceback" not in out.out + out.err  # only with --debug
    [record] = (tmp_path / "archive" / "runs").rglob("*.json")
    data = json.loads(record.read_text())
    assert data["source_error_types"] == {"broken": "RuntimeError"}
    assert {f["source"] for f in data["files"] if f["outcome"] == "archived"} == {"flex", "mem"}


def test_debug_logs_the_traceback_of_an_unexpected_exception(tmp_path, store, caplog):
    cfg = config(tmp_path, ("broken", "exploding", store))
    assert main(["--config", str(cfg), "fetch"]) == 1
    assert not [r for r in caplog.records if r.exc_info]
    caplog.clear()
    assert main(["--config", str(cfg), "--debug", "fetch"]) == 1
    [logged] = [r for r in caplog.records if r.exc_info]
    assert logged.exc_info[0] is RuntimeError and "Traceback" in caplog.text
