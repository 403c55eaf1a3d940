"""Deploying from the browser: `POST /api/apps/{app}/uploads?adapter=NAME[&create=1]` takes an adapter's files and
uploads them through the same path as `adapterctl deploy` (`AdapterStore.upload_adapter_folder`: content files,
then the `_COMPLETE` marker last), so the blob trigger, the deployment record and the rollout are the usual ones.

Body: `multipart/form-data`, one file part per adapter file, each part's `filename` the file's name relative to the
adapter folder (`adapter_config.json`, `adapter_model.safetensors`, `sub/x.json`); the field name is not used (the
dashboard sends `file`). No zip. Hidden and `_`-prefixed names are skipped as `folder_files` skips them; any name
with an absolute path, a `..` / `.` / empty segment, a backslash or a control character is refused (400).

Checks, in this order, each before anything is uploaded:
- app and adapter names (`check_name`, 400);
- size (413): the request's `Content-Length` (before the body is parsed), then the body, then the files' total,
  against `MAX_ADAPTER_MB` (the adapter's files) plus `MULTIPART_ALLOWANCE` for the form's framing;
- the form itself (400: not multipart, no boundary, a part without a file name, a name twice, too many parts);
- the app (`adapterctl deploy`'s rule, `lifecycle.check_app_known`): 409 while it is being deleted; 404 when it
  does not exist unless `create=1` (a typo would otherwise start a second app and a second server);
- validation (400 with the rule's `code` and `reason`; 413 for `too_large`): `validate_adapter_folder` on a
  temporary folder with the orchestrator's own rules (`Services.rules()`: `BASE_MODEL_NAME`, `MAX_LORA_RANK`,
  `ALLOWED_TARGET_MODULES`, `MAX_ADAPTER_MB`), so an adapter refused here is one the rollout would refuse.

Then it uploads, records the upload and wakes the app's reconciler (as the blob trigger does; that trigger
still fires and finds both done), and answers 202 `{id, app, adapter, sha256, rank, status_url}` with `Location`.

`GET /api/uploads/rules` answers the limits the browser checks before sending (`max_total_bytes`, `max_files`,
`max_rank`, `base_model`, `allowed_target_modules`, the file names required). Both routes are at function level.

The Functions host buffers a request body before the worker sees it (its own cap: `FUNCTIONS_REQUEST_BODY_SIZE_LIMIT`,
100 MB by default in Azure; devhost's aiohttp front: 1 MiB unless raised), so `Content-Length` is checked first
and the body is never copied before that check passes. Nothing of the request's headers is logged.
"""

from __future__ import annotations

import asyncio
import email.message
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote

import azure.durable_functions as df
import azure.functions as func

from activities.services import services
from activities.validation import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    AdapterValidationError,
    check_file_name,
    check_name,
    is_content_name,
    unsafe_path_problem,
    validate_adapter_folder,
)

from .http_util import BadRequest, answers_bad_requests, app_name, error_response, json_response

bp = df.Blueprint()
log = logging.getLogger(__name__)

#: Bytes allowed on top of the adapter's files for the form's boundaries and part headers.
MULTIPART_ALLOWANCE = 256 << 10
#: At most this many parts in one form (validation allows fewer files; this bounds the parsing).
MAX_PARTS = 256
_TRUE = {"1", "true", "yes"}


class TooLarge(BadRequest):
    def __init__(self, message: str) -> None:
        super().__init__(message, 413)


class InvalidAdapter(BadRequest):
    """The adapter breaks a validation rule: 400 (413 for `too_large`) with the rule's code and reason."""

    def __init__(self, exc: AdapterValidationError) -> None:
        super().__init__(f"invalid adapter: {exc.code}: {exc.reason}", 413 if exc.code == "too_large" else 400)
        self.code = exc.code
        self.reason = exc.reason


@dataclass(frozen=True)
class Part:
    name: str  # the file's relative name (the part's filename)
    data: memoryview


# -- the form -----------------------------------------------------------------------------------------------------
def _header_params(header: str, value: str) -> email.message.Message:
    message = email.message.Message()
    message[header] = value
    return message


def check_upload_name(name: str) -> str:
    """A part's file name: relative, no `..` / `.` / empty segment, backslash or control character (400); content
    names must also pass `check_file_name`. Hidden and `_`-prefixed names pass here and are skipped later."""
    if unsafe_path_problem(name):
        raise BadRequest(f"unsafe file name {name!r}: give names relative to the adapter folder, without '..'")
    if is_content_name(name):
        try:
            check_file_name(name)
        except AdapterValidationError as exc:
            raise InvalidAdapter(exc) from exc
    return name


def parse_form(content_type: str, body: bytes) -> list[Part]:
    """The file parts of a `multipart/form-data` body, by relative name (content is a view into `body`)."""
    header = _header_params("content-type", content_type or "")
    if header.get_content_type() != "multipart/form-data":
        raise BadRequest("the body must be multipart/form-data with one file part per adapter file")
    boundary = header.get_param("boundary")
    if not isinstance(boundary, str) or not 1 <= len(boundary) <= 70:
        raise BadRequest("multipart/form-data without a valid boundary")
    view = memoryview(body)
    delimiter = b"\r\n--" + boundary.encode("latin-1")
    # positions of each delimiter in `body`; the first may open the body without its CRLF (position -2)
    start = -2 if body.startswith(delimiter[2:]) else body.find(delimiter)
    positions: list[int] = []
    while start != -1:
        positions.append(start)
        if len(positions) > MAX_PARTS + 1:
            raise BadRequest(f"more than {MAX_PARTS} parts")
        start = body.find(delimiter, start + len(delimiter))
    if not positions or not body.startswith(b"--", positions[-1] + len(delimiter)):
        raise BadRequest("the multipart body is cut short (no closing boundary)")
    parts: dict[str, Part] = {}
    for begin, end in zip(positions, positions[1:], strict=False):
        head_start = body.find(b"\r\n", begin + len(delimiter))
        head_end = body.find(b"\r\n\r\n", head_start) if head_start != -1 else -1
        if head_start == -1 or head_end == -1 or head_end > end:
            raise BadRequest("a multipart part has no header block")
        if body[begin + len(delimiter):head_start].strip(b" \t"):
            raise BadRequest("a multipart boundary line has more than the boundary on it")
        headers = body[head_start + 2:head_end].decode("utf-8", "replace").split("\r\n")
        disposition = next((h.split(":", 1)[1].strip() for h in headers
                            if h.lower().startswith("content-disposition:")), "")
        filename = _header_params("content-disposition", disposition).get_filename()
        if not filename:
            raise BadRequest("every part must be a file with a file name (its path relative to the adapter folder)")
        name = check_upload_name(filename)
        if name in parts:
            raise BadRequest(f"file {name!r} is given twice")
        parts[name] = Part(name, view[head_end + 4:end])  # no copy of the content
    return list(parts.values())


# -- the route ------------------------------------------------------------------------------------------------------
def _limit_bytes() -> int:
    return services().settings.max_adapter_mb << 20


def check_declared_size(req: func.HttpRequest, max_total_bytes: int) -> None:
    """413 from the request's `Content-Length` alone, before the body is parsed; 411 without it is not asked
    (the host has the body already): the body's own length is checked next."""
    declared = req.headers.get("content-length")
    limit = max_total_bytes + MULTIPART_ALLOWANCE
    if declared is not None:
        if not declared.strip().isdecimal():
            raise BadRequest("Content-Length is not a whole number")
        if int(declared) > limit:
            raise TooLarge(f"the upload is {int(declared)} bytes; adapters may be {max_total_bytes} bytes "
                           f"(MAX_ADAPTER_MB={max_total_bytes >> 20})")


def _flag(req: func.HttpRequest, name: str) -> bool:
    return (req.params.get(name) or "").strip().lower() in _TRUE


async def _check_app(app: str, create: bool) -> dict[str, Any] | None:
    """`adapterctl deploy`'s rule: 409 while the app is being deleted, 404 for an unknown app without `create`."""
    from .status_api import app_presence

    records = services().records
    deleting = await asyncio.to_thread(records.deletion, app)
    if deleting is not None:
        raise BadRequest(f"app {app!r} is being deleted ({deleting.get('id')}); deploy once that ended", 409)
    if not any((await app_presence(app)).values()) and not create:
        raise LookupError(f"there is no app {app!r}: check the name, or ask to create it with this deploy "
                          "(create=1)")
    return None


def _validate_and_upload(parts: list[Part], app: str, adapter: str) -> tuple[Any, Any]:
    """Write the files to a temporary folder, validate it with the orchestrator's rules, upload it."""
    svc = services()
    folder = Path(tempfile.mkdtemp(prefix="adapter-upload-"))
    try:
        for part in parts:
            if not is_content_name(part.name):
                continue
            path = folder.joinpath(*PurePosixPath(part.name).parts)
            if folder not in path.parents:  # check_upload_name already refused this; never write outside
                raise BadRequest(f"unsafe file name {part.name!r}")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(part.data)
        try:
            report = validate_adapter_folder(folder, svc.rules())
        except AdapterValidationError as exc:
            raise InvalidAdapter(exc) from exc
        return report, svc.store.upload_adapter_folder(folder, app, adapter)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@answers_bad_requests
async def handle_upload(req: func.HttpRequest, client: df.DurableOrchestrationClient | None) -> func.HttpResponse:
    """The route's work (the client wakes the reconciler; None: the blob trigger alone does)."""
    try:
        app = app_name(req)
        adapter = check_name("adapter", req.params.get("adapter") or "")
    except AdapterValidationError as exc:
        raise BadRequest(f"{exc.code}: {exc.reason} (give ?adapter=NAME)") from exc
    limit = _limit_bytes()
    check_declared_size(req, limit)
    body = req.get_body() or b""
    if len(body) > limit + MULTIPART_ALLOWANCE:
        raise TooLarge(f"the upload is {len(body)} bytes; adapters may be {limit} bytes")
    parts = parse_form(req.headers.get("content-type", ""), body)
    total = sum(len(p.data) for p in parts if is_content_name(p.name))
    if total > limit:
        raise TooLarge(f"the adapter's files are {total} bytes; adapters may be {limit} bytes "
                       f"(MAX_ADAPTER_MB={limit >> 20})")
    names = {p.name for p in parts}
    missing = [n for n in (CONFIG_NAME, WEIGHTS_NAME) if n not in names]
    if missing:
        code = "missing_config" if CONFIG_NAME in missing else "missing_weights"
        raise InvalidAdapter(AdapterValidationError(code, f"{', '.join(missing)} missing from the upload"))
    await _check_app(app, _flag(req, "create"))
    report, uploaded = await asyncio.to_thread(_validate_and_upload, parts, app, adapter)
    deployment_id = uploaded.deployment_id
    if client is not None:
        await _record_and_wake(client, app, adapter)
    url = f"{req.url.split('/api/', 1)[0]}/api/deployments/{quote(deployment_id, safe='')}"
    log.info("browser upload of %s to %s: %s", adapter, app, deployment_id)
    return json_response({"id": deployment_id, "app": app, "adapter": adapter, "sha256": report.sha256,
                          "rank": report.rank, "status_url": url}, 202, {"Location": url})


async def _record_and_wake(client: df.DurableOrchestrationClient, app: str, adapter: str) -> None:
    """What the blob trigger does, now: the record exists before the answer; a failure leaves it to the trigger."""
    from .starters import wake_reconciler

    try:
        await asyncio.to_thread(services().records.ingest, app)
        await wake_reconciler(client, app, f"browser upload {adapter}", newer=True)
    except Exception:  # noqa: BLE001 - the upload is done; the blob trigger and the heal timer finish this
        log.warning("upload of %s to %s: could not record it or wake the reconciler now; the blob trigger will",
                    adapter, app, exc_info=True)


@bp.route(route="apps/{app}/uploads", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
@bp.durable_client_input(client_name="client")
async def upload_adapter(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    """Validate an adapter's files and upload them as `app/adapter`: 202 with the deployment record's id."""
    return await handle_upload(req, client)


@bp.route(route="uploads/rules", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
def upload_rules(req: func.HttpRequest) -> func.HttpResponse:
    """The limits an upload is checked against, for the browser's own checks before it sends anything."""
    try:
        rules = services().rules()
    except Exception as exc:  # noqa: BLE001 - a settings problem: say so, never a 500
        return error_response(f"the upload rules are not configured: {type(exc).__name__}", 503)
    return json_response({"max_total_bytes": rules.max_total_bytes, "max_files": rules.max_files,
                          "max_rank": rules.max_rank, "base_model": rules.base_model,
                          "allowed_target_modules": list(rules.allowed_target_modules),
                          "required_files": [CONFIG_NAME, WEIGHTS_NAME]})
