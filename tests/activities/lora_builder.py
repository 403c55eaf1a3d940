"""Build PEFT-style LoRA adapter files by hand (struct + json, no numpy or torch) for the activity tests."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

BASE_MODEL = "tiny-llama"
HIDDEN = 8


def safetensors_bytes(tensors: dict[str, tuple[str, list[int]]], itemsize: int = 2) -> bytes:
    """A valid safetensors file: name -> (dtype, shape); data is zeros laid out contiguously."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, (dtype, shape) in tensors.items():
        n = itemsize
        for d in shape:
            n *= d
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + b"\0" * offset


def lora_tensors(
    r: int = 4, modules: tuple[str, ...] = ("q_proj", "v_proj"), layers: int = 2, dtype: str = "F16"
) -> dict[str, tuple[str, list[int]]]:
    """PEFT's tensor names and shapes: lora_A [r, in], lora_B [out, r]."""
    out: dict[str, tuple[str, list[int]]] = {}
    for layer in range(layers):
        for m in modules:
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{m}"
            out[f"{prefix}.lora_A.weight"] = (dtype, [r, HIDDEN])
            out[f"{prefix}.lora_B.weight"] = (dtype, [HIDDEN, r])
    return out


def config_bytes(**overrides: Any) -> bytes:
    """adapter_config.json as PEFT writes it (the fields validation reads), with overrides."""
    config: dict[str, Any] = {
        "peft_type": "LORA",
        "base_model_name_or_path": BASE_MODEL,
        "r": 4,
        "lora_alpha": 8,
        "target_modules": ["q_proj", "v_proj"],
        "task_type": "CAUSAL_LM",
    }
    config.update(overrides)
    return json.dumps(config).encode()


def adapter_files(seed: str = "", **config: Any) -> dict[str, bytes]:
    """A valid adapter in memory; `seed` changes the content (and so the digest)."""
    files = {
        "adapter_config.json": config_bytes(**config),
        "adapter_model.safetensors": safetensors_bytes(lora_tensors()),
    }
    if seed:
        files["README.md"] = f"adapter {seed}\n".encode()
    return files


def write_adapter(folder: Path, files: dict[str, bytes] | None = None) -> Path:
    """Write an adapter's files into `folder` and return it."""
    for name, data in (files if files is not None else adapter_files()).items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return folder
