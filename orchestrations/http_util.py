"""Small helpers shared by the HTTP functions: JSON responses, errors in one shape, name checks."""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable
from typing import Any

import azure.functions as func

from activities.validation import check_name


class BadRequest(ValueError):
    """The caller sent something we cannot act on (HTTP 400, or `status` when given)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> func.HttpResponse:
    return func.HttpResponse(
        json.dumps(body, default=str), status_code=status, mimetype="application/json", headers=headers or {}
    )


def error_response(message: str, status: int) -> func.HttpResponse:
    return json_response({"error": {"message": message, "status": status}}, status)


def app_name(req: func.HttpRequest) -> str:
    app = req.route_params.get("app", "")
    try:
        return check_name("app", app)
    except ValueError as exc:
        raise BadRequest(str(exc)) from exc


def json_body(req: func.HttpRequest) -> dict[str, Any]:
    raw = req.get_body() or b"{}"
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object")
    return body


def answers_bad_requests(
    handler: Callable[..., Awaitable[func.HttpResponse]],
) -> Callable[..., Awaitable[func.HttpResponse]]:
    """Turn what an HTTP function raises into the JSON error response: `BadRequest` (its status), `LookupError`
    (404), an upload the store refuses (409, naming why), storage or platform unavailable (503; a `PlatformError`
    with the platform's message)."""
    from azure.core.exceptions import AzureError

    from activities.adapter_store import AdapterStoreError
    from activities.platform.base import PlatformError

    @functools.wraps(handler)
    async def wrapper(*args: Any, **kwargs: Any) -> func.HttpResponse:
        try:
            return await handler(*args, **kwargs)
        except BadRequest as exc:
            return error_response(str(exc), exc.status)
        except LookupError as exc:
            return error_response(str(exc.args[0] if exc.args else exc), 404)
        except AdapterStoreError as exc:
            return error_response(f"{exc.code}: {exc}", 409)
        except AzureError as exc:
            return error_response(f"storage or platform unavailable, try again: {type(exc).__name__}", 503)
        except PlatformError as exc:
            return error_response(f"platform unavailable, try again: {type(exc).__name__}: {exc}", 503)

    return wrapper
