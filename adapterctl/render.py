"""What adapterctl shows people: tables, one record's summary, and upload / rollout progress.

Progress has two renderers: on a terminal one line is redrawn in place (`TtyProgress`); anywhere else (a pipe, a
log, CI) plain lines are written as things happen, never carriage returns (`PlainProgress`).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, TextIO

from activities.records import TERMINAL

#: A record's fields as `status ID` shows them, in this order (absent or empty ones are left out).
SUMMARY_FIELDS = (("app", "app"), ("kind", "kind"), ("adapter", "adapter"), ("version", "version"),
                  ("source", "source"), ("state", "state"), ("runtime", "runtime_status"),
                  ("accepted", "accepted_at"), ("created", "created_at"), ("ended", "ended_at"),
                  ("attempts", "attempts"), ("retry at", "retry_at"), ("superseded by", "superseded_by"),
                  ("cause", "cause"), ("reason", "reason"))


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Left-aligned columns under a header line; empty cells show `-`; no trailing spaces."""
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells)


def _cell(value: Any) -> str:
    return "-" if value is None or value == "" else str(value).replace("\n", " ")


def parse_time(text: str | None) -> datetime | None:
    try:
        return datetime.fromisoformat(text) if text else None
    except ValueError:
        return None


def clock(text: str | None) -> str:
    """An ISO time as `YYYY-MM-DD HH:MM:SS UTC` (text that is not a time is shown as it is)."""
    at = parse_time(text)
    return at.strftime("%Y-%m-%d %H:%M:%S %Z").strip() if at else _cell(text)


def offset(start: datetime | None, text: str | None) -> str:
    """Seconds from `start` to the ISO time `text`, as `+1.23s` (`?` when either is missing)."""
    at = parse_time(text)
    return f"+{(at - start).total_seconds():.2f}s" if at and start else "?"


def stage_lines(history: Sequence[dict[str, Any]]) -> list[str]:
    """One line per stage: the first with its clock time, the others as seconds after it."""
    start = parse_time(history[0].get("at")) if history else None
    return [f"  {e.get('stage', '?'):<13} {clock(e.get('at')) if i == 0 else offset(start, e.get('at'))}"
            for i, e in enumerate(history)]


def summary(record: dict[str, Any]) -> str:
    """A deployment record (or provision / restart instance) for people: its id and stage, its fields, its stages."""
    stage = record.get("stage") or record.get("state") or record.get("runtime_status") or "?"
    lines = [f"{record.get('id', '?')}: {stage}"]
    fields = [(label, record.get(key)) for label, key in SUMMARY_FIELDS if record.get(key) not in (None, "", [])]
    width = max((len(label) for label, _ in fields), default=0)
    for label, value in fields:
        shown = clock(value) if label in ("accepted", "created", "ended", "retry at") else _cell(value)
        lines.append(f"  {label:<{width}}  {shown}")
    if record.get("sha256"):
        lines.append(f"  {'sha256':<{width}}  {record['sha256']}")
    if record.get("history"):
        lines += ["stages:", *stage_lines(record["history"])]
    if isinstance(record.get("replicas"), dict) and record["replicas"]:
        lines += ["replicas:", *replica_lines(record["replicas"])]
    return "\n".join(lines + progressive_lines(record))


def _pct(value: Any) -> str:
    return f"{value:.1%}" if isinstance(value, int | float) else "-"


def _score(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, int | float) else "-"


def progressive_lines(record: dict[str, Any]) -> list[str]:
    """The quality gate's scores, the approval, and the canary's step, weight and figures by version."""
    lines: list[str] = []
    evaluation = record.get("evaluation") if isinstance(record.get("evaluation"), dict) else None
    if evaluation:
        verdict = {True: "passed", False: "refused", None: "running"}.get(evaluation.get("passed"), "?")
        lines.append(f"quality gate: {verdict}")
        for name, result in sorted((evaluation.get("sets") or {}).items()):
            cand, live = result.get("candidate") or {}, result.get("live") or {}
            live_text = f", live {_score(live.get('score'))}" if live else ""
            lines.append(f"  {name} set: candidate {_score(cand.get('score'))} ({cand.get('passed', '-')}/"
                         f"{cand.get('total', '-')}){live_text}, minimum {_score(result.get('min_score'))}")
    approval = record.get("approval") if isinstance(record.get("approval"), dict) else None
    if approval:
        decision = approval.get("decision") or f"waiting until {clock(approval.get('deadline'))}"
        by = f" by {approval['by']}" if approval.get("by") else ""
        lines.append(f"approval: {decision}{by}")
    canary = record.get("canary") if isinstance(record.get("canary"), dict) else None
    if canary and canary.get("skipped"):
        lines.append(f"canary: skipped ({canary['skipped']})")
    elif canary:
        steps = " → ".join(f"{s} %" for s in canary.get("steps") or [])
        lines.append(f"canary: {steps}; now {canary.get('weight', 0)} %"
                     + (f" until {clock(canary['hold_until'])}" if canary.get("hold_until") else ""))
        for step in canary.get("analysis") or []:
            lines.append(f"  {step.get('weight')} %: {step.get('verdict')}"
                         + (f" ({step['why']})" if step.get("why") else ""))
            for version, f in sorted((step.get("figures") or {}).items()):
                p95 = f.get("ttft_p95_ms")
                lines.append(f"    {version}  {f.get('requests')} requests, errors {_pct(f.get('error_rate'))}, "
                             f"ttft p95 {p95 if p95 is not None else '-'} ms")
    return lines


def replica_lines(replicas: dict[str, Any]) -> list[str]:
    """One line per replica the gate listed: counted or not, the version it served, and why when it was not."""
    out = []
    for name, figures in sorted(replicas.items()):
        figures = figures if isinstance(figures, dict) else {}
        verdict = ("counted" if figures.get("counted") else "refused" if figures.get("refused")
                   else "not counted")
        detail = figures.get("refused") or figures.get("why") or ""
        served = figures.get("alias_version") or "-"
        out.append(f"  {name}  {verdict}  {served}" + (f"  ({detail})" if detail else ""))
    return out


def human_bytes(n: int) -> str:
    """Bytes in decimal units: `512 B`, `1.3 kB`, `12.0 MB`, `1.50 GB`."""
    for unit, size in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n >= size:
            return f"{n / size:.2f} {unit}" if unit == "GB" else f"{n / size:.1f} {unit}"
    return f"{n} B"


class PlainProgress:
    """Progress as plain lines: upload steps of 10% of the bytes, then each rollout stage once."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._step = -1
        self._start: datetime | None = None

    def _write(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    def upload(self, done: int, total: int) -> None:
        step = 10 if total <= 0 else done * 10 // total
        if step > self._step:
            self._step = step
            self._write(f"  uploaded {human_bytes(done)} / {human_bytes(total)} ({done * 100 // max(total, 1)}%)")

    def upload_done(self, files: int, total: int) -> None:
        self._write(f"uploaded {files} files, {total} bytes")

    def stage(self, entry: dict[str, Any]) -> None:
        self._write(f"  {entry.get('stage', '?'):<13} {entry.get('at')}")

    def end(self) -> None:
        """Nothing to close: every line is already complete."""


class TtyProgress(PlainProgress):
    """Progress on a terminal: an upload bar redrawn in place, then the rollout's stages, the current one marked
    `…` with its time and each one done marked `✓` (the end `✗` unless live)."""

    BAR = 24

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self._open: dict[str, Any] | None = None

    def _redraw(self, text: str) -> None:
        self.stream.write("\r\x1b[2K" + text)
        self.stream.flush()

    def upload(self, done: int, total: int) -> None:
        filled = self.BAR if total <= 0 else done * self.BAR // total
        pct = 100 if total <= 0 else done * 100 // total
        self._redraw(f"uploading [{'#' * filled}{'.' * (self.BAR - filled)}] "
                     f"{human_bytes(done)} / {human_bytes(total)} {pct:3d}%")

    def upload_done(self, files: int, total: int) -> None:
        self._redraw(f"uploaded {files} files, {human_bytes(total)}\n")

    def _stage_text(self, entry: dict[str, Any], mark: str) -> str:
        at = entry.get("at")
        when = clock(at) if self._start is None or parse_time(at) == self._start else offset(self._start, at)
        return f"  {mark} {entry.get('stage', '?'):<13} {when}"

    def stage(self, entry: dict[str, Any]) -> None:
        if self._open is not None:
            self._redraw(self._stage_text(self._open, "✓") + "\n")
        if self._start is None:
            self._start = parse_time(entry.get("at"))
        self._open = entry
        done = entry.get("stage") in TERMINAL
        self._redraw(self._stage_text(entry, ("✓" if entry.get("stage") == "live" else "✗") if done else "…"))
        if done:
            self.stream.write("\n")
            self._open = None

    def end(self) -> None:
        """Close the open stage line (the rollout ended without a terminal stage entry, or timed out)."""
        if self._open is not None:
            self.stream.write("\n")
            self.stream.flush()
            self._open = None


def progress_for(stream: TextIO) -> PlainProgress:
    """The renderer that suits `stream`: redrawn lines on a terminal, plain lines elsewhere."""
    isatty = getattr(stream, "isatty", None)
    return TtyProgress(stream) if isatty is not None and isatty() else PlainProgress(stream)
