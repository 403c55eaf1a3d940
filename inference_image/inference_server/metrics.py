"""Prometheus metrics, each app with its own `CollectorRegistry` (no process-global state)."""

from __future__ import annotations

import bisect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
TTFT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class ServerMetrics:
    """The server's counters, histograms and gauges; gauges read live values through callbacks.

    Labelled children are bound once per label tuple and cached: `labels()` validates and hashes its arguments on
    every call, which showed up in the per-request profile. Label values are server-chosen (served model names,
    status codes, error types), and prometheus-client keeps every child anyway, so the cache adds no growth.
    """

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, loaded_adapters: Callable[[], float], in_flight: Callable[[], float]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        self.requests = Counter("inference_requests", "Chat requests by model and status", ["model", "status"], registry=reg)
        self.errors = Counter("inference_errors", "Failed chat requests by error type", ["type"], registry=reg)
        self.tokens = Counter("inference_generated_tokens", "Generated tokens by model", ["model"], registry=reg)
        self.latency = Histogram(
            "inference_request_latency_seconds", "Chat request latency", buckets=LATENCY_BUCKETS, registry=reg
        )
        self.ttft = Histogram(
            "inference_time_to_first_token_seconds", "Time to first token", buckets=TTFT_BUCKETS, registry=reg
        )
        Gauge("inference_loaded_adapters", "Adapters loaded and routable", registry=reg).set_function(loaded_adapters)
        Gauge("inference_in_flight_requests", "Chat requests being served", registry=reg).set_function(in_flight)
        self._children: dict[tuple[object, ...], Counter] = {}

    def _child(self, metric: Counter, *labels: str) -> Counter:
        """`metric.labels(*labels)`, bound once and cached."""
        key = (metric, *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def observe(self, model: str, status: int, latency_s: float, ttft_s: float | None, tokens: int) -> None:
        """Record one finished chat request."""
        self._child(self.requests, model, str(status)).inc()
        self.latency.observe(latency_s)
        if ttft_s is not None:
            self.ttft.observe(ttft_s)
        if tokens:
            self._child(self.tokens, model).inc(tokens)

    def error(self, model: str, status: int, error_type: str) -> None:
        """Record one failed chat request."""
        self._child(self.requests, model, str(status)).inc()
        self._child(self.errors, error_type).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


#: Bounds (ms) of the per-version time-to-first-token histogram in each replica's report (docs/rollouts.md):
#: `counts[i]` holds the samples in (bounds[i-1], bounds[i]], the last entry those above the last bound. Each bound
#: is 1.25× the one before (1 ms to about 70 s), so a p95 read from it is within 25 % and a canary's
#: `max_ttft_p95_ratio` of 1.5 means what it says.
TTFT_MS_BOUNDS = tuple(round(1.25 ** i, 2) for i in range(51))


class VersionMetrics:
    """Per-version counters for the replica report (cumulative since the process started; the orchestrator diffs
    two snapshots with `diff`): chat requests that reached routing, those that ended in a 5xx or failed mid-stream,
    and a time-to-first-token histogram on `TTFT_MS_BOUNDS`. Keys are served versions (the base model's name for
    base-model requests), so they grow only with what the manifest loads."""

    def __init__(self) -> None:
        self._by_version: dict[str, dict[str, Any]] = {}

    def _entry(self, version: str) -> dict[str, Any]:
        entry = self._by_version.get(version)
        if entry is None:
            entry = self._by_version[version] = {"requests": 0, "errors": 0, "counts": [0] * (len(TTFT_MS_BOUNDS) + 1)}
        return entry

    def request(self, version: str) -> None:
        self._entry(version)["requests"] += 1

    def error(self, version: str) -> None:
        self._entry(version)["errors"] += 1

    def ttft(self, version: str, seconds: float) -> None:
        """One time to first token (streaming) or to the whole answer (non-streaming)."""
        self._entry(version)["counts"][bisect.bisect_left(TTFT_MS_BOUNDS, seconds * 1000.0)] += 1

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """`{version: {"requests", "errors", "ttft_ms": {"le", "counts"}}}` (copies)."""
        return {version: {"requests": e["requests"], "errors": e["errors"],
                          "ttft_ms": {"le": list(TTFT_MS_BOUNDS), "counts": list(e["counts"])}}
                for version, e in self._by_version.items()}


def diff(before: Mapping[str, Any] | None, after: Mapping[str, Any]) -> dict[str, Any]:
    """One version's counters over an interval (`{"requests", "errors", "ttft_ms": {"le", "counts"}}` at its end
    minus at its start). A counter that went down means the replica restarted: the end's counters are the
    interval's. None or other histogram bounds at the start: counted from zero."""
    hist = after["ttft_ms"]
    start = before if before is not None and list(before["ttft_ms"]["le"]) == list(hist["le"]) else None
    if start is None or after["requests"] < start["requests"] or after["errors"] < start["errors"] or any(
            a < b for a, b in zip(hist["counts"], start["ttft_ms"]["counts"], strict=True)):
        return {"requests": after["requests"], "errors": after["errors"],
                "ttft_ms": {"le": list(hist["le"]), "counts": list(hist["counts"])}}
    return {"requests": after["requests"] - start["requests"], "errors": after["errors"] - start["errors"],
            "ttft_ms": {"le": list(hist["le"]),
                        "counts": [a - b for a, b in zip(hist["counts"], start["ttft_ms"]["counts"], strict=True)]}}


def p95_ms(le: Sequence[float], counts: Sequence[int]) -> float | None:
    """The 95th percentile as the upper bound of the bucket that holds it (None: no samples; past the last bound:
    that bound, the histogram cannot say more)."""
    total = sum(counts)
    if not total:
        return None
    rank, seen = 0.95 * total, 0
    for bound, count in zip([*le, le[-1]], counts, strict=True):
        seen += count
        if seen >= rank:
            return float(bound)
    return float(le[-1])
