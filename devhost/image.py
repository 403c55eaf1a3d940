"""The inference image's identity: a digest of the `inference_image/` sources it was built from.

`scripts/build_cpu_image.sh` stores it as the image label `SOURCES_LABEL` (`python -m devhost.image` prints it);
`devhost up --runtime container` compares it with the sources here, so an image built before the code changed is
named as such instead of silently serving old code.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

SOURCES_LABEL = "org.adapter-deploy.inference-sources"
INFERENCE_IMAGE_DIR = Path(__file__).resolve().parents[1] / "inference_image"
_SKIPPED_PARTS = {"__pycache__", ".pytest_cache"}


def sources_digest(root: Path = INFERENCE_IMAGE_DIR) -> str:
    """sha256 over every file under `root` (relative path and content), caches and compiled files left out."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        relative = path.relative_to(root)
        if _SKIPPED_PARTS & set(relative.parts) or path.suffix == ".pyc":
            continue
        digest.update(f"{relative.as_posix()}\0".encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def labelled_sources(inspect_output: str) -> str:
    """The digest label as `docker image inspect -f LABEL_FORMAT` printed it ("" when the image has none)."""
    label = inspect_output.strip()
    return "" if label in ("", "<no value>") else label


#: `docker image inspect -f` format that prints the image's sources label.
LABEL_FORMAT = f'{{{{index .Config.Labels "{SOURCES_LABEL}"}}}}'


if __name__ == "__main__":
    print(sources_digest())
