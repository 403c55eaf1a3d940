"""Keeping child processes up: start again each one that exits, with a backoff, up to a crash limit.

`devhost up` watches Azurite, `devhost serve` and the chat page with a `Supervisor` while it serves: a child that
exits is started again (same command, ports and state) after a short backoff that doubles with each recent exit,
with one line on stderr; a child that exits `max_crashes` times within `window_s` ends supervision with
`RuntimeError` (the caller then stops everything).
"""

from __future__ import annotations

import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Watched:
    """A child to keep running: its name, its exit status (None while it runs) and how to start it again."""

    name: str
    poll: Callable[[], int | None]
    restart: Callable[[], object]


class Supervisor:
    """Starts again each watched child that exited; gives up after `max_crashes` exits of one within `window_s`."""

    def __init__(self, children: list[Watched], max_crashes: int = 5, window_s: float = 60.0,
                 backoff_s: float = 0.5, max_backoff_s: float = 8.0) -> None:
        self.children = children
        self.max_crashes, self.window_s = max_crashes, window_s
        self.backoff_s, self.max_backoff_s = backoff_s, max_backoff_s
        self.exits: dict[str, deque[float]] = {c.name: deque() for c in children}

    def check(self) -> None:
        """One look at every child: start again those that exited; `RuntimeError` when one exited too often."""
        for c in self.children:
            code = c.poll()
            if code is None:
                continue
            now, recent = time.monotonic(), self.exits[c.name]
            recent.append(now)
            while now - recent[0] > self.window_s:
                recent.popleft()
            if len(recent) >= self.max_crashes:
                raise RuntimeError(f"{c.name} exited {len(recent)} times within {self.window_s:g}s "
                                   f"(last status {code}); giving up")
            delay = min(self.backoff_s * 2 ** (len(recent) - 1), self.max_backoff_s)
            print(f"devhost up: {c.name} exited with status {code}; restarting it in {delay:.1f}s "
                  f"({len(recent)} of {self.max_crashes} exits allowed per {self.window_s:g}s)",
                  file=sys.stderr, flush=True)
            time.sleep(delay)
            try:
                c.restart()
            except (RuntimeError, OSError) as exc:  # still down: the next look counts it as another exit
                print(f"devhost up: restarting {c.name} failed: {exc}", file=sys.stderr, flush=True)

    def run(self, interval_s: float = 0.5) -> None:
        """`check` until an exception ends it (Ctrl-C, or a child that keeps exiting)."""
        while True:
            self.check()
            time.sleep(interval_s)
