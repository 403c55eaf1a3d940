"""The canary step's analysis: the candidate against the live version over one hold, from the replicas' metrics.

Each replica's report carries cumulative per-version counters (`metrics`: requests, errors, a time-to-first-token
histogram; inference_server/metrics.py). A step reads them at the start and at the end of its hold; the figures of
the hold are the differences, summed over the replicas (`replica_metrics` keys each replica process by its id and start
time, so one restarted under the same name, or first appearing, during the hold counts from zero). Pure functions: the orchestrator calls them while replaying.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from activities.rollout_policy import CanaryPolicy
from inference_image.inference_server.metrics import diff, p95_ms

#: How far past a policy's bound a figure may be and still meet it exactly (float noise).
EPSILON = 1e-9
#: {replica id: {version: {"requests", "errors", "ttft_ms": {"le", "counts"}}}}
ReplicaMetrics = Mapping[str, Mapping[str, Mapping[str, Any]]]


def _add(total: dict[str, Any] | None, part: Mapping[str, Any]) -> dict[str, Any]:
    """Sum counters; histograms only where the bounds agree (replicas of two image versions during an upgrade:
    the first bounds seen are kept, the other replicas' requests and errors still count)."""
    if total is None:
        return {"requests": part["requests"], "errors": part["errors"],
                "ttft_ms": {"le": list(part["ttft_ms"]["le"]), "counts": list(part["ttft_ms"]["counts"])}}
    total["requests"] += part["requests"]
    total["errors"] += part["errors"]
    if list(part["ttft_ms"]["le"]) == total["ttft_ms"]["le"]:
        total["ttft_ms"]["counts"] = [a + b for a, b in zip(total["ttft_ms"]["counts"], part["ttft_ms"]["counts"],
                                                            strict=True)]
    return total


def hold_figures(before: ReplicaMetrics, after: ReplicaMetrics, versions: tuple[str, ...]) -> dict[str, dict]:
    """Per version: requests, errors, error_rate and ttft_p95_ms over the hold, summed over the replicas that
    reported at its end."""
    totals: dict[str, dict[str, Any] | None] = dict.fromkeys(versions)
    for replica, metrics in after.items():
        for version in versions:
            if version in metrics:
                part = diff((before.get(replica) or {}).get(version), metrics[version])
                totals[version] = _add(totals[version], part)
    figures: dict[str, dict] = {}
    for version, total in totals.items():
        if total is None:
            figures[version] = {"requests": 0, "errors": 0, "error_rate": None, "ttft_p95_ms": None}
            continue
        requests = total["requests"]
        figures[version] = {
            "requests": requests, "errors": total["errors"],
            "error_rate": round(total["errors"] / requests, 4) if requests else None,
            "ttft_p95_ms": p95_ms(total["ttft_ms"]["le"], total["ttft_ms"]["counts"]) if requests else None,
        }
    return figures


def judge(figures: Mapping[str, Mapping[str, Any]], live: str, candidate: str, policy: CanaryPolicy) -> str | None:
    """Why the candidate fails this step against the policy, or None when it passes."""
    cand, base = figures[candidate], figures[live]
    if cand["requests"] < policy.min_requests:
        return f"not enough traffic to judge: {cand['requests']} candidate requests, the policy needs {policy.min_requests}"
    if not cand["requests"]:
        return None
    rate = cand["errors"] / cand["requests"]  # unrounded; a bound is met exactly up to float noise (EPSILON)
    if rate > policy.max_error_rate + EPSILON:
        return f"error rate {rate:.1%} is above the policy's {policy.max_error_rate:.1%}"
    live_rate = base["errors"] / base["requests"] if base["requests"] else None
    if live_rate is not None and rate - live_rate > policy.max_error_rate_increase + EPSILON:
        return (f"error rate {rate:.1%} is {rate - live_rate:.1%} above live's {live_rate:.1%} "
                f"(the policy allows {policy.max_error_rate_increase:.1%})")
    p95 = cand["ttft_p95_ms"]
    if policy.max_ttft_p95_ms is not None and p95 is not None and p95 > policy.max_ttft_p95_ms:
        return f"time to first token p95 {p95:g} ms is above the policy's {policy.max_ttft_p95_ms:g} ms"
    live_p95 = base["ttft_p95_ms"]
    if policy.max_ttft_p95_ratio is not None and p95 is not None and live_p95:
        if p95 > live_p95 * policy.max_ttft_p95_ratio:
            return (f"time to first token p95 {p95:g} ms is {p95 / live_p95:.2f}× live's {live_p95:g} ms "
                    f"(the policy allows {policy.max_ttft_p95_ratio:g}×)")
    return None
