"""The inference image's Dockerfile: sources exist in its context, non-root, healthcheck, port, runnable CMD."""

from __future__ import annotations

import fnmatch
import json
import shlex
from pathlib import Path

import pytest

CONTEXT = Path(__file__).resolve().parents[2] / "inference_image"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with line continuations joined and comments dropped."""
    lines, current = [], ""
    for raw in (CONTEXT / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        current += " " + line.rstrip("\\").strip()
        if not line.endswith("\\"):
            lines.append(current.strip())
            current = ""
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1] if " " in ln else "") for ln in lines]


def ignored(path: str) -> bool:
    patterns = [
        p.strip()
        for p in (CONTEXT / ".dockerignore").read_text().splitlines()
        if p.strip() and not p.startswith("#")
    ]
    return any(fnmatch.fnmatch(path, p) or fnmatch.fnmatch(path, p.removeprefix("**/")) for p in patterns)


def of(kind: str) -> list[str]:
    return [args for inst, args in instructions() if inst == kind]


def test_copy_sources_exist_in_context() -> None:
    """Every COPY/ADD source is in the build context and not excluded by .dockerignore."""
    copies = of("COPY") + of("ADD")
    assert copies
    for args in copies:
        parts = [p for p in shlex.split(args) if not p.startswith("--")]
        assert all(not a.startswith("--from") for a in shlex.split(args))
        for source in parts[:-1]:
            assert (CONTEXT / source).exists(), source
            assert not ignored(source), source


def test_cmd_runs_the_server_module() -> None:
    """CMD runs `python -m inference_server` with the SGLang engine, and that module exists in the image."""
    (cmd,) = of("CMD")
    argv = json.loads(cmd)
    module = argv[argv.index("-m") + 1]
    assert (CONTEXT / module / "__main__.py").exists()
    assert argv[argv.index("--engine") + 1] == "sglang"


def test_runs_as_non_root() -> None:
    """The last USER is neither root nor uid 0."""
    users = of("USER")
    assert users and users[-1].split(":")[0] not in {"root", "0"}


def test_healthcheck_and_port() -> None:
    """HEALTHCHECK probes /health and port 8000 is exposed."""
    (check,) = of("HEALTHCHECK")
    assert "/health" in check and "CMD" in check
    assert "8000" in of("EXPOSE")[0].split()


@pytest.mark.parametrize("pin", ["sglang==", "requirements.txt"])
def test_dependencies_are_pinned(pin: str) -> None:
    """SGLang is installed at a pinned version, with the server's pinned requirements."""
    assert any(pin in args for args in of("RUN"))


def test_model_and_adapter_mounts() -> None:
    """/models and /adapters are volumes, and the default paths point into them."""
    assert "/models" in of("VOLUME")[0] and "/adapters" in of("VOLUME")[0]
    env = " ".join(of("ENV"))
    assert "INFERENCE_MODEL_PATH=/models/" in env and "INFERENCE_ADAPTER_STORE=/adapters" in env
