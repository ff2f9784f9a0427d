"""Business days: weekdays minus an exchange's holidays, from the maintained ``holidays`` package.

``[coverage] calendar`` names one of the package's financial calendars (``NYSE`` by default)
or ``none`` for plain Monday-Friday.
"""

from __future__ import annotations

from datetime import date, timedelta
from functools import lru_cache

from .errors import ConfigError

WEEKDAYS_ONLY = "none"


@lru_cache(maxsize=1)
def known_calendars() -> tuple[str, ...]:
    """The calendar names ``[coverage] calendar`` accepts."""
    import holidays

    return tuple(sorted(holidays.list_supported_financial())) + (WEEKDAYS_ONLY,)


class BusinessDays:
    """Which days an exchange trades on; holiday years are loaded once each, on first use."""

    def __init__(self, calendar: str = "NYSE") -> None:
        self.calendar = calendar
        self._holidays = None
        if calendar != WEEKDAYS_ONLY:
            import holidays

            try:
                self._holidays = holidays.financial_holidays(calendar)
            except NotImplementedError:
                raise ConfigError(f"coverage.calendar {calendar!r} is not a calendar the holidays package knows.",
                                  f"Use one of {', '.join(known_calendars())}.") from None

    def is_business_day(self, day: date) -> bool:
        return day.weekday() < 5 and (self._holidays is None or day not in self._holidays)

    def between(self, start: date, end: date) -> list[date]:
        """Business days from ``start`` to ``end``, both included."""
        days, day = [], start
        while day <= end:
            if self.is_business_day(day):
                days.append(day)
            day += timedelta(days=1)
        return days

    def count(self, start: date, end: date) -> int:
        return len(self.between(start, end))
