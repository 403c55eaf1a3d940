"""HTTP client for the orchestrator's status API and starters (the same routes on devhost and on Azure)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import requests


class ApiError(RuntimeError):
    """The orchestrator answered with an error; `status` is the HTTP status (0: not reachable)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class OrchestratorApi:
    """Talks to `<base_url>/api/...`; `function_key` goes in `x-functions-key` (kept out of repr)."""

    base_url: str
    function_key: str | None = field(default=None, repr=False)
    timeout: float = 30.0
    session: requests.Session = field(default_factory=requests.Session, repr=False)

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        headers = {"x-functions-key": self.function_key} if self.function_key else {}
        url = f"{self.base_url.rstrip('/')}/api/{path}"
        try:
            resp = self.session.request(method, url, json=body, headers=headers, timeout=self.timeout)
        except requests.RequestException as exc:
            raise ApiError(f"orchestrator not reachable at {self.base_url}: {exc.__class__.__name__}") from exc
        try:
            data = resp.json()
        except ValueError:
            data = {}
        if resp.status_code >= 400:
            message = (data.get("error") or {}).get("message") if isinstance(data, dict) else None
            raise ApiError(message or f"HTTP {resp.status_code} from {method} {path}", resp.status_code)
        return data

    def apps(self) -> list[str]:
        return self._call("GET", "apps")["apps"]

    def app(self, app: str) -> dict[str, Any]:
        return self._call("GET", f"apps/{_seg(app)}")

    def deployments(self, app: str) -> list[dict[str, Any]]:
        return self._call("GET", f"apps/{_seg(app)}/deployments")["deployments"]

    def deployment(self, deployment_id: str) -> dict[str, Any]:
        return self._call("GET", f"deployments/{_seg(deployment_id)}")

    def deploy(self, app: str, adapter: str, force_restart: bool = False) -> dict[str, Any]:
        return self._call("POST", f"apps/{_seg(app)}/deployments", {"adapter": adapter, "force_restart": force_restart})

    def provision(self, app: str) -> dict[str, Any]:
        return self._call("POST", f"apps/{_seg(app)}/provision")

    def restart(self, app: str) -> dict[str, Any]:
        return self._call("POST", f"apps/{_seg(app)}/restart")


def _seg(value: str) -> str:
    """One URL path segment: every character that could end or change the path is escaped; `.` and `..`, which
    HTTP clients resolve away even escaped, are refused (no app, adapter or id is named so): ApiError 400."""
    if value in ("", ".", ".."):
        raise ApiError(f"{value!r} is not a valid name", 400)
    return quote(value, safe="")


def stream_chat(
    endpoint: str, api_key: str | None, model: str, message: str, timeout: float = 120.0,
    **params: float | int | None,
) -> Iterator[str]:
    """Stream a chat reply from an OpenAI-compatible endpoint, piece by piece (`params`: temperature, ...)."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    body = {"model": model, "messages": [{"role": "user", "content": message}], "stream": True}
    body.update({k: v for k, v in params.items() if v is not None})
    try:
        resp = requests.post(f"{endpoint.rstrip('/')}/v1/chat/completions", json=body, headers=headers,
                             stream=True, timeout=timeout)
    except requests.RequestException as exc:
        raise ApiError(f"chat endpoint not reachable at {endpoint}: {exc.__class__.__name__}") from exc
    if resp.status_code >= 400:
        try:
            message_text = resp.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message_text = f"HTTP {resp.status_code}"
        raise ApiError(f"chat failed: {message_text}", resp.status_code)
    for line in resp.iter_lines(decode_unicode=True):
        if not line or not line.startswith("data: "):
            continue
        data = line[len("data: "):]
        if data == "[DONE]":
            return
        choices = json.loads(data).get("choices") or []
        piece = choices[0].get("delta", {}).get("content") if choices else None
        if piece:
            yield piece
