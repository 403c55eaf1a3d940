"""Page settings: one dataclass, built from command-line arguments; secrets come from environment variables.

The environment is read only in `PageConfig.from_args` (never at import): the API key from the variable that
`--api-key-env` names, and optional page login (`user:password`) from the one `--auth-env` names. Secrets are
kept out of `repr`.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


class PageConfigError(ValueError):
    """A page setting is missing or out of range."""


@dataclass(frozen=True)
class PageConfig:
    """Where the page listens, which chat API it talks to, and its defaults."""

    api_url: str = "http://127.0.0.1:8000"
    api_key: str | None = field(default=None, repr=False)
    host: str = "127.0.0.1"
    port: int = 7860
    default_model: str = "live"
    max_tokens_cap: int = 2048
    concurrency: int = 8
    auth: tuple[str, str] | None = field(default=None, repr=False)
    title: str = "LoRA adapter chat"

    def __post_init__(self) -> None:
        if not self.api_url.startswith(("http://", "https://")):
            raise PageConfigError(f"api_url must be an http(s) URL, not {self.api_url!r}")
        if not 1 <= self.port <= 65535:
            raise PageConfigError(f"port {self.port} is out of range")
        if self.max_tokens_cap < 1 or self.concurrency < 1:
            raise PageConfigError("max_tokens_cap and concurrency must be at least 1")

    @classmethod
    def from_args(cls, argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> PageConfig:
        """Parse `argv`; the key and login come from the environment variables the arguments name."""
        env = os.environ if env is None else env
        args = _parser().parse_args(argv)
        auth = None
        if args.auth_env and env.get(args.auth_env):
            user, sep, password = env[args.auth_env].partition(":")
            if not (sep and user and password):
                raise PageConfigError(f"{args.auth_env} must look like user:password")
            auth = (user, password)
        return cls(
            api_url=args.api_url,
            api_key=env.get(args.api_key_env) or None,
            host=args.host,
            port=args.port,
            default_model=args.default_model,
            max_tokens_cap=args.max_tokens_cap,
            concurrency=args.concurrency,
            auth=auth,
            title=args.title,
        )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m chat_page", description="Gradio chat page for the LoRA chat API")
    p.add_argument("--api-url", default="http://127.0.0.1:8000", help="base URL of the chat API")
    p.add_argument("--api-key-env", default="INFERENCE_API_KEY", help="environment variable holding the API key")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--default-model", default="live", help="model used until the list loads (the alias)")
    p.add_argument("--max-tokens-cap", type=int, default=2048, help="upper end of the max tokens slider")
    p.add_argument("--concurrency", type=int, default=8, help="chats streamed at once")
    p.add_argument("--auth-env", default="CHAT_PAGE_AUTH", help="environment variable holding user:password")
    p.add_argument("--title", default="LoRA adapter chat")
    return p
