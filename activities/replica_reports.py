"""The replicas' own reports of what they serve, read from the staging target (format and stale rule:
inference_server/replica_state.py). The status API shows them as `replicas_observed`; the rollout gate applies
`replica_verdict` to them (a version is live only when every replica the platform lists reports it).

Reports live in `<store root of the app>/_replicas/<replica id>.json`, beside the manifest, on a `LocalFolderTarget`
or an `AzureFileShareTarget`. Names starting with `.` (a replica's temporary files) and other than `*.json` are
skipped. A file that cannot be read or parsed is listed as damaged with the reason, never raised.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from activities.adapter_store import AzureFileShareTarget, LocalFolderTarget, StagingTarget
from activities.validation import check_name
from inference_image.inference_server.replica_state import (
    MAX_REPORT_BYTES,
    REPLICA_DIR,
    ReplicaReportError,
    heartbeat_age_s,
    is_stale,
    parse_report,
    stale_after_s,
)

#: A report file's content, or why it could not be read.
FileContent = bytes | str


def _is_report(name: str) -> bool:
    return name.endswith(".json") and not name.startswith(".")


def _too_large(size: int) -> str:
    return f"report is {size} bytes, more than {MAX_REPORT_BYTES}"


def _local_files(target: LocalFolderTarget, app: str) -> dict[str, FileContent]:
    folder = target.app_root(app) / REPLICA_DIR
    if not folder.is_dir():
        return {}
    found: dict[str, FileContent] = {}
    for path in folder.iterdir():
        if not _is_report(path.name):
            continue
        try:
            size = path.stat().st_size
            found[path.name] = path.read_bytes() if size <= MAX_REPORT_BYTES else _too_large(size)
        except OSError as exc:  # removed by its replica meanwhile, or unreadable
            found[path.name] = f"unreadable: {exc}"
    return found


def _share_files(target: AzureFileShareTarget, app: str) -> dict[str, FileContent]:
    from azure.core.exceptions import AzureError, ResourceNotFoundError

    folder = target._path(check_name("app", app), REPLICA_DIR)  # the target's own path rule
    try:
        items = list(target.share.get_directory_client(folder).list_directories_and_files())
    except ResourceNotFoundError:
        return {}
    found: dict[str, FileContent] = {}
    for item in items:
        name = item["name"]
        if item["is_directory"] or not _is_report(name):
            continue
        size = int(item["size"])
        if size > MAX_REPORT_BYTES:
            found[name] = _too_large(size)
            continue
        try:
            found[name] = target.share.get_file_client(f"{folder}/{name}").download_file().readall()
        except AzureError as exc:  # removed by its replica meanwhile, or unreadable
            found[name] = f"unreadable: {type(exc).__name__}: {exc}"
    return found


def read_report_files(target: StagingTarget, app: str) -> dict[str, FileContent]:
    """File name → content (or why it could not be read) of the app's replica reports."""
    if isinstance(target, LocalFolderTarget):
        return _local_files(target, app)
    if isinstance(target, AzureFileShareTarget):
        return _share_files(target, app)
    raise TypeError(f"cannot read replica reports from a {type(target).__name__}")


def observe(name: str, content: FileContent, now: datetime) -> dict[str, Any]:
    """One file as the status API shows it: the report with `stale`, `heartbeat_age_s` and `stale_after_s`, or
    `damaged` with the reason (`stale` is then None: nothing can be said)."""
    stem = name.removesuffix(".json")
    try:
        if isinstance(content, str):
            raise ReplicaReportError(content)
        report = parse_report(content)
    except ReplicaReportError as exc:
        return {"file": name, "replica_id": stem, "damaged": str(exc), "stale": None}
    return {**report, "file": name, "heartbeat_age_s": round(heartbeat_age_s(report, now), 3),
            "stale_after_s": stale_after_s(float(report["sync_interval_s"])), "stale": is_stale(report, now)}


def replicas_observed(target: StagingTarget, app: str, now: datetime | None = None) -> list[dict[str, Any]]:
    """Every replica report of the app, by file name."""
    now = now or datetime.now(UTC)
    files = read_report_files(target, app)
    return [observe(name, files[name], now) for name in sorted(files)]


VerdictState = Literal["ready", "waiting", "refused"]


@dataclass(frozen=True)
class ReplicaVerdict:
    """The gate's reading of the replicas: `ready` (every listed replica serves the candidate), `waiting` (some
    replica has not shown it yet: `why`), `refused` (a replica's engine refused it: `why` is the engine's reason,
    `replica` the replica). `replicas`: per listed replica, what its report says and whether it counts."""

    state: VerdictState
    why: str | None = None
    replica: str | None = None
    replicas: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _figures(entry: Mapping[str, Any] | None) -> dict[str, Any]:
    if entry is None:
        return {"reported": False}
    if entry.get("damaged"):
        return {"reported": True, "damaged": entry["damaged"]}
    keys = ("alias_version", "manifest_updated_at", "converged", "stale", "heartbeat_age_s")
    return {"reported": True, **{k: entry.get(k) for k in keys}}


def _refusal(entry: Mapping[str, Any], versions: Sequence[str | None]) -> str | None:
    """The engine's reason when this fresh report lists one of `versions` among its load errors."""
    for error in (entry.get("load_errors") or {}).values():
        if isinstance(error, Mapping) and error.get("version") in versions:
            return str(error.get("reason") or "refused by the inference engine")
    return None


def _pending(entry: Mapping[str, Any] | None, version: str | None, manifest_updated_at: str | None) -> str | None:
    """Why this replica does not count (yet) for `version`, or None when it does."""
    if entry is None:
        return "no report"
    if entry.get("damaged"):
        return f"damaged report: {entry['damaged']}"
    if entry.get("stale"):
        return f"stale report (heartbeat {entry.get('heartbeat_age_s')} s ago)"
    if entry.get("manifest_updated_at") != manifest_updated_at:
        return f"has not read the manifest of {manifest_updated_at} (read {entry.get('manifest_updated_at')})"
    if entry.get("alias_version") != version or not entry.get("converged"):
        return f"serves {entry.get('alias_version')!r}" + ("" if entry.get("converged") else ", not converged")
    return None


def replica_verdict(listed: Sequence[str], observed: Sequence[Mapping[str, Any]], version: str | None,
                    manifest_updated_at: str | None, candidate: str | None = None) -> ReplicaVerdict:
    """The gate's rule over the listed replicas and the reports (`replicas_observed` entries): a fresh report with
    a load error for `version` (or for the manifest's `candidate` version) refuses it; every listed replica needs
    a fresh, undamaged report of the manifest written (`manifest_updated_at`) whose alias serves `version`
    (None: the base model), converged (which covers the candidate); reports of unlisted replicas are ignored; no
    listed replica at all is waiting."""
    by_id = {entry.get("replica_id"): entry for entry in observed}
    figures: dict[str, dict[str, Any]] = {}
    waiting: list[str] = []
    refused: tuple[str, str] | None = None
    for name in sorted(set(listed)):
        entry = by_id.get(name)
        figures[name] = _figures(entry)
        watched = [v for v in (version, candidate) if v is not None]
        reason = _refusal(entry, watched) if entry is not None and entry.get("stale") is False else None
        if reason is not None:
            refused = refused or (name, reason)
            figures[name]["refused"] = reason
            continue
        why = _pending(entry, version, manifest_updated_at)
        figures[name]["counted"] = why is None
        if why is not None:
            figures[name]["why"] = why
            waiting.append(f"{name}: {why}")
    if refused is not None:
        return ReplicaVerdict("refused", refused[1], refused[0], figures)
    if not figures:
        return ReplicaVerdict("waiting", "the platform lists no running replica", replicas=figures)
    if waiting:
        return ReplicaVerdict("waiting", "; ".join(waiting), replicas=figures)
    return ReplicaVerdict("ready", replicas=figures)


def replica_metrics(target: StagingTarget, app: str) -> dict[str, dict[str, Any]]:
    """`<replica id>@<started_at>` → that process's per-version metrics (cumulative counters since it started), for
    every readable report, stale ones included (a replica that died during a canary hold still served its share of
    it). Keyed by process, not by name: a replica restarted under its name is a new set of counters."""
    metrics: dict[str, dict[str, Any]] = {}
    for entry in replicas_observed(target, app):
        if not entry.get("damaged") and isinstance(entry.get("metrics"), Mapping):
            metrics[f"{entry['replica_id']}@{entry.get('started_at')}"] = dict(entry["metrics"])
    return metrics
