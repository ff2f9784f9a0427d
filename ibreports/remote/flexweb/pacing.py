"""Request pacing per token: IBKR allows 1 request per second and 10 per minute per token.

Every request made with a token (SendRequest and each GetStatement poll) takes its turn on
that token's :class:`Pacer`, shared by every source and thread of this process that uses
the same token. Turns are counted from the moment the previous answer arrived, not from
when the request left: IBKR counts requests as they reach it, and an answer always comes
after its request reached IBKR, so whatever the network's delays, IBKR never sees two
requests closer together than we waited. After a 1018 ("too many requests") the pacer
holds every request back for a while: another program may be using the token too.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import deque
from contextlib import contextmanager
from typing import Iterator

WINDOW = 60.0  # seconds: IBKR counts requests per minute
MARGIN = 1.05  # keep 5% clear of each limit: our clock is not IBKR's


class Pacer:
    """One request at a time, at least ``min_interval`` seconds after the previous answer, and at
    most ``per_minute`` requests per sliding ``window`` (a minute)."""

    def __init__(self, min_interval: float, per_minute: int, window: float = WINDOW) -> None:
        self.min_interval = min_interval
        self.per_minute = per_minute
        self.window = window * MARGIN
        self._turn = threading.Lock()  # held for the whole request
        self._lock = threading.Lock()  # guards _hold_until (set from any thread)
        self._done: deque[float] = deque()  # when each recent answer arrived
        self._hold_until = 0.0

    def tighten(self, min_interval: float, per_minute: int) -> None:
        """Two sources sharing a token: the stricter limits win."""
        with self._lock:
            self.min_interval = max(self.min_interval, min_interval)
            self.per_minute = min(self.per_minute, per_minute)

    def _next_slot(self, now: float) -> float:
        while self._done and self._done[0] <= now - self.window:
            self._done.popleft()
        with self._lock:
            slot = max(now, self._hold_until)
        if self._done:
            slot = max(slot, self._done[-1] + self.min_interval * MARGIN)
        if len(self._done) >= self.per_minute:
            slot = max(slot, self._done[-self.per_minute] + self.window)
        return slot

    @contextmanager
    def turn(self) -> Iterator[None]:
        """Wait for this token's next slot, then make the request inside the ``with`` block."""
        with self._turn:
            while True:
                now = time.monotonic()
                slot = self._next_slot(now)
                if slot <= now:
                    break
                time.sleep(slot - now)
            try:
                yield
            finally:
                self._done.append(time.monotonic())

    def hold(self, seconds: float) -> None:
        """Send nothing with this token for ``seconds`` (after IBKR answered 1018)."""
        with self._lock:
            self._hold_until = max(self._hold_until, time.monotonic() + seconds)


_pacers: dict[str, Pacer] = {}
_pacers_lock = threading.Lock()


def pacer_for(token: str, min_interval: float, per_minute: int) -> Pacer:
    """The one pacer of this process for ``token`` (held under a hash, never the token itself)."""
    key = hashlib.sha256(token.encode("utf-8")).hexdigest()
    with _pacers_lock:
        pacer = _pacers.get(key)
        if pacer is None:
            pacer = _pacers[key] = Pacer(min_interval, per_minute)
        else:
            pacer.tighten(min_interval, per_minute)
        return pacer
