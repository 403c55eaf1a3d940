"""Activity wrappers: permanent failures become `ok: false` values; transient ones raise after Retry-After."""

from __future__ import annotations

import time

import pytest

from activities.adapter_store import DigestMismatchError
from activities.functions import MAX_RETRY_AFTER_S, permanent_failures
from activities.platform.base import PlatformError, TransientPlatformError
from activities.validation import AdapterValidationError


def raising(exc: Exception):
    @permanent_failures
    def activity(payload: dict) -> dict:
        raise exc
    return activity


def test_validation_error_is_a_value_with_its_code() -> None:
    """A bad adapter is not retried: the result names the code and reason."""
    out = raising(AdapterValidationError("rank_too_large", "r=64 > 16"))({})
    assert out == {"ok": False, "code": "rank_too_large", "reason": "rank_too_large: r=64 > 16", "cause": "content"}


@pytest.mark.parametrize(("exc", "cause"), [(PlatformError("ARM said no: InvalidTemplate"), "platform"),
                                            (DigestMismatchError("sha differs"), "content")])
def test_permanent_platform_and_store_errors_are_values(exc: Exception, cause: str) -> None:
    """ARM refusals and store integrity errors end the rollout with the message and its cause, without retries."""
    out = raising(exc)({})
    assert out["ok"] is False and out["reason"] == str(exc) and out["cause"] == cause


def test_transient_error_raises_after_retry_after() -> None:
    """A throttled call sleeps for Retry-After, then raises so call_activity_with_retry tries again."""
    started = time.perf_counter()
    with pytest.raises(TransientPlatformError):
        raising(TransientPlatformError("429 Too Many Requests", retry_after=0.3))({})
    assert time.perf_counter() - started >= 0.3
    assert MAX_RETRY_AFTER_S <= 60


def test_success_passes_through() -> None:
    """A normal result is returned as it is."""
    assert permanent_failures(lambda payload: {"ok": True, "n": payload["n"]})({"n": 3}) == {"ok": True, "n": 3}


class _Replicas:
    """A stand-in endpoint behind a round-robin ingress: each /ready goes to the next replica's version."""

    def __init__(self, versions: list[str]) -> None:
        import itertools
        import json
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        turn = itertools.cycle(versions)

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                body = json.dumps({"ready": True, "served_version": next(turn)}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.mark.parametrize(("versions", "ready"), [(["v2", "v2"], True), (["v2", "v1"], False)])
def test_probe_asks_every_replica(monkeypatch: pytest.MonkeyPatch, versions: list[str], ready: bool) -> None:
    """With 2 replicas the gate probes several times: one replica still on the old version keeps it closed."""
    from types import SimpleNamespace

    from activities import functions
    from activities.platform.base import AppState

    replicas = _Replicas(versions)
    try:
        apps = SimpleNamespace(describe=lambda app: AppState(app, True, endpoint=replicas.url, replicas=2))
        svc = SimpleNamespace(apps=apps, settings=SimpleNamespace(inference_api_key="k"), alias="live")
        monkeypatch.setattr(functions, "services", lambda: svc)
        out = functions.probe_endpoint.build().get_user_function()({"app": "a", "expect_version": "v2", "smoke": False})
    finally:
        replicas.server.shutdown()
    assert out["ready"] is ready
    if not ready:
        assert "v1" in out["error"]
