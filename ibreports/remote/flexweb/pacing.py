"""Request pacing per token: IBKR allows 1 request per second and 10 per minute per token.

Every request made with a token (SendRequest and each GetStatement poll) first waits
for its turn on that token's :class:`Pacer`, shared by every source and thread of this
process that uses the same token. After a 1018 ("too many requests") the pacer holds
all requests back for a while: another program may be using the token too.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import deque

WINDOW = 60.0  # seconds: IBKR counts requests per minute
MARGIN = 1.05  # our clock is not IBKR's: requests arrive with some jitter, so keep 5% clear of each limit


class Pacer:
    """At most one request per ``min_interval`` seconds and ``per_minute`` per sliding ``window`` (a minute)."""

    def __init__(self, min_interval: float, per_minute: int, window: float = WINDOW) -> None:
        self.min_interval = min_interval
        self.per_minute = per_minute
        self.window = window * MARGIN
        self._lock = threading.Lock()
        self._sent: deque[float] = deque()
        self._hold_until = 0.0

    def tighten(self, min_interval: float, per_minute: int) -> None:
        """Two sources sharing a token: the stricter limits win."""
        with self._lock:
            self.min_interval = max(self.min_interval, min_interval)
            self.per_minute = min(self.per_minute, per_minute)

    def _next_slot(self, now: float) -> float:
        while self._sent and self._sent[0] <= now - self.window:
            self._sent.popleft()
        slot = max(now, self._hold_until)
        if self._sent:
            slot = max(slot, self._sent[-1] + self.min_interval * MARGIN)
        if len(self._sent) >= self.per_minute:
            slot = max(slot, self._sent[-self.per_minute] + self.window)
        return slot

    def wait(self) -> float:
        """Block until a request may be sent, and count it as sent; returns the seconds waited."""
        waited = 0.0
        while True:
            with self._lock:
                now = time.monotonic()
                slot = self._next_slot(now)
                if slot <= now:
                    self._sent.append(now)
                    return waited
            time.sleep(slot - now)
            waited += slot - now

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
