"""A loopback fake of SGLang's HTTP server, launched exactly like `python -m sglang.launch_server`.

Run as `python -m tests.fakes.fake_sglang ARGS` or `python tests/fakes/fake_sglang.py ARGS`. It accepts SGLang's
launch arguments (unknown ones too), and when `FAKE_SGLANG_LOG` names a file it appends one JSON line per event:
the launch (argv, pid), and every load, unload and chat request body. Replies are deterministic: the first token
is `[<adapter or base>]`, then `--tokens` words, `--token-delay` seconds apart, as OpenAI SSE when streaming.
Adapter folders holding a file named `BAD` fail to load, as SGLang answers a failed load. With `--context-length`,
a prompt of that many words or more is refused with SGLang's 400 (a word stands for a token).

Strict where SGLang 0.5.23 is (the contract test checks the same command lines against the real parser):
* a command line SGLang's argument checks refuse exits with status 1 and SGLang's message on stderr, before
  listening: LoRA without `--lora-paths` needs both `--max-lora-rank` and `--lora-target-modules`; a served model
  name with `:`; a target module outside SGLang's choices, or `all` beside others; `--max-loras-per-batch` < 1;
* `/health` answers 503 while "loading" (`--startup-delay` seconds after it listens), as SGLang does during warm-up;
* a chat whose last message contains `FAIL_MID_STREAM` streams two tokens, then SGLang's in-stream error event
  (`data: {"error": {"object": "error", ...}}`, 503 ServiceUnavailable, as for an aborted request) and `[DONE]`; the
  non-streaming request gets the error as a 503 response.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from aiohttp import web

LOG_ENV = "FAKE_SGLANG_LOG"
FAIL_MID_STREAM = "FAIL_MID_STREAM"
#: SGLang 0.5.23's SUPPORTED_LORA_TARGET_MODULES plus "all" (the choices of --lora-target-modules).
TARGET_MODULES = (
    "q_proj", "k_proj", "v_proj", "o_proj", "q_a_proj", "kv_a_proj_with_mqa", "q_b_proj", "kv_b_proj", "wq_b", "wk",
    "weights_proj", "gate_proj", "up_proj", "down_proj", "qkv_proj", "gate_up_proj", "embed_tokens", "lm_head", "all",
)


def check_args(args: argparse.Namespace) -> str | None:
    """SGLang's own refusal of these launch arguments (its message), or None when it would start."""
    if args.max_loras_per_batch <= 0:
        return "max_loras_per_batch must be positive"
    if args.served_model_name and ":" in args.served_model_name:
        return ("served_model_name cannot contain a colon (':') character. The colon is reserved for the "
                f"'model:adapter' syntax used in LoRA adapter specification. Invalid value: '{args.served_model_name}'")
    if args.enable_lora or args.lora_paths:
        if "all" in args.lora_target_modules and len(args.lora_target_modules) > 1:
            return "If 'all' is specified in --lora-target-modules, it should be the only module specified."
        if not args.lora_paths and not (args.max_lora_rank and args.lora_target_modules):
            return ("When no initial --lora-paths is provided, you need to specify both --max-lora-rank and "
                    "--lora-target-modules for LoRA initialization.")
    return None


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser()
    p.add_argument("--model-path", required=True)
    p.add_argument("--served-model-name")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=30000)
    p.add_argument("--enable-lora", action="store_true")
    p.add_argument("--enable-metrics", action="store_true")
    p.add_argument("--max-loras-per-batch", type=int, default=8)
    p.add_argument("--max-lora-rank", type=int)
    p.add_argument("--lora-target-modules", nargs="+", default=[], choices=TARGET_MODULES)
    p.add_argument("--lora-paths", nargs="+", default=[])
    p.add_argument("--context-length", type=int)
    p.add_argument("--tokens", type=int, default=int(os.environ.get("FAKE_SGLANG_TOKENS", 8)))
    p.add_argument("--token-delay", type=float, default=float(os.environ.get("FAKE_SGLANG_TOKEN_DELAY", 0)))
    p.add_argument("--startup-delay", type=float, default=float(os.environ.get("FAKE_SGLANG_STARTUP_DELAY", 0)))
    return p.parse_known_args(argv)


class FakeSGLang:
    """State of one fake server: loaded adapters, the event log, cached SSE chunks."""

    def __init__(self, args: argparse.Namespace, log_path: str | None) -> None:
        self.args = args
        self.model = args.served_model_name or args.model_path
        self.adapters: dict[str, str] = dict(spec.split("=", 1) for spec in args.lora_paths)
        self.log_path = log_path
        self._chunks: dict[tuple[str, bool], list[bytes]] = {}
        self.ready_at = time.monotonic() + args.startup_delay  # /health answers 503 until then

    def record(self, event: str, **data: Any) -> None:
        if self.log_path:
            with open(self.log_path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps({"event": event, **data}) + "\n")

    def tokens(self, label: str, limit: int) -> list[str]:
        return [f"[{label}]"] + [f" w{i}" for i in range(min(self.args.tokens, limit) - 1)]

    def resolve(self, model: str) -> tuple[str | None, str | None]:
        """(adapter, error) for SGLang's `base:adapter` model syntax."""
        base, _, adapter = model.partition(":")
        if base != self.model:
            return None, f"model {base!r} is not served"
        if adapter and adapter not in self.adapters:
            return None, f"LoRA adapter {adapter!r} is not loaded"
        return adapter or None, None

    def sse_chunks(self, model: str, label: str, limit: int, usage: bool) -> list[bytes]:
        key = (f"{model}|{label}|{limit}", usage)
        if key not in self._chunks:
            toks = self.tokens(label, limit)

            def chunk(delta: dict[str, str], finish: str | None = None, **extra: Any) -> bytes:
                body = {"id": "fake", "object": "chat.completion.chunk", "created": 0, "model": model,
                        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}
                return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"

            chunks = [chunk({"role": "assistant", "content": ""})] + [chunk({"content": t}) for t in toks]
            chunks.append(chunk({}, "stop" if len(toks) >= self.args.tokens else "length"))
            if usage:
                chunks.append(b'data: {"id":"fake","object":"chat.completion.chunk","created":0,"model":"%s",'
                              b'"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":%d,"total_tokens":%d}}\n\n'
                              % (model.encode(), len(toks), len(toks) + 3))
            chunks.append(b"data: [DONE]\n\n")
            self._chunks[key] = chunks
        return self._chunks[key]


FAKE = web.AppKey("fake", FakeSGLang)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"object": "error", "message": message, "type": "BadRequestError", "code": status},
                             status=status)


async def health(request: web.Request) -> web.Response:
    if time.monotonic() < request.app[FAKE].ready_at:
        return web.Response(status=503, text="")
    return web.Response(text="")


def _stream_error(message: str, err_type: str, code: int) -> bytes:
    """SGLang's in-stream error event (its create_streaming_error_response, json.dumps separators)."""
    error = {"object": "error", "message": message, "type": err_type, "param": None, "code": code}
    return b"data: " + json.dumps({"error": error}).encode() + b"\n\n"


async def load(request: web.Request) -> web.Response:
    fake, body = request.app[FAKE], await request.json()
    fake.record("load", body=body)
    name, path = body.get("lora_name"), body.get("lora_path")
    if name in fake.adapters:
        message = f"The LoRA adapter {name!r} is already loaded."
    elif not path or not Path(path).is_dir() or (Path(path) / "BAD").exists():
        message = f"Failed to load LoRA adapter {name!r} from {path!r}."
    else:
        fake.adapters[name] = path
        return web.json_response({"success": True, "error_message": None, "loaded_adapters": fake.adapters})
    return web.json_response({"success": False, "error_message": message, "loaded_adapters": fake.adapters}, status=400)


async def unload(request: web.Request) -> web.Response:
    fake, body = request.app[FAKE], await request.json()
    fake.record("unload", body=body)
    if fake.adapters.pop(body.get("lora_name"), None) is None:
        return web.json_response({"success": False, "error_message": "not loaded", "loaded_adapters": fake.adapters},
                                 status=400)
    return web.json_response({"success": True, "error_message": None, "loaded_adapters": fake.adapters})


async def chat(request: web.Request) -> web.StreamResponse:
    fake, body = request.app[FAKE], await request.json()
    fake.record("chat", body=body)
    adapter, error = fake.resolve(body.get("model", ""))
    if error:
        return _error(400, error)
    context = fake.args.context_length
    words = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))
    if context is not None and words >= context:
        return _error(400, f"The input ({words} tokens) is longer than the model's context length ({context} tokens).")
    label, limit = adapter or "base", int(body.get("max_tokens") or 1 << 30)
    messages = body.get("messages") or [{}]
    fail = FAIL_MID_STREAM in str(messages[-1].get("content", ""))
    if fail and not body.get("stream"):
        return _error(503, "Generation aborted: the fake failed on purpose.")
    if not body.get("stream"):
        toks = fake.tokens(label, limit)
        return web.json_response({
            "id": "fake", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(toks)},
                         "finish_reason": "stop" if len(toks) >= fake.args.tokens else "length"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": len(toks), "total_tokens": len(toks) + 3},
        })
    usage = bool((body.get("stream_options") or {}).get("include_usage"))
    chunks = fake.sse_chunks(body["model"], label, limit, usage)
    if fail:
        chunks = [*chunks[:3], _stream_error("Generation aborted: the fake failed on purpose.", "SERVICE_UNAVAILABLE",
                                             503), b"data: [DONE]\n\n"]
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    delay = fake.args.token_delay
    for chunk in chunks:
        if delay:
            await asyncio.sleep(delay)
        await resp.write(chunk)
    return resp


async def models(request: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": [{"id": request.app[FAKE].model, "object": "model"}]})


def build_app(args: argparse.Namespace, log_path: str | None) -> web.Application:
    app = web.Application()
    app[FAKE] = FakeSGLang(args, log_path)
    app.add_routes([
        web.get("/health", health),
        web.get("/v1/models", models),
        web.post("/load_lora_adapter", load),
        web.post("/unload_lora_adapter", unload),
        web.post("/v1/chat/completions", chat),
    ])
    return app


def main(argv: list[str] | None = None) -> None:
    args, unknown = parse_args(sys.argv[1:] if argv is None else argv)
    log_path = os.environ.get(LOG_ENV)
    app = build_app(args, log_path)
    app[FAKE].record("launch", argv=sys.argv[1:] if argv is None else argv, unknown=unknown, pid=os.getpid())
    refused = check_args(args)
    if refused is not None:
        app[FAKE].record("refused", reason=refused)
        print(f"AssertionError: {refused}", file=sys.stderr, flush=True)
        sys.exit(1)
    try:
        import uvloop
    except ImportError:
        loop = None
    else:
        loop = uvloop.new_event_loop()
    web.run_app(app, host=args.host, port=args.port, print=None, access_log=None, loop=loop)


if __name__ == "__main__":
    main()
