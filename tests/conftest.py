"""Shared fixtures: the tiny model kit, built once into build/tinykit and reused across test runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from tinykit import KitPaths, build_kit

KIT_CACHE = Path(__file__).resolve().parent.parent / "build" / "tinykit"


@pytest.fixture(scope="session")
def tiny_kit() -> KitPaths:
    """The tiny Llama kit (base model, tokenizer, adapters alpha and beta); a matching stamp skips the build."""
    return build_kit(KIT_CACHE / "llama", arch="llama")
