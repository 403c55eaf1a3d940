"""The replicas' own reports of what they serve, read from the staging target (format and stale rule:
inference_server/replica_state.py). The status API shows them as `replicas_observed`.

Reports live in `<store root of the app>/_replicas/<replica id>.json`, beside the manifest, on a `LocalFolderTarget`
or an `AzureFileShareTarget`. Names starting with `.` (a replica's temporary files) and other than `*.json` are
skipped. A file that cannot be read or parsed is listed as damaged with the reason, never raised.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

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
