"""The local docker engine and the built inference image (INFERENCE_IMAGE, which `make image` builds)."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

IMAGE = os.environ.get("INFERENCE_IMAGE", "")


def docker(*args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the docker client, output captured."""
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, check=check)


def image_exists() -> bool:
    if not IMAGE or shutil.which("docker") is None:
        return False
    try:
        return docker("image", "inspect", IMAGE, check=False, timeout=20).returncode == 0
    except subprocess.TimeoutExpired:
        return False


needs_image = [
    pytest.mark.slow,
    pytest.mark.skipif(not image_exists(), reason="INFERENCE_IMAGE does not name a local image (make image)"),
]
