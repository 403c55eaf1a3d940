"""SGLang settings (issue #12): rank and target modules always set, SGLang's module names, no ':' in model names."""

from __future__ import annotations

import pytest

from activities.config import DEFAULT_TARGET_MODULES, Settings
from inference_server.config import (
    DEFAULT_LORA_TARGET_MODULES,
    DEFAULT_MAX_LORA_RANK,
    ConfigError,
    ServerConfig,
    SGLangSettings,
)


def test_defaults_match_the_orchestrator() -> None:
    """Unset, the server launches SGLang with the orchestrator's default modules and rank."""
    cfg = ServerConfig.from_args(["--engine", "sglang", "--model-path", "/m"], {})
    assert cfg.sglang.lora_target_modules == DEFAULT_LORA_TARGET_MODULES == DEFAULT_TARGET_MODULES
    assert cfg.sglang.max_lora_rank == DEFAULT_MAX_LORA_RANK == Settings.max_lora_rank
    env = {"INFERENCE_LORA_TARGET_MODULES": "qkv_proj, o_proj", "INFERENCE_MAX_LORA_RANK": "16",
           "INFERENCE_SGLANG_START_ATTEMPTS": "3"}
    cfg = ServerConfig.from_args(["--engine", "sglang", "--model-path", "/m"], env)
    assert cfg.sglang.lora_target_modules == ("qkv_proj", "o_proj") and cfg.sglang.max_lora_rank == 16
    assert cfg.sglang.start_attempts == 3


@pytest.mark.parametrize("name", ["org/model:v1", "a:b", ":", "", " padded"])
def test_model_name_with_colon_refused(name: str) -> None:
    """A base/served model name SGLang cannot serve is a clear configuration error, flag or environment."""
    with pytest.raises(ConfigError, match="base model name"):
        ServerConfig(base_model_name=name)
    if name.strip():
        with pytest.raises(ConfigError, match="must not contain ':'|surrounding spaces"):
            ServerConfig.from_args(["--model-path", "/m"], {"INFERENCE_BASE_MODEL_NAME": name})


def test_model_path_name_with_colon_refused() -> None:
    """The default name (the model folder's name) is checked too."""
    with pytest.raises(ConfigError, match="':'"):
        ServerConfig.from_args(["--model-path", "/models/llama:8b"], {})


@pytest.mark.parametrize(("fields", "match"), [
    ({"lora_target_modules": ("q_proj", "attn")}, "not modules SGLang accepts"),
    ({"lora_target_modules": ("all", "q_proj")}, "'all' must be the only"),
    ({"lora_target_modules": ()}, "at least one module"),
    ({"max_lora_rank": 0}, "at least 1"),
    ({"start_attempts": 0}, "at least 1"),
])
def test_sglang_settings_refused(fields: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        SGLangSettings(**fields)
