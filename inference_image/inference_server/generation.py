"""The served model's sampling defaults, read from its `generation_config.json` (Hugging Face's format).

A chat request that omits `temperature` or `top_p` gets the model's value, on either engine (the server always
sends both to SGLang). `GET /v1/models` shows them on every entry as `"sampling_defaults": {"temperature",
"top_p"}` (adapters share the base model's), so a client such as the chat page can start from them.

Reading: an explicit `"do_sample": false` means greedy decoding: temperature 0, top_p 1. Otherwise the file's
`temperature` and `top_p` apply where present and in the API's ranges, as SGLang and vLLM read them. No file, an
unreadable one, or a field missing or out of range: OpenAI's value for that field (temperature 1, top_p 1), with a
warning for what could not be used.
"""

from __future__ import annotations

import json
import logging
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from .protocol import ApiError, SamplingDefaults, sampling_fields

log = logging.getLogger(__name__)

GENERATION_CONFIG = "generation_config.json"


def sampling_defaults(config: dict[str, Any]) -> SamplingDefaults:
    """The defaults a `generation_config.json` object gives (see the module docstring)."""
    openai = SamplingDefaults()
    if config.get("do_sample") is False:
        return replace(openai, temperature=0.0)
    usable: dict[str, float] = {}
    for name in (f.name for f in fields(SamplingDefaults)):
        try:
            usable[name] = getattr(sampling_fields({name: config.get(name)}, openai), name)
        except ApiError as exc:
            log.warning("%s: %s; using %g", GENERATION_CONFIG, exc.message, getattr(openai, name))
    return replace(openai, **usable)


def read_sampling_defaults(model_path: Path | None) -> SamplingDefaults:
    """The defaults of the model in `model_path` (None, e.g. SGLang attached by URL: OpenAI's)."""
    if model_path is None:
        return SamplingDefaults()
    path = Path(model_path) / GENERATION_CONFIG
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return SamplingDefaults()
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        log.warning("cannot read %s (%s); using OpenAI's sampling defaults", path, exc)
        return SamplingDefaults()
    if not isinstance(config, dict):
        log.warning("%s is not a JSON object; using OpenAI's sampling defaults", path)
        return SamplingDefaults()
    return sampling_defaults(config)
