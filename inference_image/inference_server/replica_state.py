"""What each replica reports: its observed state, written beside the manifest on every sync (stdlib only).

Every server replica writes `<store>/_replicas/<replica id>.json` (`--replica-state-dir` elsewhere, `off`: not at
all) after each sync and removes it on a graceful stop. The write is atomic (a temporary `.`-name, then a rename), so
a reader sees a whole report or the previous one. A store the server cannot write (a read-only mount) never stops
serving: the first failure is logged, later ones are not, and writing resumes when the store allows it.

Replica id: `CONTAINER_APP_REPLICA_NAME` (Azure Container Apps sets it per replica), else `<hostname>-<pid>`;
characters other than letters, digits, `.`, `_`, `-` become `_`.

The report (schema 1) — `build_report()` is its only writer, `parse_report()` its only reader:
    schema, replica_id, host, pid, revision (CONTAINER_APP_REVISION or null), started_at, heartbeat_at (UTC ISO),
    sync_interval_s, alias, alias_target (adapter or base model name; null while the alias is unavailable),
    alias_version, alias_unavailable (why, or null), adapters ({name: {version, sha256}} loaded),
    load_errors ({name: {version, sha256, reason}} the engine refused, the candidate's too), candidate
    ({adapter, version, weight, loaded} or null), metrics ({version: {requests, errors, ttft_ms: {le, counts}}},
    metrics.py `VersionMetrics`), manifest_updated_at (the `updated_at` of the manifest the latest sync read),
    converged (the alias serves that manifest's active version and the candidate is its candidate at its weight),
    engine_ready, draining, last_sync_error.

Stale rule (`stale_after_s`): a report is stale when its heartbeat is older than max(3 × the replica's own
`sync_interval_s`, 30 s): three missed syncs, and never less than 30 s so that clock skew between the replica and
the reader and a slow share do not make a healthy replica look dead.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

REPLICA_DIR = "_replicas"
SCHEMA_VERSION = 1
STALE_MIN_S = 30.0
STALE_SYNC_INTERVALS = 3
#: A report larger than this is damaged (a real one is a few KiB).
MAX_REPORT_BYTES = 1 << 20
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


class ReplicaReportError(ValueError):
    """A replica report that cannot be read as one (not JSON, wrong schema, fields missing or of the wrong type)."""


def replica_id(env: Mapping[str, str] | None = None) -> str:
    """This replica's id: ACA's replica name, else `<hostname>-<pid>` (made safe as a file name)."""
    env = os.environ if env is None else env
    raw = env.get("CONTAINER_APP_REPLICA_NAME") or f"{socket.gethostname()}-{os.getpid()}"
    return _UNSAFE.sub("_", raw).lstrip(".")[:128] or f"pid-{os.getpid()}"


def utc_iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds")


def stale_after_s(sync_interval_s: float) -> float:
    """Heartbeat age beyond which a report is stale (see the module docstring)."""
    return max(STALE_SYNC_INTERVALS * sync_interval_s, STALE_MIN_S)


def parse_report(data: bytes) -> dict[str, Any]:
    """A report file's content, checked: raises `ReplicaReportError` saying what is wrong."""
    if len(data) > MAX_REPORT_BYTES:
        raise ReplicaReportError(f"report is {len(data)} bytes, more than {MAX_REPORT_BYTES}")
    try:
        report = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReplicaReportError(f"not valid JSON: {exc}") from exc
    if not isinstance(report, dict):
        raise ReplicaReportError("report must be a JSON object")
    if report.get("schema") != SCHEMA_VERSION:
        raise ReplicaReportError(f"unsupported report schema {report.get('schema')!r}")
    if not isinstance(report.get("replica_id"), str) or not report["replica_id"]:
        raise ReplicaReportError("'replica_id' must be a non-empty string")
    interval = report.get("sync_interval_s")
    if isinstance(interval, bool) or not isinstance(interval, int | float) or not 0 < interval < math.inf:
        raise ReplicaReportError("'sync_interval_s' must be a positive number")
    heartbeat_at(report)
    for key in ("adapters", "load_errors"):
        if not isinstance(report.get(key), dict):
            raise ReplicaReportError(f"{key!r} must be an object")
    return report


def heartbeat_at(report: Mapping[str, Any]) -> datetime:
    """The report's heartbeat time (timezone-aware)."""
    raw = report.get("heartbeat_at")
    try:
        when = datetime.fromisoformat(raw) if isinstance(raw, str) else None
    except ValueError:
        when = None
    if when is None or when.tzinfo is None:
        raise ReplicaReportError(f"'heartbeat_at' must be an ISO time with a UTC offset, not {raw!r}")
    return when


def heartbeat_age_s(report: Mapping[str, Any], now: datetime) -> float:
    """Seconds since the heartbeat (negative when the replica's clock is ahead of `now`)."""
    return (now - heartbeat_at(report)).total_seconds()


def is_stale(report: Mapping[str, Any], now: datetime) -> bool:
    """The stale rule applied to a parsed report."""
    return heartbeat_age_s(report, now) > stale_after_s(float(report["sync_interval_s"]))


def build_report(replica: str, started_at: float, sync_interval_s: float, observed: Mapping[str, Any],
                 env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """A report for now: identity and times around `observed` (what `ServerState.observed()` returns)."""
    env = os.environ if env is None else env
    return {
        "schema": SCHEMA_VERSION,
        "replica_id": replica,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "revision": env.get("CONTAINER_APP_REVISION") or None,
        "started_at": utc_iso(started_at),
        "heartbeat_at": utc_iso(time.time()),
        "sync_interval_s": sync_interval_s,
        **observed,
    }


class ReplicaReporter:
    """Writes this replica's report into `folder` (None: reporting is off). Never raises for I/O."""

    def __init__(self, folder: Path | None, replica: str, sync_interval_s: float) -> None:
        self.folder = folder
        self.replica = replica
        self.sync_interval_s = sync_interval_s
        self.started_at = time.time()
        self.last_error: str | None = None
        self._lock = threading.Lock()  # writes run in threads; a stop must not be undone by a late write
        self._closed = False

    @property
    def path(self) -> Path | None:
        return self.folder / f"{self.replica}.json" if self.folder is not None else None

    def write(self, observed: Mapping[str, Any]) -> bool:
        """Write the report for `observed` atomically; False (logged on the first failure only) when it cannot."""
        path = self.path
        if path is None:
            return False
        report = build_report(self.replica, self.started_at, self.sync_interval_s, observed)
        with self._lock:
            if self._closed:
                return False
            tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
            try:
                path.parent.mkdir(exist_ok=True)  # not parents: never re-create a deleted app's store root
                tmp.write_text(json.dumps(report, indent=1), encoding="utf-8")
                os.replace(tmp, path)
            except OSError as exc:
                self._failed(exc)
                with contextlib.suppress(OSError):
                    tmp.unlink(missing_ok=True)
                return False
        if self.last_error is not None:
            log.info("replica state written to %s again", path)
            self.last_error = None
        return True

    def _failed(self, exc: OSError) -> None:
        if self.last_error is None:
            log.warning("cannot write the replica state to %s (serving goes on; retried on every sync): %s",
                        self.path, exc)
        self.last_error = f"{type(exc).__name__}: {exc}"

    def remove(self) -> None:
        """Stop reporting and delete this replica's report (a graceful stop: the replica is gone, not stale)."""
        with self._lock:
            self._closed = True
            if self.path is not None:
                try:
                    self.path.unlink(missing_ok=True)
                except OSError as exc:
                    log.info("replica state %s not removed: %s", self.path, exc)
