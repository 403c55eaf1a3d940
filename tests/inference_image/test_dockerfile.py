"""The inference image's Dockerfile: its gpu and cpu targets share a base, copy sources that exist in the context,
run as non-root, with a healthcheck, the port, the mounts and a CMD that runs the server with their engine."""

from __future__ import annotations

import fnmatch
import json
import shlex
from pathlib import Path

import pytest

CONTEXT = Path(__file__).resolve().parents[2] / "inference_image"
TARGETS = {"gpu": "sglang", "cpu": "transformers"}


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


def stages() -> dict[str, tuple[str, list[tuple[str, str]]]]:
    """Stage name → (what it is built FROM, its instructions)."""
    found: dict[str, tuple[str, list[tuple[str, str]]]] = {}
    current: list[tuple[str, str]] | None = None
    for inst, args in instructions():
        if inst == "FROM":
            words = args.split()
            assert len(words) == 3 and words[1].upper() == "AS", f"every stage is named: FROM {args}"
            current = []
            found[words[2]] = (words[0], current)
        elif current is not None:
            current.append((inst, args))
    return found


def target(name: str) -> list[tuple[str, str]]:
    """The instructions that make target `name`: its own and those of the stages it is built from, in order."""
    all_stages, chain = stages(), []
    while name in all_stages:
        parent, own = all_stages[name]
        chain = own + chain
        name = parent
    return chain


def ignored(path: str) -> bool:
    patterns = [
        p.strip()
        for p in (CONTEXT / ".dockerignore").read_text().splitlines()
        if p.strip() and not p.startswith("#")
    ]
    return any(fnmatch.fnmatch(path, p) or fnmatch.fnmatch(path, p.removeprefix("**/")) for p in patterns)


def of(kind: str, name: str | None = None) -> list[str]:
    """Arguments of every `kind` instruction: of the whole file, or of the instructions that make target `name`."""
    pairs = instructions() if name is None else target(name)
    return [args for inst, args in pairs if inst == kind]


def test_targets_share_a_base_and_the_base_image_is_a_build_argument() -> None:
    """gpu and cpu are both built FROM the shared `base` stage, which is FROM the BASE_IMAGE argument (CUDA default)."""
    all_stages = stages()
    assert set(TARGETS) <= set(all_stages)
    for name in TARGETS:
        assert all_stages[name][0] == "base", name
    assert all_stages["base"][0] == "${BASE_IMAGE}"
    first = instructions()[0]
    assert first[0] == "ARG" and first[1].startswith("BASE_IMAGE=nvidia/cuda:")
    # Everything that is not the engine is in the shared stage: the server's requirements, the user, the probes.
    base = " ".join(args for _, args in all_stages["base"][1])
    assert "requirements.txt" in base and "useradd" in base and "/health" in base


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


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_cmd_runs_the_server_module(name: str) -> None:
    """Each target's CMD runs `python -m inference_server` with its engine, and that module exists in the image."""
    cmd = of("CMD", name)[-1]
    argv = json.loads(cmd)
    module = argv[argv.index("-m") + 1]
    assert (CONTEXT / module / "__main__.py").exists()
    assert argv[argv.index("--engine") + 1] == TARGETS[name]
    assert f"INFERENCE_ENGINE={TARGETS[name]}" in " ".join(of("ENV", name))
    copied = " ".join(of("COPY", name))
    assert all(f"{src} /app/{src}" in copied for src in ("inference_server", "chat_page", "start.sh"))


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_runs_as_non_root(name: str) -> None:
    """The last USER of each target is neither root nor uid 0."""
    users = of("USER", name)
    assert users and users[-1].split(":")[0] not in {"root", "0"}


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_healthcheck_and_port(name: str) -> None:
    """HEALTHCHECK probes /health and port 8000 is exposed."""
    (check,) = of("HEALTHCHECK", name)
    assert "/health" in check and "CMD" in check
    assert "8000" in of("EXPOSE", name)[0].split()


@pytest.mark.parametrize(("name", "pin"), [("gpu", "sglang=="), ("gpu", "requirements.txt"),
                                           ("cpu", "requirements-cpu.txt"), ("cpu", "requirements.txt")])
def test_dependencies_are_pinned(name: str, pin: str) -> None:
    """Each engine is installed at pinned versions, with the server's pinned requirements."""
    assert any(pin in args for args in of("RUN", name))


def test_cpu_requirements_are_pinned() -> None:
    """Every line of requirements-cpu.txt pins one version, and torch is among them."""
    lines = [ln.split("#")[0].strip() for ln in (CONTEXT / "requirements-cpu.txt").read_text().splitlines()]
    pins = [ln for ln in lines if ln]
    assert pins and all("==" in p for p in pins)
    assert any(p.startswith("torch==") for p in pins)


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_model_and_adapter_mounts(name: str) -> None:
    """/models and /adapters are volumes, and the default paths point into them."""
    assert "/models" in of("VOLUME", name)[0] and "/adapters" in of("VOLUME", name)[0]
    env = " ".join(of("ENV", name))
    assert "INFERENCE_MODEL_PATH=/models/" in env and "INFERENCE_ADAPTER_STORE=/adapters" in env
