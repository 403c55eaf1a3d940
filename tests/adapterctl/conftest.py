"""Fixtures for adapterctl tests without a stack: no setting from the developer's environment or a running demo
leaks in, a fake orchestrator API, and `main()` run in-process with its exit code and output."""

from __future__ import annotations

import shlex
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from adapterctl.cli import main
from tests.adapterctl.fake_api import FakeApi, serve

#: Every variable adapterctl reads; tests set the ones they mean to.
SETTINGS = ("ADAPTERCTL_URL", "ADAPTERCTL_FUNCTION_KEY", "ADAPTERS_STORAGE_CONNECTION", "ADAPTERS_ACCOUNT_URL",
            "INFERENCE_API_KEY", "MAX_LORA_RANK", "DEVHOST_STATE_DIR")

Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A clean environment and an empty working folder (so no ./.devhost/up of a real demo is found)."""
    for name in SETTINGS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def api(isolated: Path) -> Iterator[FakeApi]:
    with serve() as fake:
        yield fake


@pytest.fixture
def run(isolated: Path, capsys: pytest.CaptureFixture[str]) -> Run:
    """`run(*argv)`: adapterctl's `main` in this process; returns (exit code, stdout, stderr)."""

    def invoke(*argv: str) -> tuple[int, str, str]:
        code = main(list(argv))
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return invoke


def write_connection(folder: Path, values: dict[str, str], mode: int = 0o600) -> Path:
    """A connection file as `devhost up` writes it: `export NAME='value'` lines, shlex-quoted, mode 0600."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "connection.env"
    path.write_text("".join(f"export {k}={shlex.quote(v)}\n" for k, v in values.items()), encoding="utf-8")
    path.chmod(mode)
    return path
