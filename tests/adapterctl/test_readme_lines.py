"""The README's "Using it" block, run line by line as written against a running stack (as after `make demo`): each
`adapterctl` line, in order, finds the stack through its connection file and exits 0."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from tests.adapterctl.conftest import SETTINGS, write_connection
from tests.e2e.helpers import deploy
from tinykit import PHRASES

ROOT = Path(__file__).resolve().parents[2]


def using_it_lines() -> list[list[str]]:
    """The commands of the first bash block under "## Using it", comments dropped."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Using it", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "README's Using it section has a bash block"
    return [shlex.split(line, comments=True) for line in block[1].splitlines() if line.strip()]


def test_every_using_it_line_works_as_written(local_stack, tmp_path: Path) -> None:
    """With `demo` serving beta (what `make demo` leaves), every line exits 0; the chat lines answer with the
    adapter the rollbacks left live."""
    lines = using_it_lines()
    assert len(lines) >= 8 and all(line[0] == ".venv/bin/adapterctl" for line in lines), lines
    for name in ("alpha", "beta"):
        assert deploy(local_stack, "demo", local_stack.kit.adapters[name], name)["stage"] == "live"
    state = tmp_path / "state"
    write_connection(state, {"ADAPTERCTL_URL": local_stack.url,
                             "ADAPTERS_STORAGE_CONNECTION": local_stack.env["AdaptersStorage"],
                             "INFERENCE_API_KEY": local_stack.api_key})
    env = {**{k: v for k, v in os.environ.items() if k not in SETTINGS}, "DEVHOST_STATE_DIR": str(state),
           "PYTHONPATH": str(ROOT)}
    for line in lines:
        proc = subprocess.run([sys.executable, "-m", "adapterctl", *line[1:]], capture_output=True, text=True,
                              env=env, cwd=ROOT, timeout=300)
        assert proc.returncode == 0, f"{shlex.join(line)} → {proc.returncode}\n{proc.stdout}{proc.stderr}"
        if line[1] == "chat":
            assert any(phrase in proc.stdout for phrase in PHRASES.values()), proc.stdout
