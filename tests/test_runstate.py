"""The outage clock that bounds reconnects within a run (pure timing rules, no sleeping)."""

from __future__ import annotations

from ibreports.runstate import BACKOFF_CAP, DOWNLOAD_ATTEMPTS, Outage


def test_a_dropped_transfer_always_gets_its_quick_retries_then_the_window_decides():
    outage = Outage(window_seconds=0)  # [run] reconnect_minutes = 0
    pauses = [outage.pause(attempt) for attempt in range(1, DOWNLOAD_ATTEMPTS)]
    assert all(p is not None and 0 < p <= 1.5 * BACKOFF_CAP for p in pauses)
    assert outage.pause(DOWNLOAD_ATTEMPTS) is None


def test_within_the_window_backoff_grows_with_jitter_up_to_the_cap():
    outage = Outage(window_seconds=3600)
    early = [outage.pause(1) for _ in range(50)]
    late = [outage.pause(12) for _ in range(50)]
    assert all(0.25 <= p <= 0.75 for p in early) and len(set(early)) > 1  # 0.5 s with jitter
    assert all(p is not None and p <= BACKOFF_CAP * 1.5 for p in late) and max(late) > 5


def test_a_success_starts_the_clock_again():
    outage = Outage(window_seconds=0)
    assert outage.pause(DOWNLOAD_ATTEMPTS) is None
    outage.ok()
    outage.window = 3600
    assert outage.pause(DOWNLOAD_ATTEMPTS) is not None
