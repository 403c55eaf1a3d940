"""Endpoint probe: is the deployed app ready, which adapter version does it serve, does a chat answer?

`probe_endpoint` asks `GET /ready` (the served version comes from the JSON field `served_version`, else the
`X-Adapter-Version` header), then, when `smoke_model` is set, sends one non-streaming
`POST /v1/chat/completions`. HTTP and network failures never raise: they come back as `ready=False` with the
reason in `error`, so the orchestrator's health gate decides whether to retry or roll back. When the server's
`load_errors` lists the expected version (the engine refused to load that adapter), `refused` carries the
engine's reason: waiting longer will not help.

`chat_completion` (one non-streaming chat, never raising for HTTP or network failures) is shared with the quality
gate's evaluation (`activities.functions.evaluate_adapter`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import requests

VERSION_HEADER = "X-Adapter-Version"
_MAX_ERROR_CHARS = 300


@dataclass(frozen=True)
class ProbeInput:
    """What to probe. `expect_version` None: any version is fine; `smoke_model` None: no smoke chat."""

    endpoint: str
    api_key: str = field(default="", repr=False)
    expect_version: str | None = None
    smoke_model: str | None = None
    smoke_prompt: str = "Say hello in one word."
    timeout: float = 10.0
    max_tokens: int = 16

    def __post_init__(self) -> None:
        if not self.endpoint.startswith(("http://", "https://")):
            raise ValueError(f"ProbeInput.endpoint must be an http(s) URL, got {self.endpoint!r}")
        if self.timeout <= 0:
            raise ValueError(f"ProbeInput.timeout must be > 0, got {self.timeout}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ProbeInput:
        return cls(**data)


@dataclass(frozen=True)
class ProbeResult:
    """`ready` only when /ready said so, the version matched and the smoke chat (if asked) answered;
    `refused`: the engine's reason for refusing to load the expected version; `bad_answer`: the smoke chat reached
    the model and its answer was unusable (a 4xx, or no message content): the adapter's fault, unlike a server
    that is down or failing (5xx)."""

    ready: bool
    served_version: str | None = None
    reply: str | None = None
    error: str | None = None
    refused: str | None = None
    bad_answer: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ProbeResult:
        return cls(**data)


def probe_endpoint(request: ProbeInput, session: requests.Session | None = None) -> ProbeResult:
    """Probe one endpoint; pass a `session` to reuse connections across probes."""
    own = session is None
    http = session or requests.Session()
    try:
        return _probe(http, request)
    finally:
        if own:
            http.close()


@dataclass(frozen=True)
class ChatAnswer:
    """One chat completion's outcome: `reply` (the message content) or `error` (for people, e.g.
    `answered 500: engine exploded`); `status` is the HTTP status, None when no answer came (network, timeout)."""

    reply: str | None
    error: str | None = None
    status: int | None = None


def auth_headers(api_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def chat_completion(http: requests.Session, endpoint: str, api_key: str, model: str,
                    messages: list[dict[str, str]], max_tokens: int, timeout: float | tuple[float, float]
                    ) -> ChatAnswer:
    """One non-streaming `POST /v1/chat/completions` at temperature 0; never raises for HTTP or network faults."""
    payload = {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": False}
    try:
        resp = http.post(f"{endpoint.rstrip('/')}/v1/chat/completions", json=payload, headers=auth_headers(api_key),
                         timeout=timeout)
    except requests.RequestException as exc:
        return ChatAnswer(None, f"failed: {type(exc).__name__}: {exc}")
    if resp.status_code != 200:
        return ChatAnswer(None, f"answered {resp.status_code}: {_excerpt(resp)}", resp.status_code)
    reply = _reply_text(_json_object(resp))
    if reply is None:
        return ChatAnswer(None, f"reply has no message content: {_excerpt(resp)}", resp.status_code)
    return ChatAnswer(reply, status=resp.status_code)


def _probe(http: requests.Session, request: ProbeInput) -> ProbeResult:
    base = request.endpoint.rstrip("/")
    headers = auth_headers(request.api_key)
    try:
        resp = http.get(f"{base}/ready", headers=headers, timeout=request.timeout)
    except requests.RequestException as exc:
        return ProbeResult(False, error=f"GET /ready failed: {type(exc).__name__}: {exc}")
    body = _json_object(resp)
    version = body.get("served_version") if isinstance(body.get("served_version"), str) else None
    version = version or resp.headers.get(VERSION_HEADER) or None
    refused = _refusal(body, request.expect_version)
    if refused is not None:
        error = f"the engine refused adapter version {request.expect_version!r}: {refused}"
        return ProbeResult(False, version, error=error, refused=refused)
    if resp.status_code != 200:
        return ProbeResult(False, version, error=f"GET /ready answered {resp.status_code}: {_excerpt(resp)}")
    if request.expect_version is not None and version != request.expect_version:
        return ProbeResult(
            False, version, error=f"serving version {version!r}, expected {request.expect_version!r}"
        )
    if request.smoke_model is None:
        return ProbeResult(True, version)
    chat = chat_completion(http, base, request.api_key, request.smoke_model,
                           [{"role": "user", "content": request.smoke_prompt}], request.max_tokens, request.timeout)
    if chat.reply is None:
        # reached the model and unusable (a 4xx, no content): the adapter's fault; down or failing (5xx): not
        bad_answer = chat.status is not None and chat.status < 500
        return ProbeResult(False, version, error=f"smoke chat {chat.error}", bad_answer=bad_answer)
    return ProbeResult(True, version, reply=chat.reply)


def _refusal(body: dict[str, Any], version: str | None) -> str | None:
    """The engine's reason from `load_errors` for the adapter entry with this version, else None."""
    errors = body.get("load_errors")
    if version is None or not isinstance(errors, dict):
        return None
    for entry in errors.values():
        if isinstance(entry, dict) and entry.get("version") == version:
            return str(entry.get("reason") or "refused by the inference engine")
    return None


def _json_object(resp: requests.Response) -> dict[str, Any]:
    try:
        data = resp.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _reply_text(body: dict[str, Any]) -> str | None:
    try:
        content = body["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        return None
    return content if isinstance(content, str) else None


def _excerpt(resp: requests.Response) -> str:
    body = _json_object(resp)
    error = body.get("error")
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return error["message"][:_MAX_ERROR_CHARS]
    return resp.text[:_MAX_ERROR_CHARS]
