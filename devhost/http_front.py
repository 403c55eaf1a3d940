"""aiohttp front: the app's HTTP-triggered functions under ``/api/`` and the Durable HTTP API.

The Durable endpoints follow the extension's webhook API that the SDK's ``DurableOrchestrationClient``
calls through ``rpcBaseUrl`` (``/runtime/webhooks/durabletask/``): start (``POST orchestrators/{name}
[/{id}]``), status (``GET instances/{id}``), list (``GET instances/`` with filters and a continuation
token), terminate, raise event and purge, and the entity routes (``GET entities/{name}/{key}`` state,
``GET entities/{name}`` list, ``POST``/``DELETE entities/{name}/{key}`` signal), with the same status
codes and JSON fields. Functions with a
``durable_client_input`` binding receive the binding JSON the host would pass (task hub, creation and
management URLs, ``rpcBaseUrl``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import inspect
import json
import os
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import azure.functions as func
from aiohttp import web

from devhost import history as h
from devhost.functions import FunctionEntry, FunctionIndex, FunctionNotFoundError, call_kwargs
from devhost.store import TERMINAL_STATUSES, InstanceQuery, InstanceRecord, Store
from devhost.worker import (
    InstanceExistsError,
    InstanceGoneError,
    InstanceNotFoundError,
    Worker,
    scheduler_id,
)

WEBHOOK_PATH = "/runtime/webhooks/durabletask"
_CONTINUATION_HEADER = "x-ms-continuation-token"
PAGE_SIZE = 100  # OrchestrationStatusQueryCondition.PageSize default in the extension
_ERROR_MESSAGE = "Something went wrong while processing your request"
_EVENT_NAMES = {
    0: "ExecutionStarted", 1: "ExecutionCompleted", 2: "ExecutionFailed", 3: "ExecutionTerminated",
    4: "TaskScheduled", 5: "TaskCompleted", 6: "TaskFailed", 7: "SubOrchestrationInstanceCreated",
    8: "SubOrchestrationInstanceCompleted", 9: "SubOrchestrationInstanceFailed", 10: "TimerCreated",
    11: "TimerFired", 12: "OrchestratorStarted", 13: "OrchestratorCompleted", 15: "EventRaised",
}


@dataclass
class DurableEndpoints:
    """Builds the client binding JSON and management URLs for a given origin."""

    task_hub: str
    base_url: str = ""  # loopback origin of this host, set once the port is bound

    def _query(self) -> str:
        return f"taskHub={quote(self.task_hub)}&connection=Storage"

    def management_urls(self, origin: str, instance_id: str) -> dict[str, str]:
        """The ``statusQueryGetUri``/``sendEventPostUri``/… payload for ``instance_id``."""
        base = f"{origin}{WEBHOOK_PATH}/instances/{instance_id}"
        q = self._query()
        return {
            "id": instance_id,
            "statusQueryGetUri": f"{base}?{q}",
            "sendEventPostUri": f"{base}/raiseEvent/{{eventName}}?{q}",
            "terminatePostUri": f"{base}/terminate?reason={{text}}&{q}",
            "rewindPostUri": f"{base}/rewind?reason={{text}}&{q}",
            "purgeHistoryDeleteUri": f"{base}?{q}",
            "restartPostUri": f"{base}/restart?{q}",
            "suspendPostUri": f"{base}/suspend?reason={{text}}&{q}",
            "resumePostUri": f"{base}/resume?reason={{text}}&{q}",
        }

    def client_binding(self, origin: str | None = None) -> str:
        """The ``durableClient`` binding JSON as the Functions host passes it to Python."""
        origin = origin or self.base_url
        q = self._query()
        return json.dumps({
            "taskHubName": self.task_hub,
            "creationUrls": {
                "createNewInstancePostUri": f"{origin}{WEBHOOK_PATH}/orchestrators/{{functionName}}"
                                            f"[/{{instanceId}}]?{q}",
                "createAndWaitOnNewInstancePostUri": f"{origin}{WEBHOOK_PATH}/orchestrators/{{functionName}}"
                                                     f"[/{{instanceId}}]?timeout={{timeoutInSeconds}}"
                                                     f"&pollingInterval={{intervalInSeconds}}&{q}",
            },
            "managementUrls": self.management_urls(origin, "INSTANCEID"),
            "baseUrl": f"{origin}{WEBHOOK_PATH}",
            "requiredQueryStringParameters": q,
            "rpcBaseUrl": f"{self.base_url}{WEBHOOK_PATH}/",
            "httpBaseUrl": "",
            "maxGrpcMessageSizeInBytes": 0,
            "grpcHttpClientTimeout": "00:01:40",
        })


def status_json(rec: InstanceRecord, *, show_input: bool = True, history: list[dict[str, Any]] | None = None,
                show_history_output: bool = False) -> dict[str, Any]:
    """An instance in the Durable HTTP API's status shape."""
    body: dict[str, Any] = {
        "name": rec.name,
        "instanceId": rec.id,
        "runtimeStatus": rec.status,
        "input": _loads(rec.input_json) if show_input else None,
        "customStatus": _loads(rec.custom_status_json),
        "output": _loads(rec.output_json),
        "createdTime": _api_time(rec.created),
        "lastUpdatedTime": _api_time(rec.updated),
    }
    if history is not None:
        body["historyEvents"] = [_history_json(e, show_history_output) for e in history
                                 if e["EventType"] not in (h.ORCHESTRATOR_STARTED, h.ORCHESTRATOR_COMPLETED)]
    return body


def _loads(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def _api_time(stored: str) -> str:
    return h.parse_time(stored).strftime("%Y-%m-%dT%H:%M:%SZ")


def _history_json(event: dict[str, Any], show_output: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"EventType": _EVENT_NAMES.get(event["EventType"], str(event["EventType"])),
                           "Timestamp": event["Timestamp"]}
    for key in ("EventId", "Name", "TaskScheduledId", "TimerId", "FireAt", "Reason", "Details",
                "InstanceId", "OrchestrationStatus"):
        if key in event and event[key] is not None:
            out[key] = event[key]
    if show_output:
        for key in ("Input", "Result"):
            if event.get(key) is not None:
                out[key] = _loads(event[key])
    return out


def _input_from_body(text: str) -> str | None:
    """Orchestration input JSON from a request body (the SDK posts the input JSON as a JSON string)."""
    if not text.strip():
        return None
    try:
        value = json.loads(text)
    except ValueError:
        message = "Only application/json request content is supported"
        raise web.HTTPBadRequest(text=json.dumps({"Message": message, "ExceptionMessage": message}),
                                 content_type="application/json") from None
    if isinstance(value, str):
        try:
            json.loads(value)
            return value
        except ValueError:
            return text
    return text


def _flag(request: web.Request, name: str, default: bool) -> bool:
    value = request.query.get(name)
    return default if value is None else value.lower() in ("true", "1", "yes")


class DurableApi:
    """Handlers of the Durable HTTP API, backed by a :class:`Worker` and its :class:`Store`."""

    def __init__(self, worker: Worker, store: Store, endpoints: DurableEndpoints) -> None:
        self.worker = worker
        self.store = store
        self.endpoints = endpoints

    def routes(self) -> list[web.RouteDef]:
        """The route table, mounted under :data:`WEBHOOK_PATH`."""
        p = WEBHOOK_PATH
        return [
            web.post(p + "/orchestrators/{name}", self.start),
            web.post(p + "/orchestrators/{name}/{instance_id}", self.start),
            web.get(p + "/instances", self.list_instances),
            web.get(p + "/instances/", self.list_instances),
            web.delete(p + "/instances", self.purge_by),
            web.delete(p + "/instances/", self.purge_by),
            web.get(p + "/instances/{instance_id}", self.get_status),
            web.delete(p + "/instances/{instance_id}", self.purge),
            web.post(p + "/instances/{instance_id}/terminate", self.terminate),
            web.post(p + "/instances/{instance_id}/raiseEvent/{event}", self.raise_event),
            web.get(p + "/entities/{entity_name}", self.list_entities),
            web.get(p + "/entities/{entity_name}/", self.list_entities),
            web.get(p + "/entities/{entity_name}/{entity_key}", self.get_entity),
            web.post(p + "/entities/{entity_name}/{entity_key}", self.signal_entity),
            web.delete(p + "/entities/{entity_name}/{entity_key}", self.signal_entity),
        ]

    async def get_entity(self, request: web.Request) -> web.Response:
        """An entity's state: 200 with the state JSON, 404 when it does not exist (``$`` is the empty key)."""
        key = request.match_info["entity_key"]
        rec = self.store.entity(scheduler_id(request.match_info["entity_name"], "" if key == "$" else key))
        if rec is None or not rec.exists:
            return web.Response(status=404)
        return web.Response(status=200, text=rec.state if rec.state is not None else "null",
                            content_type="application/json")

    async def signal_entity(self, request: web.Request) -> web.Response:
        """Signal an operation (``?op=``; ``DELETE`` signals ``delete``): 202, 400 unknown entity, bad key or JSON.

        As ``HandlePostEntityOperationRequestAsync``: a JSON body (``application/json``) becomes the
        input as compact JSON; any other body is the input as a JSON string; no body, no input.
        """
        name, key = request.match_info["entity_name"], request.match_info["entity_key"]
        operation = "delete" if request.method == "DELETE" else request.query.get("op", "")
        body = await request.text()
        input_json: str | None = None
        if body:
            if request.content_type.lower() == "application/json":
                try:
                    input_json = json.dumps(json.loads(body), separators=(",", ":"))
                except ValueError as exc:
                    return web.json_response({"Message": f"Could not parse JSON content: {exc}"}, status=400)
            else:
                input_json = json.dumps(body)
        if _INVALID_ID_CHARS.search(key):
            return web.json_response(
                {"Message": "Entity keys must not contain /, \\, #, ?, or control characters."}, status=400)
        try:
            self.worker.signal_entity(name, key, operation, input_json)
        except FunctionNotFoundError as exc:
            return web.json_response({"Message": str(exc)}, status=400)
        return web.Response(status=202)

    async def list_entities(self, request: web.Request) -> web.Response:
        """Entities of one name, paged like instances (``top`` default 100, ``fetchState`` default false)."""
        top = request.query.get("top")
        page_size = int(top) if top and top.isdigit() and int(top) > 0 else PAGE_SIZE
        token = request.headers.get(_CONTINUATION_HEADER) or None
        after = None
        if token:
            try:
                after = base64.urlsafe_b64decode(token.encode()).decode()
            except (ValueError, binascii.Error):
                return web.json_response({"Message": "The continuation token is not valid"}, status=400)
        records = self.store.query_entities(
            request.match_info["entity_name"].lower(), after=after, limit=page_size + 1,
            last_op_from=_stored_time(request.query.get("lastOperationTimeFrom")),
            last_op_to=_stored_time(request.query.get("lastOperationTimeTo")))
        page, more = records[:page_size], len(records) > page_size
        fetch_state = _flag(request, "fetchState", False)
        body = [{"entityId": {"name": r.name, "key": r.key}, "lastOperationTime": r.last_op,
                 "state": _loads(r.state) if fetch_state else None} for r in page]
        next_token = base64.urlsafe_b64encode(page[-1].id.encode()).decode() if more and page else ""
        return web.json_response(body, headers={_CONTINUATION_HEADER: next_token})

    async def start(self, request: web.Request) -> web.Response:
        """Start an orchestration: 202 with management URLs, 400 unknown orchestrator or invalid id, 500 id in use.

        As in the extension's ``HttpApiHandler``: ``StartNewAsync`` raises ``ArgumentException`` for an
        unknown function or an id starting with ``@`` (answered 400), and DTFx raises
        ``OrchestrationAlreadyExistsException`` when an instance with that id is Pending/Running/
        ContinuedAsNew, which only the catch-all handler catches (500).
        """
        input_json = _input_from_body(await request.text())
        requested_id = request.match_info.get("instance_id")
        try:
            if requested_id is not None:
                _check_instance_id(requested_id)
            instance_id = self.worker.start_new(request.match_info["name"], requested_id, input_json)
        except (FunctionNotFoundError, ValueError) as exc:
            return web.json_response({"Message": "One or more of the arguments submitted is incorrect",
                                      "ExceptionMessage": str(exc),
                                      "ExceptionType": "System.ArgumentException"}, status=400)
        except InstanceExistsError as exc:
            return web.json_response({"Message": _ERROR_MESSAGE, "ExceptionMessage": str(exc),
                                      "ExceptionType": "DurableTask.Core.Exceptions.OrchestrationAlreadyExistsException"},
                                     status=500)
        payload = self.endpoints.management_urls(_origin(request), instance_id)
        return web.json_response(payload, status=202, headers={"Location": payload["statusQueryGetUri"]})

    async def get_status(self, request: web.Request) -> web.Response:
        """Instance status: 200 done, 202 running (with Location), 404 unknown (empty body)."""
        instance_id = request.match_info["instance_id"]
        rec = self.store.get(instance_id)
        if rec is None:
            return web.Response(status=404)
        show_history = _flag(request, "showHistory", False)
        body = status_json(rec, show_input=_flag(request, "showInput", True),
                           history=self.store.history(instance_id) if show_history else None,
                           show_history_output=_flag(request, "showHistoryOutput", False))
        if rec.status not in TERMINAL_STATUSES:  # the extension: Location = the request URI, retry in 5 s
            return web.json_response(body, status=202, headers={"Location": str(request.url), "Retry-After": "5"})
        failed = rec.status == "Failed" and _flag(request, "returnInternalServerErrorOnFailure", False)
        return web.json_response(body, status=500 if failed else 200)

    def _query(self, request: web.Request, *, paged: bool) -> InstanceQuery:
        statuses = [s for v in request.query.getall("runtimeStatus", []) for s in v.split(",") if s]
        top = request.query.get("top")
        page_size = int(top) if top and top.isdigit() and int(top) > 0 else PAGE_SIZE
        return InstanceQuery(
            statuses=statuses,
            created_from=_stored_time(request.query.get("createdTimeFrom")),
            created_to=_stored_time(request.query.get("createdTimeTo")),
            prefix=request.query.get("instanceIdPrefix"),
            top=page_size + 1 if paged else None,  # one more row tells whether another page follows
            after=decode_continuation(request.headers.get(_CONTINUATION_HEADER)) if paged else None,
        )

    async def list_instances(self, request: web.Request) -> web.Response:
        """One page of the instances matching the filters (``top``, default 100), as the extension answers.

        The ``x-ms-continuation-token`` request header continues after the previous page; the response
        always carries the header, empty on the last page (the extension adds a null token there).
        ``showInput`` defaults to true, as in ``OrchestrationStatusQueryCondition``.
        """
        q = self._query(request, paged=True)
        assert q.top is not None
        records = self.store.query(q)
        page, more = records[:q.top - 1], len(records) >= q.top
        token = encode_continuation(page[-1]) if more and page else ""
        show_input = _flag(request, "showInput", True)
        return web.json_response([status_json(r, show_input=show_input) for r in page],
                                 headers={_CONTINUATION_HEADER: token})

    async def terminate(self, request: web.Request) -> web.Response:
        """Terminate: 202 accepted, 404 unknown, 410 already finished."""
        return self._call(lambda: self.worker.terminate(request.match_info["instance_id"],
                                                        request.query.get("reason", "")))

    async def raise_event(self, request: web.Request) -> web.Response:
        """Raise an external event: 202 accepted, 400 not JSON, 404 unknown, 410 finished."""
        input_json = _input_from_body(await request.text())
        return self._call(lambda: self.worker.raise_event(request.match_info["instance_id"],
                                                          request.match_info["event"], input_json))

    def _call(self, operation: Callable[[], None]) -> web.Response:
        try:
            operation()
        except InstanceNotFoundError as exc:
            return web.json_response({"Message": str(exc)}, status=404)
        except InstanceGoneError as exc:
            return web.json_response({"Message": str(exc)}, status=410)
        return web.Response(status=202)

    async def purge(self, request: web.Request) -> web.Response:
        """Purge a finished instance: 200 with the count, 404 when unknown or still running."""
        instance_id = request.match_info["instance_id"]
        if self.worker.is_running(instance_id):
            return web.Response(status=404)
        deleted = self.store.purge([instance_id])
        if not deleted:
            return web.Response(status=404)
        return web.json_response({"instancesDeleted": deleted})

    async def purge_by(self, request: web.Request) -> web.Response:
        """Purge finished instances matching the filters."""
        q = self._query(request, paged=False)
        ids = [r.id for r in self.store.query(q) if r.status in TERMINAL_STATUSES]
        deleted = self.store.purge(ids)
        if not deleted:
            return web.Response(status=404)
        return web.json_response({"instancesDeleted": deleted})


def encode_continuation(rec: InstanceRecord) -> str:
    """An opaque continuation token: the (created, id) keyset position after ``rec``."""
    return base64.urlsafe_b64encode(json.dumps([rec.created, rec.id]).encode()).decode()


def decode_continuation(token: str | None) -> tuple[str, str] | None:
    """Inverse of :func:`encode_continuation`; no token (or an empty one) starts at the beginning."""
    if not token:
        return None
    try:
        created, instance_id = json.loads(base64.urlsafe_b64decode(token.encode()))
        return str(created), str(instance_id)
    except (ValueError, TypeError, binascii.Error):
        message = "The continuation token is not valid"
        raise web.HTTPBadRequest(text=json.dumps({"Message": message}), content_type="application/json") from None


_INVALID_ID_CHARS = re.compile(r"[/\\#?\x00-\x1f\x7f-\x9f]")
MAX_INSTANCE_ID_LENGTH = 256


def _check_instance_id(instance_id: str) -> None:
    """The extension's ``StartNewAsync`` checks on a caller-chosen instance id (ArgumentException)."""
    if instance_id.startswith("@"):
        raise ValueError("Orchestration instance ids must not start with @.")
    if _INVALID_ID_CHARS.search(instance_id):
        raise ValueError("Orchestration instance ids must not contain /, \\, #, ?, or control characters.")
    if len(instance_id) > MAX_INSTANCE_ID_LENGTH:
        raise ValueError(f"Instance ID lengths must not exceed {MAX_INSTANCE_ID_LENGTH} characters.")


def _stored_time(value: str | None) -> str | None:
    return h.format_time(h.parse_time(value)) if value else None


def _origin(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"


def route_paths(route: str, prefix: str = "api") -> list[str]:
    """aiohttp paths for a Functions route template (``{id:int}``, ``{id?}``, ``{*rest}``)."""
    route = route.strip("/")
    optional = re.findall(r"\{(\w+)\?\}", route)
    pattern = re.sub(r"\{(\*?\w+):[^}]*\}", r"{\1}", route)
    pattern = re.sub(r"\{\*(\w+)\}", r"{\1:.*}", pattern)
    pattern = re.sub(r"\{(\w+)\?\}", r"{\1}", pattern)
    base = f"/{prefix.strip('/')}/" if prefix.strip("/") else "/"
    paths = [base + pattern]
    for name in optional:
        paths.append(base + re.sub(r"/?\{" + name + r"\}", "", pattern).strip("/"))
    return paths


def _methods(entry: FunctionEntry) -> list[str]:
    methods = getattr(entry.trigger, "methods", None)
    if not methods:
        return ["*"]
    return [str(getattr(m, "value", m)).upper() for m in methods]


def to_aiohttp_response(result: Any) -> web.Response:
    """Convert what an HTTP function returned into an aiohttp response."""
    if isinstance(result, func.HttpResponse):
        headers = {k: v for k, v in result.headers.items() if k.lower() != "content-type"}
        content_type = result.headers.get("Content-Type") or (
            f"{result.mimetype}; charset={result.charset}" if result.charset else result.mimetype)
        headers["Content-Type"] = content_type
        return web.Response(status=result.status_code, body=result.get_body(), headers=headers)
    if result is None:
        return web.Response(status=204)
    if isinstance(result, bytes | str):
        return web.Response(body=result if isinstance(result, bytes) else result.encode())
    return web.json_response(result)


def http_function_handler(entry: FunctionEntry, endpoints: DurableEndpoints
                          ) -> Callable[[web.Request], Awaitable[web.Response]]:
    """An aiohttp handler invoking ``entry`` with a ``func.HttpRequest``."""
    fn = entry.user_function
    is_async = inspect.iscoroutinefunction(fn)

    async def handler(request: web.Request) -> web.Response:
        req = func.HttpRequest(method=request.method, url=str(request.url), headers=dict(request.headers),
                               params=dict(request.query), route_params=dict(request.match_info),
                               body=await request.read())
        kwargs = call_kwargs(entry, req, endpoints.client_binding(_origin(request)) if entry.client_params else None)
        if is_async:
            result = await fn(**kwargs)
        else:
            result = await asyncio.get_running_loop().run_in_executor(None, functools.partial(fn, **kwargs))
        return to_aiohttp_response(result)

    return handler


def create_http_app(functions: FunctionIndex, worker: Worker, store: Store, endpoints: DurableEndpoints,
                    *, route_prefix: str = "api") -> web.Application:
    """The aiohttp application: app HTTP functions plus the Durable HTTP API. Request bodies are capped as the
    Functions host caps them (`FUNCTIONS_REQUEST_BODY_SIZE_LIMIT` bytes, 100 MB by default), not at aiohttp's 1 MiB."""
    app = web.Application(client_max_size=int(os.environ.get("FUNCTIONS_REQUEST_BODY_SIZE_LIMIT") or 100 << 20))
    routes = DurableApi(worker, store, endpoints).routes()
    for entry in functions.http:
        handler = http_function_handler(entry, endpoints)
        for path in route_paths(str(getattr(entry.trigger, "route", None) or entry.name), route_prefix):
            routes.extend(web.route(method, path, handler) for method in _methods(entry))
    app.add_routes(routes)
    app.on_cleanup.append(_close_sdk_session)
    return app


async def _close_sdk_session(_app: web.Application) -> None:
    """Close the SDK client's shared aiohttp session, which is bound to this event loop."""
    from azure.durable_functions.models.utils import http_utils

    await http_utils._close_session()
