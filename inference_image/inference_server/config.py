"""Server settings: one dataclass, built from command-line arguments with environment fallbacks.

The environment is read only inside `ServerConfig.from_args` (never at import), so tests build configs directly.
Every option has an `INFERENCE_*` variable (the container sets paths and keys that way); API keys are a
comma-separated list. Keys are kept out of `repr` so a logged config never leaks them.

SGLang always launches with `--max-lora-rank` and `--lora-target-modules`: SGLang refuses a LoRA launch without
initial adapters unless both are given, and with adapters it would infer the modules from them (a relaunch after a
crash could then refuse an adapter the first launch accepted). The defaults are the orchestrator's
(`MAX_LORA_RANK`, `ALLOWED_TARGET_MODULES` in activities/config.py), which the platform passes as
INFERENCE_MAX_LORA_RANK / INFERENCE_LORA_TARGET_MODULES. A base model name with `:` is refused: SGLang reserves
the colon for `<base>:<adapter>` and its own launch check rejects such a served model name.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .replica_state import REPLICA_DIR

EngineKind = Literal["transformers", "sglang"]
ENGINE_KINDS: tuple[EngineKind, ...] = ("transformers", "sglang")


class ConfigError(ValueError):
    """A setting is missing or out of range."""


#: The orchestrator's DEFAULT_TARGET_MODULES and max rank (activities/config.py); kept equal by a test.
DEFAULT_LORA_TARGET_MODULES: tuple[str, ...] = (
    "q_proj", "k_proj", "v_proj", "o_proj", "qkv_proj", "gate_proj", "up_proj", "down_proj",
)
DEFAULT_MAX_LORA_RANK = 64
#: What SGLang 0.5.23's `--lora-target-modules` accepts (its `SUPPORTED_LORA_TARGET_MODULES` plus "all").
SGLANG_LORA_TARGET_MODULES = frozenset({
    "q_proj", "k_proj", "v_proj", "o_proj", "q_a_proj", "kv_a_proj_with_mqa", "q_b_proj", "kv_b_proj", "wq_b", "wk",
    "weights_proj", "gate_proj", "up_proj", "down_proj", "qkv_proj", "gate_up_proj", "embed_tokens", "lm_head", "all",
})


def check_model_name(name: str) -> None:
    """Refuse a base/served model name SGLang cannot serve (`:` separates base and adapter)."""
    if not name or ":" in name or name != name.strip():
        raise ConfigError(
            f"base model name {name!r} is not allowed: it must be non-empty, without surrounding spaces, and must not "
            "contain ':' (reserved for '<base>:<adapter>'; SGLang refuses such a served model name)"
        )


@dataclass(frozen=True)
class SGLangSettings:
    """How the SGLang engine launches (or attaches to) its backend."""

    command: tuple[str, ...] = ()  # empty: `<python> -m sglang.launch_server`
    upstream_url: str | None = None  # attach to a running SGLang server instead of launching one
    max_loras_per_batch: int = 8
    max_lora_rank: int = DEFAULT_MAX_LORA_RANK
    lora_target_modules: tuple[str, ...] = DEFAULT_LORA_TARGET_MODULES
    extra_args: tuple[str, ...] = ()
    startup_timeout_s: float = 900.0
    start_attempts: int = 5  # failed launches in a row before the engine gives up (then /health fails)

    def __post_init__(self) -> None:
        if self.max_lora_rank < 1 or self.max_loras_per_batch < 1 or self.start_attempts < 1:
            raise ConfigError("max_lora_rank, max_loras_per_batch and start_attempts must be at least 1")
        if not self.lora_target_modules:
            raise ConfigError("lora_target_modules must name at least one module (SGLang needs them to start)")
        unknown = sorted(set(self.lora_target_modules) - SGLANG_LORA_TARGET_MODULES)
        if unknown:
            raise ConfigError(f"lora_target_modules {unknown} are not modules SGLang accepts")
        if "all" in self.lora_target_modules and len(self.lora_target_modules) > 1:
            raise ConfigError("lora_target_modules 'all' must be the only module given")


@dataclass(frozen=True)
class ServerConfig:
    """Everything the server needs; `api_keys` empty means no auth on the chat API (local use only)."""

    engine: EngineKind = "transformers"
    model_path: Path | None = None
    base_model_name: str = "base"
    adapter_store: Path | None = None
    alias: str = "live"
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    admin_key: str | None = field(default=None, repr=False)
    host: str = "0.0.0.0"
    port: int = 8000
    max_body_bytes: int = 1 << 20
    max_tokens_cap: int = 4096
    sync_interval_s: float = 10.0
    drain_timeout_s: float = 30.0
    max_queue: int = 64
    max_context_tokens: int | None = None  # prompt + max_tokens; the model's own context is the limit anyway
    header_timeout_s: float = 10.0
    idle_timeout_s: float = 300.0
    replica_state_dir: Path | None = None  # None: `<adapter store>/_replicas` (replica_state.py)
    report_replica_state: bool = True
    sglang: SGLangSettings = field(default_factory=SGLangSettings)

    def __post_init__(self) -> None:
        if self.engine not in ENGINE_KINDS:
            raise ConfigError(f"engine must be one of {ENGINE_KINDS}, not {self.engine!r}")
        for name in ("max_body_bytes", "max_tokens_cap", "max_queue"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1")
        if self.sync_interval_s <= 0 or self.drain_timeout_s < 0:
            raise ConfigError("sync_interval_s must be > 0 and drain_timeout_s >= 0")
        if self.header_timeout_s <= 0 or self.idle_timeout_s <= 0:
            raise ConfigError("header_timeout_s and idle_timeout_s must be > 0")
        if self.max_context_tokens is not None and self.max_context_tokens < 1:
            raise ConfigError("max_context_tokens must be at least 1")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port {self.port} is out of range")
        check_model_name(self.base_model_name)

    @property
    def replica_state_path(self) -> Path | None:
        """Where this replica writes its observed state; None when off or when there is no store."""
        if not self.report_replica_state:
            return None
        if self.replica_state_dir is not None:
            return self.replica_state_dir
        return self.adapter_store / REPLICA_DIR if self.adapter_store is not None else None

    @classmethod
    def from_args(cls, argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> ServerConfig:
        """Parse `argv`; each option falls back to its `INFERENCE_*` environment variable, then the default."""
        env = os.environ if env is None else env
        args = _parser(env).parse_args(argv)
        state_dir = args.replica_state_dir
        if args.model_path is None and not (args.engine == "sglang" and args.sglang_upstream):
            raise ConfigError("--model-path (or INFERENCE_MODEL_PATH) is required")
        sglang = SGLangSettings(
            command=tuple(args.sglang_command.split()) if args.sglang_command else (),
            upstream_url=args.sglang_upstream or None,
            max_loras_per_batch=args.max_loras_per_batch,
            max_lora_rank=args.max_lora_rank or DEFAULT_MAX_LORA_RANK,
            lora_target_modules=tuple(_split(args.lora_target_modules)) or DEFAULT_LORA_TARGET_MODULES,
            extra_args=tuple(args.sglang_extra_args.split()) if args.sglang_extra_args else (),
            start_attempts=args.sglang_start_attempts,
        )
        return cls(
            engine=args.engine,
            model_path=Path(args.model_path) if args.model_path else None,
            base_model_name=args.base_model_name or (Path(args.model_path).name if args.model_path else "base"),
            adapter_store=Path(args.adapter_store) if args.adapter_store else None,
            alias=args.alias,
            api_keys=tuple(_split(args.api_keys)),
            admin_key=args.admin_key or None,
            host=args.host,
            port=args.port,
            max_body_bytes=args.max_body_bytes,
            max_tokens_cap=args.max_tokens_cap,
            sync_interval_s=args.sync_interval,
            drain_timeout_s=args.drain_timeout,
            max_queue=args.max_queue,
            max_context_tokens=args.max_context_tokens,
            header_timeout_s=args.header_timeout,
            idle_timeout_s=args.idle_timeout,
            replica_state_dir=Path(state_dir) if state_dir and state_dir != "off" else None,
            report_replica_state=state_dir != "off",
            sglang=sglang,
        )


def _split(value: str | None) -> list[str]:
    return [part.strip() for part in (value or "").split(",") if part.strip()]


def _parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    def opt(name: str, default: object = None) -> object:
        return env.get("INFERENCE_" + name, default)

    def opt_int(name: str) -> int | None:
        value = opt(name)
        return int(value) if value else None

    p = argparse.ArgumentParser(prog="python -m inference_server", description="OpenAI-compatible LoRA server")
    p.add_argument("--engine", choices=ENGINE_KINDS, default=opt("ENGINE", "transformers"))
    p.add_argument("--model-path", default=opt("MODEL_PATH"))
    p.add_argument("--base-model-name", default=opt("BASE_MODEL_NAME"))
    p.add_argument("--adapter-store", default=opt("ADAPTER_STORE"))
    p.add_argument("--alias", default=opt("ALIAS", "live"))
    p.add_argument("--api-keys", default=opt("API_KEYS"), help="comma-separated bearer keys")
    p.add_argument("--admin-key", default=opt("ADMIN_KEY"))
    p.add_argument("--host", default=opt("HOST", "0.0.0.0"))
    p.add_argument("--port", type=int, default=int(opt("PORT", 8000)))
    p.add_argument("--max-body-bytes", type=int, default=int(opt("MAX_BODY_BYTES", 1 << 20)))
    p.add_argument("--max-tokens-cap", type=int, default=int(opt("MAX_TOKENS_CAP", 4096)))
    p.add_argument("--sync-interval", type=float, default=float(opt("SYNC_INTERVAL_S", 10.0)))
    p.add_argument("--drain-timeout", type=float, default=float(opt("DRAIN_TIMEOUT_S", 30.0)))
    p.add_argument("--max-queue", type=int, default=int(opt("MAX_QUEUE", 64)))
    p.add_argument("--max-context-tokens", type=int, default=opt_int("MAX_CONTEXT_TOKENS"),
                   help="limit on prompt + max_tokens tokens, below the model's own (max_position_embeddings)")
    p.add_argument("--header-timeout", type=float, default=float(opt("HEADER_TIMEOUT_S", 10.0)),
                   help="seconds a client has to send a whole request head")
    p.add_argument("--idle-timeout", type=float, default=float(opt("IDLE_TIMEOUT_S", 300.0)),
                   help="seconds an idle keep-alive connection stays open (keep above the ingress proxy's)")
    p.add_argument("--replica-state-dir", default=opt("REPLICA_STATE_DIR"),
                   help=f"where this replica writes its observed state (default <adapter store>/{REPLICA_DIR}; "
                        "'off': not written)")
    p.add_argument("--sglang-command", default=opt("SGLANG_COMMAND"), help="replaces `python -m sglang.launch_server`")
    p.add_argument("--sglang-upstream", default=opt("SGLANG_UPSTREAM"), help="URL of a running SGLang server")
    p.add_argument("--max-loras-per-batch", type=int, default=int(opt("MAX_LORAS_PER_BATCH", 8)))
    p.add_argument("--max-lora-rank", type=int, default=opt_int("MAX_LORA_RANK"),
                   help=f"largest adapter rank SGLang serves (default {DEFAULT_MAX_LORA_RANK})")
    p.add_argument("--lora-target-modules", default=opt("LORA_TARGET_MODULES"),
                   help=f"comma-separated (default {','.join(DEFAULT_LORA_TARGET_MODULES)})")
    p.add_argument("--sglang-start-attempts", type=int, default=int(opt("SGLANG_START_ATTEMPTS", 5)),
                   help="failed SGLang launches in a row before giving up (then /health answers 503)")
    p.add_argument("--sglang-extra-args", default=opt("SGLANG_EXTRA_ARGS"))
    return p
