"""The replica report's per-version counters: the histogram's buckets, p95 from it, and diffs across a restart."""

from __future__ import annotations

from typing import Any

import pytest

from inference_server.metrics import TTFT_MS_BOUNDS, VersionMetrics, diff, p95_ms

LE = list(TTFT_MS_BOUNDS)


def entry(requests: int, errors: int, counts: list[int]) -> dict[str, Any]:
    return {"requests": requests, "errors": errors, "ttft_ms": {"le": LE, "counts": counts}}


def counts_at(**at: int) -> list[int]:
    """A counts list with `at` = {"i<index>": n}."""
    out = [0] * (len(LE) + 1)
    for key, n in at.items():
        out[int(key[1:])] = n
    return out


@pytest.mark.parametrize(("seconds", "index"), [
    (0.0, 0), (LE[0] / 1000, 0), (LE[0] / 1000 + 1e-6, 1), (LE[10] / 1000, 10), (LE[10] / 1000 + 1e-6, 11),
    (LE[-1] / 1000, len(LE) - 1), (LE[-1] / 1000 + 0.001, len(LE)), (3600.0, len(LE))])
def test_ttft_bucket_holds_upper_bound(seconds: float, index: int) -> None:
    """counts[i] holds (le[i-1], le[i]]; the last entry everything above the last bound."""
    m = VersionMetrics()
    m.ttft("v", seconds)
    assert m.snapshot()["v"]["ttft_ms"]["counts"] == counts_at(**{f"i{index}": 1})


def test_bounds_are_fine_enough_for_a_ratio_of_one_and_a_half() -> None:
    """Neighbouring bounds at most 1.25× apart from 1 ms to a minute: a p95 read from the buckets is within 25 %."""
    assert LE[0] <= 1 and LE[-1] >= 60_000
    assert all(b / a <= 1.26 for a, b in zip(LE, LE[1:], strict=False))


def test_snapshot_counts_and_copies() -> None:
    m = VersionMetrics()
    m.request("a")
    m.request("a")
    m.error("a")
    m.request("b")
    snap = m.snapshot()
    assert {v: (e["requests"], e["errors"]) for v, e in snap.items()} == {"a": (2, 1), "b": (1, 0)}
    snap["a"]["ttft_ms"]["counts"][0] = 99
    assert m.snapshot()["a"]["ttft_ms"]["counts"][0] == 0


def test_p95_is_the_bucket_upper_bound() -> None:
    assert p95_ms(LE, [0] * (len(LE) + 1)) is None
    assert p95_ms(LE, counts_at(i2=100)) == LE[2]
    assert p95_ms(LE, counts_at(i2=95, i6=5)) == LE[2]  # the 95th of 100 is still in (LE[1], LE[2]]
    assert p95_ms(LE, counts_at(i2=94, i6=6)) == LE[6]
    assert p95_ms(LE, counts_at(**{f"i{len(LE)}": 3})) == LE[-1]  # above the last bound: the histogram says no more


def test_diff_subtracts_and_treats_a_drop_as_a_restart() -> None:
    before = entry(10, 1, counts_at(i2=10))
    after = entry(15, 3, counts_at(i2=12, i4=3))
    assert diff(before, after) == entry(5, 2, counts_at(i2=2, i4=3))
    assert diff(None, after) == after
    restarted = entry(4, 0, counts_at(i3=4))  # fewer requests than before: the process started again
    assert diff(before, restarted) == restarted
    assert diff(entry(10, 1, counts_at(i2=10)), entry(12, 1, counts_at(i2=9, i5=3))) == entry(12, 1, counts_at(i2=9, i5=3))
