"""A stand-in for the status API on loopback, serving the real dashboard files: the page's behaviour with many
records and with a host that requires a function key, without starting the stack."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import azure.functions as func
from aiohttp import web

from devhost.http_front import to_aiohttp_response
from orchestrations.dashboard import dashboard_page, dashboard_static

STAGES = ["received", "validating", "staging", "provisioning", "activating", "verifying", "live"]
#: The stages that take a person's decision, as orchestrations/progressive.py's ACTIONS_BY_STAGE says.
ACCEPTS = {"awaiting_approval": ["approve", "reject", "abort"], "canary": ["promote", "abort"]}
#: What each decision leads to in the stand-in: the stage the record is in at the next read.
AFTER = {"promote": "live", "abort": "rolled_back", "approve": "canary", "reject": "rolled_back"}
POLICY = {"canary": {"steps": [10, 50, 100], "hold_s": 60, "max_error_rate": 0.05}, "approval": {"required": True}}


def records(app: str, count: int, start: datetime) -> list[dict[str, Any]]:
    """`count` terminal records of `app`, newest first; every 7th failed with a reason naming its number."""
    out = []
    for i in range(count):
        at = start - timedelta(minutes=i)
        failed = i % 7 == 3
        stages = STAGES[:2] + ["failed"] if failed else STAGES
        history = [{"stage": s, "at": (at + timedelta(seconds=2 * n)).isoformat()} for n, s in enumerate(stages)]
        out.append({"id": f"{app}.{at:%Y%m%dT%H%M%S}000000-r{i:04d}", "app": app, "adapter": "alpha",
                    "version": f"alpha@{i:012x}", "stage": stages[-1], "accepted_at": at.isoformat(),
                    "history": history, "reason": f"rank_too_large: record {i}" if failed else None,
                    "cause": "content" if failed else None})
    return out


def figures(requests: int, errors: int, p95: float) -> dict[str, Any]:
    return {"requests": requests, "errors": errors, "error_rate": errors / requests, "ttft_p95_ms": p95}


def evaluation(candidate: float, live: float) -> dict[str, Any]:
    """A quality gate's outcome: the adapter's set of 4 cases, the candidate scoring `candidate`, live `live`."""
    def result(value: float, reply: str) -> dict[str, Any]:
        passed = round(value * 4)
        return {"score": value, "passed": passed, "total": 4,
                "failing": [{"case": i, "why": "expected 'hello'", "reply": reply} for i in range(passed, 4)]}
    return {"max_regression": 0.1, "passed": candidate >= 0.5 and candidate >= live - 0.1,
            "sets": {"adapter": {"min_score": 0.5, "candidate": result(candidate, "beta says goodbye"),
                                 "live": result(live, "alpha says hello")}}}


def progressive_records(app: str, start: datetime) -> list[dict[str, Any]]:
    """A rollout in `canary` at 50 % after a passed 10 % step, one `awaiting_approval`, and one that ended `live`
    after its canary (terminal: no decision left), newest first."""
    def rec(n: int, stage: str, **extra: Any) -> dict[str, Any]:
        at = start + timedelta(minutes=n)
        stages = [*STAGES[:5], "evaluating", stage]
        history = [{"stage": s, "at": (at + timedelta(seconds=2 * i)).isoformat()} for i, s in enumerate(stages)]
        return {"id": f"{app}.{at:%Y%m%dT%H%M%S}000000-p{n}", "app": app, "adapter": "beta",
                "version": f"beta@{n:012x}", "stage": stage, "accepted_at": at.isoformat(), "history": history,
                "reason": None, "cause": None, "policy_source": "app", **extra}

    live, beta = "alpha@000000000000", "beta@000000000003"
    first = {"step": 1, "weight": 10, "verdict": "pass",
             "figures": {live: figures(180, 1, 120.0), beta: figures(20, 0, 131.5)}}
    canary = {"steps": [10, 50, 100], "step": 2, "weight": 50, "hold_until": (start + timedelta(hours=1)).isoformat(),
              "analysis": [first]}
    approval = {"required": True, "deadline": (start + timedelta(days=1)).isoformat(), "decision": None, "by": None,
                "at": None}
    ended = {**canary, "step": 3, "weight": 100, "hold_until": None,
             "analysis": [first, {"step": 2, "weight": 50, "verdict": "promote", "by": "ana", "figures": {}}]}
    return [rec(3, "canary", evaluation=evaluation(0.75, 0.75), approval={**approval, "decision": "approved",
                                                                          "by": "ana", "at": start.isoformat()},
                canary=canary),
            rec(2, "awaiting_approval", evaluation=evaluation(1.0, 1.0), approval=approval),
            rec(1, "live", evaluation=evaluation(1.0, 1.0), canary=ended)]


@dataclass
class StubApi:
    """The status API's read routes over fixed records; with `key` set, like Azure, 401 without that header."""

    counts: dict[str, int]
    key: str | None = None
    seen: list[tuple[str, str | None]] = field(default_factory=list)  # (path and query, x-functions-key)
    url: str = ""
    uploads: list[tuple[str, dict[str, bytes]]] = field(default_factory=list)
    #: Apps that also have progressive_records (newest), and a rollout policy of their own.
    progressive: tuple[str, ...] = ()
    #: (path, body) of each decision POSTed; `moved_on`: record id -> the stage the rollout is really in (the page
    #: still shows the old one: the stand-in answers 409 as the API does).
    decisions: list[tuple[str, bytes]] = field(default_factory=list)
    moved_on: dict[str, str] = field(default_factory=dict)
    bad_policy: dict[str, str] = field(default_factory=dict)  # app -> why its stored policy does not parse

    def __post_init__(self) -> None:
        start = datetime(2026, 1, 1, 12, tzinfo=UTC)
        self.records = {app: records(app, n, start) for app, n in self.counts.items()}
        for app in self.progressive:
            self.records[app][:0] = progressive_records(app, start)
        self._encoded: dict[tuple[str, int], bytes] = {}

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.seen.append((request.path_qs, request.headers.get("x-functions-key")))
        if request.path.startswith("/api/dashboard") or self.key is None:
            return await handler(request)
        if request.headers.get("x-functions-key") != self.key:
            return web.json_response({"error": {"message": "unauthorized", "status": 401}}, status=401)
        return await handler(request)

    async def _page(self, request: web.Request) -> web.Response:
        req = func.HttpRequest("GET", str(request.url), body=b"", route_params=dict(request.match_info))
        name = request.match_info.get("name")
        return to_aiohttp_response(dashboard_static(req) if name else dashboard_page(req))

    async def _apps(self, _request: web.Request) -> web.Response:
        return web.json_response({"apps": sorted(self.records)})

    async def _app(self, request: web.Request) -> web.Response:
        app = request.match_info["app"]
        newest = self.records[app][0]
        return web.json_response({"app": app, "served": {"adapter": "alpha", "version": newest["version"]},
                                  "endpoint": f"http://127.0.0.1:1/{app}", "running": True, "replicas": 1,
                                  "last_rollout": newest, "reconciler": {"phase": "idle"}, "deleting": None})

    async def _deployments(self, request: web.Request) -> web.Response:
        app = request.match_info["app"]
        limit = int(request.query.get("limit", "50"))
        assert limit <= 200, limit
        key = (app, limit)  # encoded once: the stand-in answers as fast as it can, so the page's time is measured
        if key not in self._encoded:
            self._encoded[key] = json.dumps({"app": app, "deployments": self.records[app][:limit]}).encode()
        return web.Response(body=self._encoded[key], content_type="application/json")

    async def _deployment(self, request: web.Request) -> web.Response:
        wanted = request.match_info["id"]
        found = [r for rs in self.records.values() for r in rs if r["id"] == wanted]
        return web.json_response(found[0]) if found else web.json_response({}, status=404)

    async def _decide(self, request: web.Request) -> web.Response:
        """Like `POST /api/deployments/{id}/{action}`: 202 and the record moves on; 409 in a stage without it."""
        self.decisions.append((request.path, await request.read()))
        wanted, action = request.match_info["id"], request.match_info["action"]
        found = [r for rs in self.records.values() for r in rs if r["id"] == wanted]
        if not found:
            return web.json_response({"error": {"message": f"no deployment {wanted!r}", "status": 404}}, status=404)
        record = found[0]
        stage = self.moved_on.get(wanted, record["stage"])
        if action not in ACCEPTS.get(stage, []):
            takes = f"it takes {', '.join(ACCEPTS[stage])}" if stage in ACCEPTS else "it takes no action"
            return web.json_response({"error": {"message": f"deployment {wanted} is {stage}: {takes}", "status": 409},
                                      "stage": stage, "accepts": ACCEPTS.get(stage, [])}, status=409)
        record["stage"] = AFTER[action]
        record["history"].append({"stage": AFTER[action], "at": datetime.now(UTC).isoformat()})
        if record.get("canary") and action == "abort":
            record["canary"] = {**record["canary"], "weight": 0, "hold_until": None}
        self._encoded.clear()
        return web.json_response({"id": wanted, "action": action, "stage": stage, "by": None}, status=202)

    async def _policy(self, request: web.Request) -> web.Response:
        app = request.match_info["app"]
        if app in self.bad_policy:  # as the API answers a stored policy that no longer parses
            return web.json_response({"error": {"message": f"policy_invalid: {self.bad_policy[app]}", "status": 500}},
                                     status=500)
        own = POLICY if app in self.progressive else None
        return web.json_response({"app": app, "policy": own, "effective": own, "source": "app" if own else "none"})

    async def _rules(self, _request: web.Request) -> web.Response:
        return web.json_response({"max_total_bytes": 1 << 20, "max_files": 32, "max_rank": 16,
                                  "required_files": ["adapter_config.json", "adapter_model.safetensors"]})

    async def _upload(self, request: web.Request) -> web.Response:
        """Keeps what the page sent (`uploads`: query, {file name: bytes}) and answers like the real route."""
        files: dict[str, bytes] = {}
        async for part in await request.multipart():
            files[part.filename] = await part.read()
        self.uploads.append((request.path_qs, files))
        app = request.match_info["app"]
        record = records(app, 1, datetime.now(UTC))[0]
        self.records.setdefault(app, []).insert(0, record)
        return web.json_response({"id": record["id"], "app": app, "status_url": f"/api/deployments/{record['id']}"},
                                 status=202)

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._auth])
        app.add_routes([web.get("/api/dashboard", self._page), web.get("/api/dashboard/static/{name}", self._page),
                        web.get("/api/apps", self._apps), web.get("/api/apps/{app}", self._app),
                        web.get("/api/apps/{app}/deployments", self._deployments),
                        web.get("/api/deployments/{id}", self._deployment),
                        web.get("/api/uploads/rules", self._rules), web.post("/api/apps/{app}/uploads", self._upload),
                        web.post("/api/deployments/{id}/{action}", self._decide),
                        web.get("/api/apps/{app}/policy", self._policy)])
        return app


@contextmanager
def serving(stub: StubApi) -> Iterator[StubApi]:
    """Serve `stub` on a free loopback port from a thread with its own event loop (Playwright's sync API holds
    this thread's); `stub.url` is its origin."""
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(stub.app())
    ready = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", 0).start())
        stub.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        ready.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        loop.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    if not ready.wait(10):
        raise RuntimeError("the stand-in API did not start")
    try:
        yield stub
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
