"""What every adapterctl command shares: exit codes, the output (human lines or one JSON document), the API
client from the resolved settings, and following a record to its end with its stages shown as they come."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, TextIO

from .api import OrchestratorApi
from .follow import follow, succeeded
from .render import PlainProgress, progress_for

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_API = 0, 1, 2, 3
EXIT_INTERRUPTED, EXIT_PIPE = 130, 141  # 128 + SIGINT, 128 + SIGPIPE, as a shell reports them


class UsageError(ValueError):
    """Bad input from the person running the command: exit 2 with one line."""


class Output:
    """Human lines to stdout as things happen, or one JSON document at the end (`--json`)."""

    def __init__(self, as_json: bool, stream: TextIO | None = None) -> None:
        self.as_json = as_json
        self.stream = stream or sys.stdout

    def line(self, text: str) -> None:
        if not self.as_json:
            print(text, file=self.stream, flush=True)

    def result(self, data: Any, text: str | None = None) -> None:
        if self.as_json:
            print(json.dumps(data, indent=2, default=str), file=self.stream)
        elif text is not None:
            print(text, file=self.stream)

    def progress(self) -> PlainProgress | None:
        """The upload / rollout progress renderer for this output (none with `--json`)."""
        return None if self.as_json else progress_for(self.stream)


def api_for(args: argparse.Namespace) -> OrchestratorApi:
    """The orchestrator client for the resolved `--url`, `--function-key` and HTTP timeout."""
    return OrchestratorApi(args.url, args.function_key, timeout=args.http_timeout)


def finish(out: Output, record: dict[str, Any]) -> int:
    """Show how a record ended (with the reason unless it succeeded); its exit status."""
    ok = succeeded(record)
    line = f"{record.get('id')}: {record.get('stage') or record.get('state') or record.get('runtime_status')}"
    if not ok and record.get("reason"):
        line += f" — {record['reason']}"
    out.result(record, line)
    return EXIT_OK if ok else EXIT_FAILED


def follow_and_show(api: OrchestratorApi, out: Output, record_id: str, timeout: float) -> int:
    """Follow a record to its end, showing each stage as it comes; the exit status of how it ended."""
    progress = out.progress()
    try:
        record = follow(api, record_id, timeout, progress.stage if progress else lambda _entry: None)
    finally:
        if progress:
            progress.end()
    return finish(out, record)
