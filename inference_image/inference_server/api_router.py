"""The aiohttp app: route table, auth and error middleware, typed app state, engine lifecycle.

Routes: `POST /v1/chat/completions`, `GET /v1/models` (each entry with the model's `sampling_defaults`, see
generation.py), `GET /health` (no auth), `GET /ready`, `GET /metrics`,
`GET /admin/adapters`, `POST /admin/sync` (admin key). Bearer keys are compared with `hmac.compare_digest`.
With no API keys configured the chat API is open (local use); admin routes then fall back to the API keys.
`/ready` answers its status code to anyone; with a valid key its body has the details, among them `load_errors`:
`{"<adapter>": {"version", "sha256", "reason"}}` for each manifest adapter the latest sync could not load.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from .config import ServerConfig
from .engines.base import Engine
from .protocol import ApiError, http_error, unauthorized, unavailable
from .serving import ChatService
from .state import ServerState, build_engine

log = logging.getLogger(__name__)

STATE = web.AppKey("state", ServerState)
CHAT = web.AppKey("chat", ChatService)

routes = web.RouteTableDef()
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(exc: ApiError) -> web.Response:
    return web.json_response(exc.body(), status=exc.status, headers=exc.headers)


class KeyChecker:
    """Constant-time bearer key checks for the API and admin routes."""

    def __init__(self, api_keys: tuple[str, ...], admin_key: str | None) -> None:
        """No keys at all: every route is open (a local server). Chat keys but no admin key: the admin routes are
        closed (a chat key never opens them)."""
        self._api = [k.encode() for k in api_keys]
        self._admin: list[bytes] | None = [admin_key.encode()] if admin_key else (None if api_keys else [])

    @staticmethod
    def _matches(header: str | None, keys: list[bytes] | None) -> bool:
        if keys is None:
            return False
        if not keys:
            return True
        if not header or not header.startswith("Bearer "):
            return False
        given = header[7:].strip().encode()
        found = False
        for key in keys:  # compare against every key: timing does not reveal which one matched
            found |= hmac.compare_digest(given, key)
        return found

    def check(self, request: web.Request) -> None:
        path = request.path
        if path == "/health":
            return
        keys = self._admin if path.startswith("/admin/") else self._api
        authorized = self._matches(request.headers.get("Authorization"), keys)
        if path == "/ready":  # platform probes carry no secret: they get the status code, callers with a key the details
            request[AUTHORIZED] = authorized
            return
        if not authorized:
            raise unauthorized()


#: Per-request flag: the caller presented a valid API key (set for /ready, which answers without one).
AUTHORIZED = web.RequestKey("authorized", bool)


def _middleware(checker: KeyChecker) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    @web.middleware
    async def api_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            checker.check(request)
            return await handler(request)
        except ApiError as exc:
            return error_response(exc)
        except web.HTTPException as exc:  # routing's own 404/405 (aiohttp's text bodies) in OpenAI's JSON shape
            if exc.status < 400:
                raise
            allow = exc.headers.get("Allow")
            return error_response(http_error(exc.status, exc.reason, request.method, request.path, allow))

    return api_middleware


@routes.post("/v1/chat/completions")
async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await request.app[CHAT].handle(request)


@routes.get("/v1/models")
async def list_models(request: web.Request) -> web.Response:
    state = request.app[STATE]
    registry, base = state.registry, state.config.base_model_name
    card = {"object": "model", "created": 0, "owned_by": "inference-server",
            "sampling_defaults": state.sampling_defaults.to_json()}
    active = registry.active_ref
    data = [
        {**card, "id": base, "root": base, "parent": None, "version": None},
        {**card, "id": registry.alias, "root": registry.alias_target, "parent": base,
         "version": active.version if active else None},
    ]
    data += [{**card, "id": ref.name, "root": ref.name, "parent": base, "version": ref.version} for ref in registry.refs()]
    if (candidate := registry.candidate) is not None:  # a canary candidate is asked by its version string
        data.append({**card, "id": candidate.version, "root": candidate.name, "parent": base,
                     "version": candidate.version, "candidate": True})
    return web.json_response({"object": "list", "data": data})


@routes.get("/health")
async def health(request: web.Request) -> web.Response:
    """Liveness: 503 once the engine gave up (an engine's `failed`: SGLang failed to launch `start_attempts` times in
    a row), so the platform's liveness probe restarts the server; /ready (with a key) says why."""
    if getattr(request.app[STATE].engine, "failed", False):
        return web.json_response({"status": "failed"}, status=503)
    return web.json_response({"status": "alive"})


@routes.get("/ready")
async def ready(request: web.Request) -> web.Response:
    ok, detail = request.app[STATE].readiness()
    body = detail if request.get(AUTHORIZED, True) else {"ready": ok}
    return web.json_response(body, status=200 if ok else 503, headers=None if ok else {"Retry-After": "2"})


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    m = request.app[STATE].metrics
    return web.Response(body=m.render(), headers={"Content-Type": m.content_type})


@routes.get("/admin/adapters")
async def admin_adapters(request: web.Request) -> web.Response:
    state = request.app[STATE]
    registry = state.registry
    adapters = [
        {"name": ref.name, "engine_name": ref.engine_name, "version": ref.version, "sha256": ref.sha256,
         "id": ref.id, "in_flight": registry.in_flight(ref), "active": ref.name == registry.active}
        for ref in registry.refs()
    ]
    return web.json_response({"alias": registry.alias, "active": registry.active, "adapters": adapters,
                              "candidate": state.candidate(), "retiring": registry.retiring,
                              "engine_adapters": state.engine.loaded_adapters(), **state.syncer.status()})


@routes.post("/admin/sync")
async def admin_sync(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if not state.started:
        raise unavailable("The engine is not started yet")
    report = await state.syncer.sync_once()
    return web.json_response(report.to_json())


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    """Start the engine in the background (so /health answers at once); stop it on cleanup."""
    state = app[STATE]
    starter = asyncio.create_task(state.start())
    yield
    starter.cancel()
    await asyncio.gather(starter, return_exceptions=True)
    await state.stop()


async def _drain(app: web.Application) -> None:
    state = app[STATE]
    await state.drain(state.config.drain_timeout_s)


def create_app(config: ServerConfig, engine: Engine | None = None) -> web.Application:
    """The server app; `engine` defaults to the one named by `config` (tests pass their own)."""
    app = web.Application(
        middlewares=[_middleware(KeyChecker(config.api_keys, config.admin_key))],
        client_max_size=config.max_body_bytes,
    )
    state = ServerState(config, engine if engine is not None else build_engine(config))
    app[STATE] = state
    app[CHAT] = ChatService(state)
    app.add_routes(routes)
    app.cleanup_ctx.append(_lifecycle)
    app.on_shutdown.append(_drain)
    return app
