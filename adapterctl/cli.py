"""`adapterctl` commands: deploy, status, apps, provision, restart, chat, config check.

Works against devhost and Azure with the same flags: `--url` (env ADAPTERCTL_URL) is the Functions app,
`--function-key` (env ADAPTERCTL_FUNCTION_KEY) its key; uploads go to the adapters container named by
`--storage-connection` (env ADAPTERS_STORAGE_CONNECTION) or `--account-url` (env ADAPTERS_ACCOUNT_URL, signed
in with DefaultAzureCredential). `--json` prints one JSON document for scripts. Exit status: 0 done,
1 the rollout failed or was rolled back (the reason is printed), 2 bad usage or input, 3 API unreachable / error.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from azure.core.exceptions import AzureError

from .api import ApiError, OrchestratorApi, stream_chat
from .follow import follow, succeeded

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_API = 0, 1, 2, 3


class Output:
    """Human lines to stdout as things happen, or one JSON document at the end (`--json`)."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json

    def line(self, text: str) -> None:
        if not self.as_json:
            print(text, flush=True)

    def result(self, data: Any, text: str | None = None) -> None:
        if self.as_json:
            print(json.dumps(data, indent=2, default=str))
        elif text is not None:
            print(text)


def _api(args: argparse.Namespace) -> OrchestratorApi:
    return OrchestratorApi(args.url, args.function_key, timeout=args.http_timeout)


def _stage_printer(out: Output):
    def show(entry: dict[str, Any]) -> None:
        out.line(f"  {entry['stage']:<13} {entry['at']}")
    return show


def _finish(out: Output, record: dict[str, Any]) -> int:
    ok = succeeded(record)
    summary = f"{record.get('id')}: {record.get('stage') or record.get('state') or record.get('runtime_status')}"
    if not ok and record.get("reason"):
        summary += f" — {record['reason']}"
    out.result(record, summary)
    return EXIT_OK if ok else EXIT_FAILED


def cmd_deploy(args: argparse.Namespace, out: Output) -> int:
    from activities.adapter_store import AdapterStore, BlobStoreSettings
    from activities.validation import AdapterValidationError, ValidationRules, validate_adapter_folder

    folder = Path(args.path)
    adapter = args.name or folder.name
    api = _api(args)
    base_model = args.base_model
    if base_model is None:  # the app's served base model, when it has one
        manifest = api.app(args.app).get("manifest") or {}
        base_model = manifest.get("base_model")
    try:
        if base_model is None:  # a new app: the orchestrator checks the base model; here, the rest
            base_model = _declared_base_model(folder)
            out.line(f"note: {args.app} serves nothing yet; the base model is checked by the orchestrator")
        rules = ValidationRules(base_model=base_model, max_rank=args.max_rank)
        report = validate_adapter_folder(folder, rules)
    except (AdapterValidationError, OSError, ValueError) as exc:
        out.result({"ok": False, "stage": "validating", "reason": str(exc)}, f"invalid adapter: {exc}")
        return EXIT_USAGE
    out.line(f"{adapter}: valid (sha256 {report.sha256[:12]}, rank {report.rank}); uploading to app {args.app}")
    store = AdapterStore(BlobStoreSettings(connection_string=args.storage_connection, account_url=args.account_url))
    uploaded = store.upload_adapter_folder(folder, args.app, adapter)
    if args.no_wait:
        out.result({"ok": True, "id": uploaded.deployment_id, "app": args.app, "adapter": adapter,
                    "sha256": report.sha256}, f"uploaded; deployment {uploaded.deployment_id}")
        return EXIT_OK
    out.line(f"deployment {uploaded.deployment_id}")
    return _finish(out, follow(api, uploaded.deployment_id, args.timeout, _stage_printer(out)))


def _declared_base_model(folder: Path) -> str:
    config = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    return str(config.get("base_model_name_or_path") or "unknown")


def cmd_status(args: argparse.Namespace, out: Output) -> int:
    api = _api(args)
    if args.id:
        record = api.deployment(args.id)
        out.result(record, json.dumps(record, indent=2))
        return EXIT_OK
    if not args.app:
        raise ValueError("give a deployment ID or --app APP")
    records = api.deployments(args.app)
    rows = [f"{r['id']:<40} {r.get('adapter') or '-':<16} {r.get('stage') or '-':<12} {r.get('reason') or ''}"
            for r in records]
    out.result(records, "\n".join(rows) or f"no rollouts for {args.app}")
    return EXIT_OK


def cmd_apps(args: argparse.Namespace, out: Output) -> int:
    api = _api(args)
    details = [api.app(name) for name in api.apps()]
    rows = []
    for d in details:
        served = d.get("served") or {}
        rows.append(f"{d['app']:<20} {served.get('version') or '(base)':<32} {d.get('endpoint') or '-'}")
    out.result(details, "\n".join(rows) or "no apps")
    return EXIT_OK


def _start_and_follow(args: argparse.Namespace, out: Output, start: str) -> int:
    api = _api(args)
    started = getattr(api, start)(args.app)
    out.line(f"{start} {started['id']}")
    if args.no_wait:
        out.result(started)
        return EXIT_OK
    return _finish(out, follow(api, started["id"], args.timeout, _stage_printer(out)))


def cmd_provision(args: argparse.Namespace, out: Output) -> int:
    return _start_and_follow(args, out, "provision")


def cmd_restart(args: argparse.Namespace, out: Output) -> int:
    return _start_and_follow(args, out, "restart")


def cmd_chat(args: argparse.Namespace, out: Output) -> int:
    info = _api(args).app(args.app)
    endpoint = args.endpoint or info.get("endpoint")
    if not endpoint:
        raise ApiError(f"app {args.app!r} has no endpoint yet")
    model = args.model or (info.get("manifest") or {}).get("alias") or "live"
    pieces = []
    for piece in stream_chat(endpoint, args.api_key, model, args.message,
                             temperature=args.temperature, max_tokens=args.max_tokens):
        pieces.append(piece)
        if not out.as_json:
            print(piece, end="", flush=True)
    out.line("")
    out.result({"app": args.app, "model": model, "reply": "".join(pieces)})
    return EXIT_OK


def cmd_config_check(args: argparse.Namespace, out: Output) -> int:
    from activities.config import check_configuration

    problems = check_configuration(Path(args.infra), os.environ)
    out.result({"ok": not problems, "problems": problems},
               "\n".join(f"- {p}" for p in problems) if problems else "configuration OK")
    return EXIT_OK if not problems else EXIT_FAILED


def build_parser() -> argparse.ArgumentParser:
    env = os.environ.get
    parser = argparse.ArgumentParser(prog="adapterctl", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=env("ADAPTERCTL_URL", "http://127.0.0.1:7071"), help="Functions app URL")
    parser.add_argument("--function-key", default=env("ADAPTERCTL_FUNCTION_KEY"), help="function key")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds to follow a rollout")
    parser.add_argument("--http-timeout", type=float, default=30.0, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("deploy", help="validate, upload and follow an adapter folder's rollout")
    p.add_argument("path")
    p.add_argument("--app", required=True)
    p.add_argument("--name", help="adapter name (default: the folder's name)")
    p.add_argument("--base-model", help="expected base model (default: the app's)")
    p.add_argument("--max-rank", type=int, default=int(env("MAX_LORA_RANK", "64")), help="largest LoRA rank")
    p.add_argument("--storage-connection", default=env("ADAPTERS_STORAGE_CONNECTION"))
    p.add_argument("--account-url", default=env("ADAPTERS_ACCOUNT_URL"))
    p.add_argument("--no-wait", action="store_true")
    p.set_defaults(func=cmd_deploy)

    p = sub.add_parser("status", help="one deployment by ID, or an app's recent rollouts")
    p.add_argument("id", nargs="?")
    p.add_argument("--app")
    p.set_defaults(func=cmd_status)

    sub.add_parser("apps", help="apps with their served adapter and endpoint").set_defaults(func=cmd_apps)

    for name, func, text in (("provision", cmd_provision, "create or update the app's resources"),
                             ("restart", cmd_restart, "new revision / replica restart")):
        p = sub.add_parser(name, help=text)
        p.add_argument("app")
        p.add_argument("--no-wait", action="store_true")
        p.set_defaults(func=func)

    p = sub.add_parser("chat", help="stream a reply from the app's endpoint")
    p.add_argument("app")
    p.add_argument("message")
    p.add_argument("--model", help="adapter, alias or base name (default: the live alias)")
    p.add_argument("--endpoint", help="override the app's endpoint")
    p.add_argument("--api-key", default=env("INFERENCE_API_KEY"))
    p.add_argument("--temperature", type=float, help="sampling temperature (0: greedy)")
    p.add_argument("--max-tokens", type=int)
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("config", help="configuration commands")
    config_sub = p.add_subparsers(dest="config_command", required=True)
    c = config_sub.add_parser("check", help="validate inference.config.json, inference.parameters.json, settings")
    c.add_argument("--infra", default="infra", help="folder with inference.config.json and provision/")
    c.set_defaults(func=cmd_config_check)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Output(args.json)
    try:
        return args.func(args, out)
    except ApiError as exc:
        out.result({"ok": False, "reason": str(exc), "status": exc.status}, f"error: {exc}")
        return EXIT_API
    except AzureError as exc:  # the upload store: unreachable, refused credentials, ...
        out.result({"ok": False, "reason": f"storage: {type(exc).__name__}: {exc}"}, f"storage error: {exc}")
        return EXIT_API
    except (ValueError, TimeoutError) as exc:
        out.result({"ok": False, "reason": str(exc)}, f"error: {exc}")
        return EXIT_USAGE if isinstance(exc, ValueError) else EXIT_FAILED
