"""The backfill flow through a flexweb source: fills the missing weekdays, within IBKR's request limits."""

from __future__ import annotations

from datetime import date

import pytest
from prefect.testing.utilities import prefect_test_harness

from flows.local_api import startup_timeout
from flows.backfill import backfill_statements
from ibreports.cli import main
from tests.helpers import archived_files


@pytest.fixture(scope="module", autouse=True)
def prefect_server():
    with prefect_test_harness(server_startup_timeout=startup_timeout()):
        yield


def test_backfill_fills_missing_dates_through_flexweb_within_the_limits(flex):
    emulator, query, cfg, archive = flex
    emulator.today = date(2026, 11, 20)
    emulator.min_interval = 0.2  # what the source's pacing is set to below: never a 1018
    cfg.write_text(cfg.read_text().replace("min_interval = 0.0", "min_interval = 0.2"))
    assert main(["--config", str(cfg), "fetch", "--since", "2026-11-10", "--until", "2026-11-10"]) == 0
    emulator.hits.clear()

    state = backfill_statements(start=date(2026, 11, 9), end=date(2026, 11, 13), sources=["ibkr-flex"],
                                config=str(cfg), return_state=True)

    assert state.is_completed(), state.message
    asked = [h.params["fd"] for h in emulator.hits if h.path.endswith("SendRequest")]
    assert asked == ["20261109", "20261111", "20261112", "20261113"]  # the 10th was there already
    days = sorted({k.rsplit(".", 3)[-2] for k in archived_files(archive)})
    assert days == ["20261109", "20261110", "20261111", "20261112", "20261113"]
    assert "1018" not in emulator.answers(emulator.token)
    times = emulator.times(emulator.token)
    assert min(b - a for a, b in zip(times, times[1:])) >= 0.2
