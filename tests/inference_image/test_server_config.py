"""ServerConfig: arguments, environment fallbacks, validation, keys kept out of repr."""

from __future__ import annotations

from pathlib import Path

import pytest

from inference_server.config import ConfigError, ServerConfig


def test_arguments_override_environment() -> None:
    """An argument wins over its INFERENCE_* variable; variables fill the rest."""
    env = {"INFERENCE_MODEL_PATH": "/models/base", "INFERENCE_PORT": "9000", "INFERENCE_API_KEYS": "a, b",
           "INFERENCE_ADMIN_KEY": "adm", "INFERENCE_LORA_TARGET_MODULES": "q_proj,v_proj",
           "INFERENCE_MAX_LORA_RANK": "32"}
    cfg = ServerConfig.from_args(["--port", "8100", "--engine", "sglang", "--sglang-command", "python fake.py"], env)
    assert cfg.port == 8100 and cfg.engine == "sglang"
    assert cfg.model_path == Path("/models/base") and cfg.base_model_name == "base"
    assert cfg.api_keys == ("a", "b") and cfg.admin_key == "adm"
    assert cfg.sglang.lora_target_modules == ("q_proj", "v_proj") and cfg.sglang.max_lora_rank == 32
    assert cfg.sglang.command == ("python", "fake.py")


def test_keys_not_in_repr() -> None:
    """Neither API keys nor the admin key appear in the config's repr."""
    cfg = ServerConfig(api_keys=("secret-api",), admin_key="secret-admin")
    assert "secret" not in repr(cfg)


def test_model_path_required() -> None:
    """The transformers engine needs a model path; SGLang attached to an upstream does not."""
    with pytest.raises(ConfigError, match="model-path"):
        ServerConfig.from_args([], {})
    cfg = ServerConfig.from_args(["--engine", "sglang", "--sglang-upstream", "http://127.0.0.1:1"], {})
    assert cfg.sglang.upstream_url == "http://127.0.0.1:1"


def test_limits_and_timeouts() -> None:
    """The context limit and the connection timeouts come from flags or INFERENCE_* variables."""
    env = {"INFERENCE_MODEL_PATH": "/m", "INFERENCE_MAX_CONTEXT_TOKENS": "4096", "INFERENCE_HEADER_TIMEOUT_S": "2.5",
           "INFERENCE_IDLE_TIMEOUT_S": "90"}
    cfg = ServerConfig.from_args(["--idle-timeout", "30"], env)
    assert (cfg.max_context_tokens, cfg.header_timeout_s, cfg.idle_timeout_s) == (4096, 2.5, 30.0)
    cfg = ServerConfig.from_args(["--model-path", "/m", "--max-context-tokens", "100", "--header-timeout", "4"], {})
    assert (cfg.max_context_tokens, cfg.header_timeout_s) == (100, 4.0)
    assert ServerConfig.from_args([], {"INFERENCE_MODEL_PATH": "/m"}).max_context_tokens is None


@pytest.mark.parametrize(("field", "value"), [("engine", "vllm"), ("max_body_bytes", 0), ("port", 70000),
                                              ("sync_interval_s", 0.0), ("header_timeout_s", 0.0),
                                              ("idle_timeout_s", -1.0), ("max_context_tokens", 0)])
def test_invalid_values(field: str, value: object) -> None:
    """Out-of-range settings raise ConfigError naming the field."""
    with pytest.raises(ConfigError, match=field.split("_")[0]):
        ServerConfig(**{field: value})
