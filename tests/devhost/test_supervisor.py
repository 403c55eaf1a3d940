"""`Supervisor`: a child that exits is started again with a line on stderr; one that keeps exiting ends it."""

from __future__ import annotations

import time

import pytest

from devhost.supervisor import Supervisor, Watched


class FakeChild:
    """Exits when told to; `restart` brings it back and counts."""

    def __init__(self, name: str) -> None:
        self.name, self.code, self.restarts = name, None, 0

    def watched(self) -> Watched:
        return Watched(self.name, lambda: self.code, self.restart)

    def restart(self) -> None:
        self.code, self.restarts = None, self.restarts + 1


def test_exited_child_is_started_again_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    """Only the child that exited is restarted, and stderr says so once."""
    dead, alive = FakeChild("Azurite"), FakeChild("devhost serve")
    supervisor = Supervisor([dead.watched(), alive.watched()], backoff_s=0)
    supervisor.check()
    assert (dead.restarts, alive.restarts) == (0, 0)
    dead.code = -9
    supervisor.check()
    assert (dead.restarts, alive.restarts) == (1, 0)
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "Azurite exited with status -9; restarting" in err[0]


def test_gives_up_after_max_exits_within_the_window() -> None:
    """The fifth exit within the window raises, naming the child; older exits fall out of the window."""
    child = FakeChild("devhost serve")
    supervisor = Supervisor([child.watched()], max_crashes=3, window_s=0.3, backoff_s=0)
    for _ in range(2):
        child.code = 1
        supervisor.check()
    time.sleep(0.35)  # both exits now older than the window
    for _ in range(2):
        child.code = 1
        supervisor.check()
    assert child.restarts == 4
    child.code = 1
    with pytest.raises(RuntimeError, match="devhost serve exited 3 times within 0.3s"):
        supervisor.check()
    assert child.restarts == 4


def test_failed_restart_counts_as_another_exit(capsys: pytest.CaptureFixture[str]) -> None:
    """A restart that raises is reported; the child stays down and the next look tries again."""
    attempts = []

    def restart() -> None:
        attempts.append(1)
        raise RuntimeError("port taken")

    supervisor = Supervisor([Watched("Azurite", lambda: 1, restart)], max_crashes=3, backoff_s=0)
    supervisor.check()
    supervisor.check()
    assert len(attempts) == 2 and "restarting Azurite failed: port taken" in capsys.readouterr().err
    with pytest.raises(RuntimeError, match="giving up"):
        supervisor.check()
