"""Upload and rollout progress: plain lines off a terminal (what `deploy` prints into a pipe or a log, here through
a real upload to Azurite), a display redrawn in place on a terminal (a stream that says it is one)."""

from __future__ import annotations

import io
import re

import pytest

from activities.adapter_store import AdapterStore, BlobStoreSettings
from adapterctl.render import PlainProgress, TtyProgress, human_bytes, progress_for
from tests.activities.conftest import azurite  # noqa: F401 - the session's Azurite fixture
from tests.adapterctl.conftest import Run
from tests.adapterctl.fake_api import FakeApi, record

STAGES = ["received", "validating", "staging", "provisioning", "activating", "verifying", "live"]


class Terminal(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def screen(raw: str) -> list[str]:
    """What a terminal shows for `raw`: each line as last redrawn (`\\r` + erase-line starts it over)."""
    return [line.split("\r\x1b[2K")[-1] for line in raw.split("\n")]


def test_renderer_follows_the_stream() -> None:
    assert type(progress_for(Terminal())) is TtyProgress
    assert type(progress_for(io.StringIO())) is PlainProgress


def test_plain_upload_lines_step_by_tenths_and_never_redraw() -> None:
    stream = io.StringIO()
    progress = PlainProgress(stream)
    for done in (0, 50, 99, 100, 150, 990, 1000):
        progress.upload(done, 1000)
    progress.upload_done(2, 1000)
    assert "\r" not in stream.getvalue()
    assert stream.getvalue().splitlines() == [
        "  uploaded 0 B / 1.0 kB (0%)", "  uploaded 100 B / 1.0 kB (10%)",
        "  uploaded 990 B / 1.0 kB (99%)", "  uploaded 1.0 kB / 1.0 kB (100%)", "uploaded 2 files, 1000 bytes"]


def test_tty_redraws_one_bar_then_marks_each_stage_done() -> None:
    """The bar is redrawn in place and ends as one line; each stage shows `…` while current and `✓` once the
    next one arrives; a terminal stage other than live ends `✗`."""
    stream = Terminal()
    progress = TtyProgress(stream)
    for done in (0, 5 * 10**6, 10**7):
        progress.upload(done, 10**7)
    assert screen(stream.getvalue()) == ["uploading [########################] 10.0 MB / 10.0 MB 100%"]
    assert stream.getvalue().count("\r\x1b[2K") == 3
    progress.upload_done(2, 10**7)
    rec = record("demo.1", "rolled_back", ["received", "validating", "verifying", "rolled_back"])
    progress.stage(rec["history"][0])
    progress.stage(rec["history"][1])
    assert screen(stream.getvalue())[1:] == ["  ✓ received      2026-11-30 14:14:11 UTC", "  … validating    +1.00s"]
    for entry in rec["history"][2:]:
        progress.stage(entry)
    progress.end()
    assert screen(stream.getvalue()) == [
        "uploaded 2 files, 10.0 MB", "  ✓ received      2026-11-30 14:14:11 UTC", "  ✓ validating    +1.00s",
        "  ✓ verifying     +2.00s", "  ✗ rolled_back   +3.00s", ""]


def test_tty_end_closes_an_open_stage_line() -> None:
    stream = Terminal()
    progress = TtyProgress(stream)
    progress.stage({"stage": "staging", "at": "2026-11-30T14:14:11+00:00"})
    progress.end()
    assert stream.getvalue().endswith("\n") and screen(stream.getvalue())[0].startswith("  … staging")


@pytest.mark.parametrize("n, shown", [(0, "0 B"), (999, "999 B"), (1000, "1.0 kB"), (12_345_678, "12.3 MB"),
                                      (1_500_000_000, "1.50 GB")])
def test_human_bytes(n: int, shown: str) -> None:
    assert human_bytes(n) == shown


@pytest.mark.azurite
def test_deploy_prints_upload_progress_then_stages_as_plain_lines(run: Run, api: FakeApi, azurite,  # noqa: F811
                                                                  tiny_kit) -> None:
    """A real upload to Azurite, followed through a fake orchestrator: bytes uploaded out of the folder's total,
    `uploaded N files, B bytes`, the record's id, each stage once as it comes, then the outcome."""
    folder = tiny_kit.adapters["alpha"]
    total = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
    AdapterStore(BlobStoreSettings(connection_string=azurite.connection_string)).ensure_container()
    api.any_deployment = [record("x", stage, STAGES[: i + 1]) for i, stage in enumerate(STAGES) if i % 2 == 0]
    api.any_deployment.append(record("x", "live", STAGES))
    code, out, err = run("--url", api.url, "deploy", str(folder), "--app", "progress", "--create",
                         "--storage-connection", azurite.connection_string)
    lines = out.splitlines()
    assert (code, err) == (0, ""), out + err
    assert lines[0] == "note: progress serves nothing yet; the base model is checked by the orchestrator"
    assert re.fullmatch(r"alpha: valid \(sha256 [0-9a-f]{12}, rank \d+\); uploading to app progress", lines[1])
    uploads = [re.fullmatch(r"  uploaded .+ / (.+) \((\d+)%\)", line) for line in lines[2:]]
    count = next(i for i, m in enumerate(uploads) if m is None)
    percents = [int(m[2]) for m in uploads[:count]]
    assert count >= 2 and percents == sorted(percents) and percents[0] == 0 and percents[-1] == 100
    assert {m[1] for m in uploads[:count]} == {human_bytes(total)}
    rest = lines[2 + count:]
    assert rest[0] == f"uploaded 2 files, {total} bytes"
    deployment = re.fullmatch(r"deployment (progress\.\d{8}T\d{12}-u\w+)", rest[1])
    assert deployment
    assert [line.split()[0] for line in rest[2:-1]] == STAGES
    assert rest[-1] == f"{deployment[1]}: live"
