"""OpenAI chat protocol: request validation into `engines.base.ChatRequest`, error bodies, response shapes.

Validation helpers raise `ApiError`, which carries the HTTP status and OpenAI's error JSON
(`{"error": {"message", "type", "param", "code"}}`); the router turns it into a response. Nothing here does I/O.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

from .engines.base import ChatRequest, Usage

ROLES = frozenset({"system", "user", "assistant"})
MAX_STOP = 4
MAX_SEED = 2**63 - 1
MAX_JSON_DEPTH = 64
RETRY_AFTER_S = "2"


class ApiError(Exception):
    """A request failure with its HTTP status and a client-safe message in OpenAI's error shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def invalid(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


def unknown_model(model: str) -> ApiError:
    """OpenAI's answer to a `model` it does not serve: 404 `model_not_found` (the client raises NotFoundError)."""
    return ApiError(404, f"The model '{model}' does not exist or you do not have access to it",
                    code="model_not_found")


def http_error(status: int, reason: str, method: str, path: str, allow: str | None = None) -> ApiError:
    """An HTTP error aiohttp raised itself (routing: no such path 404, wrong method 405 with its `Allow`) in OpenAI's
    shape, worded as OpenAI words those two."""
    messages = {404: "Invalid URL", 405: "Invalid method for URL"}
    return ApiError(status, f"{messages.get(status, reason)} ({method} {path})",
                    headers={"Allow": allow} if allow else None)


def unauthorized() -> ApiError:
    return ApiError(401, "Incorrect or missing API key", type="authentication_error", code="invalid_api_key")


def too_large(limit: int) -> ApiError:
    return ApiError(413, f"Request body exceeds {limit} bytes", code="request_too_large")


def unavailable(message: str) -> ApiError:
    return ApiError(503, message, type="server_error", code="unavailable", headers={"Retry-After": RETRY_AFTER_S})


def context_exceeded(limit: int, prompt: int | None, completion: int) -> ApiError:
    """OpenAI's answer to a prompt plus max_tokens over the model's context (`prompt` None: not counted)."""
    asked = f"{completion} tokens for the completion" if prompt is None else (
        f"{prompt + completion} tokens ({prompt} in the messages, {completion} in the completion)")
    return invalid(f"This model's maximum context length is {limit} tokens. However, you requested {asked}. "
                   "Please reduce the length of the messages or completion.", "messages", "context_length_exceeded")


def adapter_unavailable(model: str, reason: str) -> ApiError:
    return ApiError(503, f"The model '{model}' is unavailable: {reason}", type="server_error",
                    code="adapter_unavailable", headers={"Retry-After": RETRY_AFTER_S})


def internal_error() -> ApiError:
    return ApiError(500, "The engine failed to generate a response", type="server_error", code="engine_error")


@dataclass(frozen=True)
class SamplingDefaults:
    """What a request gets for a sampling field it leaves out: OpenAI's values unless the model says otherwise
    (generation.py reads the model's)."""

    temperature: float = 1.0
    top_p: float = 1.0

    def to_json(self) -> dict[str, float]:
        return {"temperature": self.temperature, "top_p": self.top_p}


@dataclass(frozen=True)
class ParsedChat:
    """A validated request: the `model` the client asked for, its stream options, and the engine request.

    `max_tokens_given`: the client set max_tokens (else the default applies and may be cut to fit the context).
    `user`: OpenAI's end-user id when it is a non-empty string (the canary's caller key), else None.
    """

    model: str
    request: ChatRequest
    include_usage: bool = False
    max_tokens_given: bool = False
    user: str | None = None


_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")
_DEPTH_STEP = [{ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}.get(b, 0) for b in range(256)]


def json_too_deep(body: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether JSON text nests arrays/objects deeper than `limit`, found without parsing (no recursion).

    Strings are cut out first (their brackets are text), then the depth is a running sum over the brackets, in
    C-level loops (about 70 ms for 1 MiB of brackets). On invalid JSON the answer may be off, but the parser then
    fails where it and this scan first disagree, before nesting any deeper.
    """
    if body.count(b"[") + body.count(b"{") <= limit:
        return False
    brackets = _JSON_STRING.sub(b"", body).translate(None, _NOT_BRACKET)
    return max(accumulate(map(_DEPTH_STEP.__getitem__, brackets)), default=0) > limit


def _refuse_constant(name: str) -> float:
    raise ValueError(name)


def parse_json(body: bytes) -> dict[str, Any]:
    """The body as a JSON object; 400 for invalid JSON, NaN/Infinity, over-long integers, or nesting > 64."""
    if json_too_deep(body):
        raise invalid(f"Invalid JSON body: nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        data = json.loads(body, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise invalid(f"Invalid JSON body: {exc.msg}") from exc
    except UnicodeDecodeError as exc:
        raise invalid("Invalid JSON body: not UTF-8") from exc
    except (ValueError, RecursionError) as exc:  # NaN/Infinity, an over-long integer; recursion: UTF-16/32 fooled the scan
        raise invalid("Invalid JSON body: NaN, Infinity, an over-long number or too deep") from exc
    if not isinstance(data, dict):
        raise invalid("The request body must be a JSON object")
    return data


def parse_chat_request(
    data: dict[str, Any], *, max_tokens_cap: int, defaults: SamplingDefaults = SamplingDefaults()
) -> ParsedChat:
    """Validate an OpenAI chat completion body; `adapter` is left None for the router to resolve, sampling fields
    left out take `defaults`."""
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise invalid("'model' must be a non-empty string", "model")
    stream = _bool(data, "stream", False)
    n = data.get("n")
    if n is not None and (not _is_int(n) or n != 1):
        raise invalid("Only n=1 is supported", "n")
    sampling = sampling_fields(data, defaults)
    request = ChatRequest(
        messages=_messages(data.get("messages")),
        max_tokens=_max_tokens(data, max_tokens_cap),
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        stop=_stop(data.get("stop")),
        seed=_seed(data.get("seed")),
        stream=stream,
    )
    given = data.get("max_completion_tokens") is not None or data.get("max_tokens") is not None
    user = data.get("user")
    return ParsedChat(model=model, request=request, include_usage=stream and _include_usage(data), max_tokens_given=given,
                      user=user if isinstance(user, str) and user else None)


def sampling_fields(data: dict[str, Any], defaults: SamplingDefaults) -> SamplingDefaults:
    """`temperature` in [0, 2] and `top_p` in (0, 1] from `data` (a 400 naming the field otherwise); `defaults` fill
    in what `data` leaves out."""
    return SamplingDefaults(
        temperature=_number(data, "temperature", defaults.temperature, 0.0, 2.0, low_open=False),
        top_p=_number(data, "top_p", defaults.top_p, 0.0, 1.0, low_open=True),
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _bool(data: dict[str, Any], name: str, default: bool) -> bool:
    value = data.get(name, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise invalid(f"'{name}' must be a boolean", name)
    return value


def _messages(raw: Any) -> list[dict[str, Any]]:
    if not isinstance(raw, list) or not raw:
        raise invalid("'messages' must be a non-empty array", "messages")
    out: list[dict[str, Any]] = []
    for i, msg in enumerate(raw):
        param = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise invalid("Each message must be an object", param)
        role = msg.get("role")
        if role not in ROLES:
            raise invalid(f"Message role must be one of {sorted(ROLES)}", f"{param}.role")
        out.append({"role": role, "content": _content(msg.get("content"), f"{param}.content")})
    return out


def _content(content: Any, param: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list) and content:
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise invalid("Content parts must be {'type': 'text', 'text': str}", param)
            parts.append(part["text"])
        return "".join(parts)
    raise invalid("Message content must be a string or a non-empty list of text parts", param)


def _max_tokens(data: dict[str, Any], cap: int) -> int:
    name = "max_completion_tokens" if data.get("max_completion_tokens") is not None else "max_tokens"
    value = data.get(name)
    if value is None:
        return min(256, cap)
    if not _is_int(value) or not 1 <= value <= cap:
        raise invalid(f"'{name}' must be an integer between 1 and {cap}", name)
    return value


def _number(data: dict[str, Any], name: str, default: float, low: float, high: float, *, low_open: bool) -> float:
    value = data.get(name)
    if value is None:
        return default
    # ints compare exactly with float bounds; only floats go through isfinite (a huge int would overflow it)
    ok = _is_int(value) or (isinstance(value, float) and math.isfinite(value))
    if not ok or value > high or value < low or (low_open and value == low):
        bounds = f"{'(' if low_open else '['}{low:g}, {high:g}]"
        raise invalid(f"'{name}' must be a number in {bounds}", name)
    return float(value)


def _stop(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and len(value) <= MAX_STOP and all(isinstance(s, str) for s in value):
        return list(value)
    raise invalid(f"'stop' must be a string or a list of at most {MAX_STOP} strings", "stop")


def _seed(value: Any) -> int | None:
    if value is None:
        return None
    if not _is_int(value) or not 0 <= value <= MAX_SEED:
        raise invalid(f"'seed' must be an integer between 0 and {MAX_SEED}", "seed")
    return value


def _include_usage(data: dict[str, Any]) -> bool:
    options = data.get("stream_options")
    if options is None:
        return False
    if not isinstance(options, dict):
        raise invalid("'stream_options' must be an object", "stream_options")
    return _bool(options, "include_usage", False)


def usage_json(usage: Usage | None) -> dict[str, int] | None:
    if usage is None:
        return None
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }


def completion_json(
    completion_id: str, created: int, model: str, text: str, finish_reason: str | None, usage: Usage | None
) -> dict[str, Any]:
    """A non-streaming `chat.completion` object."""
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish_reason or "stop"}
        ],
        "usage": usage_json(usage),
    }


def chunk_json(
    completion_id: str,
    created: int,
    model: str,
    delta: dict[str, str] | None,
    finish_reason: str | None = None,
    usage: Usage | None = None,
) -> dict[str, Any]:
    """A streaming `chat.completion.chunk`; `delta=None` makes the usage-only chunk (empty choices)."""
    chunk: dict[str, Any] = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model}
    chunk["choices"] = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish_reason}]
    if usage is not None:
        chunk["usage"] = usage_json(usage)
    return chunk
