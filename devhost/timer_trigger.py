"""Timer trigger: NCRONTAB schedules (``{second} {minute} {hour} {day} {month} {day-of-week}``) or a
``hh:mm:ss`` interval, invoking the function with an ``azure.functions.TimerRequest``.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from azure.functions.timer import TimerRequest

log = logging.getLogger("devhost.timer")

_RANGES = ((0, 59), (0, 59), (0, 23), (1, 31), (1, 12), (0, 6))
_NAMES = {"jan": 1, "feb": 2, "mar": 3, "apr": 4, "may": 5, "jun": 6, "jul": 7, "aug": 8, "sep": 9, "oct": 10,
          "nov": 11, "dec": 12, "sun": 0, "mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6}


class ScheduleError(ValueError):
    """The timer schedule is neither a 6-field NCRONTAB expression nor an ``hh:mm:ss`` interval."""


class Schedule:
    """A parsed NCRONTAB expression or interval; :meth:`next_after` gives the next occurrence."""

    def __init__(self, expression: str) -> None:
        self.expression = expression.strip()
        self.interval: timedelta | None = None
        self.fields: list[set[int]] = []
        interval = re.fullmatch(r"(?:(\d+)\.)?(\d{1,2}):(\d{2}):(\d{2})", self.expression)
        if interval:
            days, hours, minutes, seconds = (int(g or 0) for g in interval.groups())
            self.interval = timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
            if self.interval <= timedelta(0):
                raise ScheduleError(f"timer interval must be positive: {expression!r}")
            return
        parts = self.expression.split()
        if len(parts) != 6:
            raise ScheduleError(f"NCRONTAB needs 6 fields (sec min hour day month weekday): {expression!r}")
        self.fields = [_parse_field(p.lower(), lo, hi, expression) for p, (lo, hi) in zip(parts, _RANGES, strict=True)]
        self._day_any = parts[3] == "*"
        self._dow_any = parts[5] == "*"

    def next_after(self, when: datetime) -> datetime:
        """The first occurrence strictly after ``when`` (aware UTC)."""
        if self.interval is not None:
            return when + self.interval
        seconds, minutes, hours, days, months, weekdays = self.fields
        t = when.replace(microsecond=0) + timedelta(seconds=1)
        for _ in range(400 * 24 * 60):  # bounded: at most one step per minute over a leap-year span
            if t.month not in months:
                t = (t.replace(day=1, hour=0, minute=0, second=0) + timedelta(days=32)).replace(day=1)
            elif not self._day_matches(t, days, weekdays):
                t = t.replace(hour=0, minute=0, second=0) + timedelta(days=1)
            elif t.hour not in hours:
                t = t.replace(minute=0, second=0) + timedelta(hours=1)
            elif t.minute not in minutes:
                t = t.replace(second=0) + timedelta(minutes=1)
            elif t.second not in seconds:
                t += timedelta(seconds=1)
            else:
                return t
        raise ScheduleError(f"schedule {self.expression!r} never fires")

    def _day_matches(self, t: datetime, days: set[int], weekdays: set[int]) -> bool:
        weekday = (t.weekday() + 1) % 7  # NCRONTAB: 0 = Sunday
        if self._day_any or self._dow_any:
            return t.day in days and weekday in weekdays
        return t.day in days or weekday in weekdays


def _parse_field(text: str, lo: int, hi: int, expression: str) -> set[int]:
    values: set[int] = set()
    for part in text.split(","):
        body, _, step_text = part.partition("/")
        step = int(step_text) if step_text else 1
        if body == "*":
            start, end = lo, hi
        elif "-" in body:
            a, b = body.split("-", 1)
            start, end = _value(a), _value(b)
        else:
            start = _value(body)
            end = hi if step_text else start
        if not (lo <= start <= hi and lo <= end <= hi) or step <= 0:
            raise ScheduleError(f"field {text!r} out of range {lo}-{hi} in {expression!r}")
        values.update(range(start, end + 1, step))
    return values


def _value(text: str) -> int:
    if text in _NAMES:
        return _NAMES[text]
    if not text.isdigit():
        raise ScheduleError(f"not a number: {text!r}")
    return int(text)


class TimerScheduler:
    """Calls ``on_tick`` with a ``TimerRequest`` on every occurrence of ``schedule``."""

    def __init__(self, schedule: str, on_tick: Callable[[TimerRequest], Awaitable[Any]], *,
                 run_on_startup: bool = False, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.schedule = Schedule(schedule)
        self.on_tick = on_tick
        self.run_on_startup = run_on_startup
        self.clock = clock

    async def run(self) -> None:
        """Fire forever (once at start when ``run_on_startup``)."""
        if self.run_on_startup:
            await self._fire(False)
        while True:
            now = self.clock()
            due = self.schedule.next_after(now)
            await asyncio.sleep((due - now).total_seconds())
            await self._fire((self.clock() - due) > timedelta(seconds=5))

    async def _fire(self, past_due: bool) -> None:
        try:
            await self.on_tick(TimerRequest(past_due=past_due))
        except Exception:  # a failing function must not stop the schedule
            log.exception("timer function for %r failed", self.schedule.expression)
