"""The tiny model kit: a random-init tiny causal LM, its tokenizer and LoRA adapters with known answers.

Built on the spot (no downloads) and deterministically, for tests, benchmarks and the embedded default:
`python -m tinykit build OUT_DIR [--arch llama|phi3] [--force]` or `build_kit(out_dir)`.
"""

from __future__ import annotations

from .build import ARCHS, KitBuildError, KitPaths, build_kit, kit_paths
from .train import PHRASES, greedy_reply, prompt_ids, train_adapter

__all__ = [
    "ARCHS",
    "PHRASES",
    "KitBuildError",
    "KitPaths",
    "build_kit",
    "greedy_reply",
    "kit_paths",
    "prompt_ids",
    "train_adapter",
]
