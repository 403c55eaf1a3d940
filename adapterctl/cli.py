"""`adapterctl` commands: deploy, status, apps, provision, restart, chat, config check (and, from `lifecycle` and
`progressive`: apps delete, rollback, approve, reject, promote, abort, policy).

Works against devhost and Azure with the same flags: `--url` is the Functions app, `--function-key` its key;
uploads go to the adapters container named by `--storage-connection` or `--account-url` (signed in with
DefaultAzureCredential). `--json` prints one JSON document for scripts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NoReturn

from azure.core.exceptions import AzureError

from . import lifecycle, progressive
from .api import ApiError, stream_chat
from .connection import Defaults
from .lifecycle import check_app_known
from .output import (
    EXIT_API,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_PIPE,
    EXIT_USAGE,
    Output,
    UsageError,
    api_for,
    follow_and_show,
)
from .render import summary, table

DEFAULT_URL = "http://127.0.0.1:7071"

EPILOG = f"""\
where settings come from (the first that gives one wins):
  1. the flag
  2. the environment: ADAPTERCTL_URL, ADAPTERCTL_FUNCTION_KEY, ADAPTERS_STORAGE_CONNECTION or
     ADAPTERS_ACCOUNT_URL, INFERENCE_API_KEY, MAX_LORA_RANK
  3. a running `make demo` / `devhost up`: its connection file $DEVHOST_STATE_DIR/connection.env, else
     ./.devhost/up/connection.env (read as data; used only when the URL is the stack's own)
  4. built-in: --url {DEFAULT_URL}, --max-rank 64

exit status:
  0    done
  1    the rollout failed, was rolled back or superseded (the reason is printed), following it timed out,
       or `config check` found problems
  2    bad usage or input, as one line `adapterctl: <what is wrong>` (also a name, id or model the orchestrator
       or the chat endpoint refuses or does not know: their 400 and 404)
  3    the orchestrator, the chat endpoint or the upload storage is unreachable or answered with another error
  130  interrupted (Ctrl-C; a rollout already started goes on: `adapterctl status ID`)
  141  the output was closed early (e.g. `| head`); nothing more is printed
"""


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (`adapterctl: <what is wrong>`, exit 2) instead of usage and a second line."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {self.prog} --help)")


def cmd_deploy(args: argparse.Namespace, out: Output) -> int:
    from activities.adapter_store import BlobStoreSettings
    from activities.validation import AdapterValidationError, ValidationRules, validate_adapter_folder

    from .upload import upload_with_progress

    folder = Path(args.path)
    adapter = args.name or folder.name
    settings = _storage_settings(args)
    if not folder.is_dir():
        raise UsageError(f"no adapter folder {args.path!r}")

    def validated(base_model: str | None) -> Any:  # None: the folder's own declared base model
        try:
            rules = ValidationRules(base_model=base_model or _declared_base_model(folder), max_rank=args.max_rank)
            return validate_adapter_folder(folder, rules)
        except (AdapterValidationError, OSError, ValueError) as exc:
            raise UsageError(f"invalid adapter {str(folder)!r}: {exc}") from exc

    # the folder alone first (its declared base model), before the orchestrator is asked anything
    report = validated(args.base_model)
    info = check_app_known(api := api_for(args), args.app, args.create)
    served = ((info or {}).get("manifest") or {}).get("base_model")
    if served and not args.base_model:
        report = validated(served)  # then against the base model the app serves
    elif not (served or args.base_model):
        out.line(f"note: {args.app} serves nothing yet; the base model is checked by the orchestrator")
    out.line(f"{adapter}: valid (sha256 {report.sha256[:12]}, rank {report.rank}); uploading to app {args.app}")
    progress = out.progress()
    uploaded, files, total = upload_with_progress(
        BlobStoreSettings(**settings), folder, args.app, adapter, progress.upload if progress else lambda *_: None)
    if progress:
        progress.upload_done(files, total)
    if args.no_wait:
        out.result({"ok": True, "id": uploaded.deployment_id, "app": args.app, "adapter": adapter,
                    "sha256": report.sha256}, f"uploaded; deployment {uploaded.deployment_id}")
        return EXIT_OK
    out.line(f"deployment {uploaded.deployment_id}")
    return follow_and_show(api, out, uploaded.deployment_id, args.timeout)


def _storage_settings(args: argparse.Namespace) -> dict[str, str | None]:
    """The upload account's settings, checked before anything is uploaded."""
    if args.storage_connection:
        return {"connection_string": args.storage_connection}
    if not args.account_url:
        raise UsageError("no upload storage: give --storage-connection or --account-url (or the environment's "
                         "ADAPTERS_STORAGE_CONNECTION / ADAPTERS_ACCOUNT_URL), or start `make demo` here")
    if not args.account_url.startswith("https://"):
        raise UsageError("--account-url must start with https:// (for Azurite over http, give its connection "
                         "string with --storage-connection)")
    return {"account_url": args.account_url}


def _declared_base_model(folder: Path) -> str:
    config = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    if not isinstance(config, dict):
        raise ValueError("adapter_config.json must be a JSON object")
    return str(config.get("base_model_name_or_path") or "unknown")


def cmd_status(args: argparse.Namespace, out: Output) -> int:
    api = api_for(args)
    if args.id:
        record = api.deployment(args.id)
        out.result(record, summary(record))
        return EXIT_OK
    if not args.app:
        raise UsageError("status needs a deployment ID or --app APP")
    records = api.deployments(args.app)
    rows = [(r.get("id"), r.get("adapter"), r.get("stage"), (r.get("accepted_at") or "")[:19].replace("T", " "),
             r.get("reason")) for r in records]
    out.result(records, table(("ID", "ADAPTER", "STAGE", "ACCEPTED (UTC)", "REASON"), rows) if rows
               else f"no rollouts for {args.app}")
    return EXIT_OK


def cmd_apps(args: argparse.Namespace, out: Output) -> int:
    api = api_for(args)
    details = [_app_or_error(api, name) for name in api.apps()]
    rows = [(d["app"], (d.get("served") or {}).get("version") or "(base)", _endpoint(d)) for d in details]
    out.result(details, table(("APP", "SERVED VERSION", "ENDPOINT"), rows) if rows else "no apps")
    return EXIT_OK


def _app_or_error(api: Any, name: str) -> dict[str, Any]:
    """One app's status; an app the orchestrator cannot describe is a row saying why, not the end of the list."""
    try:
        return api.app(name)
    except ApiError as exc:
        if exc.status in (0, 401, 403):  # the orchestrator itself, not this app
            raise
        return {"app": name, "error": str(exc), "served": None, "endpoint": f"({exc})"}


def _endpoint(app: dict[str, Any]) -> str | None:
    """The app's endpoint, marked when the platform reports no server answering there."""
    endpoint = app.get("endpoint")
    return f"{endpoint} (not running)" if endpoint and app.get("running") is False else endpoint


def _start_and_follow(args: argparse.Namespace, out: Output, start: str) -> int:
    api = api_for(args)
    started = getattr(api, start)(args.app)
    out.line(f"{start} {started['id']}")
    if args.no_wait:
        out.result(started)
        return EXIT_OK
    return follow_and_show(api, out, started["id"], args.timeout)


def cmd_provision(args: argparse.Namespace, out: Output) -> int:
    return _start_and_follow(args, out, "provision")


def cmd_restart(args: argparse.Namespace, out: Output) -> int:
    return _start_and_follow(args, out, "restart")


def cmd_chat(args: argparse.Namespace, out: Output) -> int:
    if args.endpoint:
        _check_url("--endpoint", args.endpoint)
    info = api_for(args).app(args.app)
    endpoint = args.endpoint or info.get("endpoint")
    if not endpoint:
        raise ApiError(f"app {args.app!r} has no endpoint yet")
    model = args.model or (info.get("manifest") or {}).get("alias") or "live"
    pieces = []
    try:
        for piece in stream_chat(endpoint, args.api_key, model, args.message,
                                 temperature=args.temperature, max_tokens=args.max_tokens):
            pieces.append(piece)
            if not out.as_json:
                print(piece, end="", file=out.stream, flush=True)
    except ApiError as exc:
        if exc.status == 404:  # OpenAI's model_not_found: the --model asked for (bad input)
            raise UsageError(f"{exc} (the app serves its adapters by name, the alias and the base model)") from exc
        raise
    out.line("")
    out.result({"app": args.app, "model": model, "reply": "".join(pieces)})
    return EXIT_OK


def cmd_config_check(args: argparse.Namespace, out: Output) -> int:
    from activities.config import check_configuration

    env: Mapping[str, str] = os.environ
    if args.settings:
        env = {**os.environ, **_settings_values(Path(args.settings))}
    problems = check_configuration(Path(args.infra), env)
    hint = "" if args.settings else ("\n(app settings were read from the environment; --settings FILE checks a "
                                     "Functions local.settings.json, e.g. local.settings.example.json)")
    out.result({"ok": not problems, "problems": problems},
               "\n".join(f"- {p}" for p in problems) + hint if problems else "configuration OK")
    return EXIT_OK if not problems else EXIT_FAILED


def _settings_values(path: Path) -> dict[str, str]:
    """The app settings of a Functions `local.settings.json` (its "Values"); UsageError when it is not one."""
    try:
        values = json.loads(path.read_text(encoding="utf-8")).get("Values")
    except (OSError, ValueError, AttributeError) as exc:
        raise UsageError(f"--settings {str(path)!r} is not a readable local.settings.json: {exc}") from exc
    if not isinstance(values, dict) or not all(isinstance(v, str) for v in values.values()):
        raise UsageError(f"--settings {str(path)!r}: \"Values\" must be an object of strings")
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="adapterctl", description=__doc__.split("\n\n")[0], epilog=EPILOG,
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help=f"Functions app URL (ADAPTERCTL_URL; default {DEFAULT_URL})")
    parser.add_argument("--function-key", help="function key (ADAPTERCTL_FUNCTION_KEY)")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds to follow a rollout")
    parser.add_argument("--http-timeout", type=float, default=30.0, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True)
    # --json after the command too (`status --json --app demo`); SUPPRESS keeps a --json given before it
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print one JSON document")
    common.add_argument("--timeout", type=float, default=argparse.SUPPRESS, help="seconds to follow a rollout")

    p = sub.add_parser("deploy", parents=[common], help="validate, upload and follow an adapter folder's rollout")
    p.add_argument("path")
    p.add_argument("--app", required=True)
    p.add_argument("--name", help="adapter name (default: the folder's name)")
    p.add_argument("--base-model", help="expected base model (default: the app's)")
    p.add_argument("--max-rank", type=int, help="largest LoRA rank (MAX_LORA_RANK; default 64)")
    p.add_argument("--storage-connection", help="upload storage connection string (ADAPTERS_STORAGE_CONNECTION)")
    p.add_argument("--account-url", help="upload storage account URL, https:// (ADAPTERS_ACCOUNT_URL)")
    p.add_argument("--create", action="store_true", help="create the app with this deploy when it does not exist "
                   "(without it, an unknown --app is refused: a typo would start a second app and server)")
    p.add_argument("--no-wait", action="store_true", help="print the deployment's id and exit after the upload")
    p.set_defaults(func=cmd_deploy)

    p = sub.add_parser("status", parents=[common], help="an app's recent rollouts (--app), or one deployment by ID")
    p.add_argument("id", nargs="?", help="a deployment record's id (as deploy prints it): its stages and reason")
    p.add_argument("--app", help="the app whose recent rollouts to list, as a table")
    p.set_defaults(func=cmd_status)

    sub.add_parser("apps", parents=[common], help="apps with their served adapter and endpoint").set_defaults(
        func=cmd_apps)

    for name, func, text in (("provision", cmd_provision, "create or update the app's resources"),
                             ("restart", cmd_restart, "new revision / replica restart")):
        p = sub.add_parser(name, parents=[common], help=text)
        p.add_argument("app")
        p.add_argument("--no-wait", action="store_true")
        p.set_defaults(func=func)

    p = sub.add_parser("chat", parents=[common], help="stream a reply from the app's endpoint")
    p.add_argument("app")
    p.add_argument("message")
    p.add_argument("--model", help="adapter, alias or base name (default: the live alias)")
    p.add_argument("--endpoint", help="override the app's endpoint")
    p.add_argument("--api-key", help="chat API key (INFERENCE_API_KEY)")
    p.add_argument("--temperature", type=float, help="sampling temperature (0: greedy)")
    p.add_argument("--max-tokens", type=int)
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("config", help="configuration commands")
    config_sub = p.add_subparsers(dest="config_command", required=True)
    c = config_sub.add_parser("check", parents=[common],
                              help="validate inference.config.json, inference.parameters.json, settings")
    c.add_argument("--infra", default="infra", help="folder with inference.config.json and provision/")
    c.add_argument("--settings", help="a Functions local.settings.json whose \"Values\" are the app settings to "
                   "check (over the environment); default: the environment alone")
    c.set_defaults(func=cmd_config_check)
    lifecycle.register(sub, common)
    progressive.register(sub, common)
    return parser


def resolve_settings(args: argparse.Namespace, environ: Mapping[str, str]) -> None:
    """Fill what no flag gave: the environment, then a running local stack's connection file, then built-ins.
    Warnings about the connection file go to stderr as one line each."""
    defaults = Defaults(environ, args.url, warn=lambda line: print(f"adapterctl: {line}", file=sys.stderr))
    env = defaults.get
    if args.url is None:
        args.url = env("ADAPTERCTL_URL", DEFAULT_URL)
        args.url_origin = defaults.origin("ADAPTERCTL_URL")
        _check_url(args.url_origin, args.url)
    else:
        _check_url("--url", args.url)
    args.function_key = args.function_key or env("ADAPTERCTL_FUNCTION_KEY")
    if hasattr(args, "storage_connection") and not (args.storage_connection or args.account_url):
        # the account URL only ever comes from the environment; the file's connection string never overrides it
        args.account_url = env("ADAPTERS_ACCOUNT_URL")
        if not args.account_url or environ.get("ADAPTERS_STORAGE_CONNECTION"):
            args.storage_connection = env("ADAPTERS_STORAGE_CONNECTION")
    if hasattr(args, "max_rank") and args.max_rank is None:
        args.max_rank = _whole("MAX_LORA_RANK", env("MAX_LORA_RANK", "64"))
    if hasattr(args, "api_key"):
        args.api_key = args.api_key or env("INFERENCE_API_KEY")


def _check_url(what: str, url: str) -> None:
    if not url.startswith(("http://", "https://")) or len(url.split("://", 1)[1]) == 0:
        raise UsageError(f"{what} must start with http:// or https:// (got {url!r})")


def _whole(name: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise UsageError(f"{name} must be a whole number (got {value!r})") from None


def _fail(out: Output, code: int, reason: str, **extra: Any) -> int:
    """One line on stderr (`adapterctl: ...`), and with `--json` the failure as the JSON document."""
    if out.as_json:
        out.result({"ok": False, "reason": reason, **extra})
    print(f"adapterctl: {reason}", file=sys.stderr)
    return code


def _quiet_stdout() -> None:
    """After the reader of stdout went away: send what is still buffered nowhere, so exit stays quiet."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def main(argv: list[str] | None = None) -> int:
    out = Output("--json" in (sys.argv[1:] if argv is None else argv))
    try:
        try:
            args = build_parser().parse_args(argv)
            out = Output(args.json)
            resolve_settings(args, os.environ)
            code = args.func(args, out)
        except UsageError as exc:
            code = _fail(out, EXIT_USAGE, str(exc))
        except ApiError as exc:  # the server's 400/404 name what was wrong with what was asked (bad input)
            message = str(exc)
            origin = getattr(args, "url_origin", "")
            if exc.status == 0 and message.startswith("orchestrator") and " in " in origin:  # a connection file's
                message += f" (the URL is {origin}: has that stack stopped? `make demo` starts it)"
            code = _fail(out, EXIT_USAGE if exc.status in (400, 404) else EXIT_API, message, status=exc.status)
        except AzureError as exc:  # the upload store: unreachable, refused credentials, ...
            code = _fail(out, EXIT_API, f"storage: {type(exc).__name__}: {str(exc).splitlines()[0]}")
        except TimeoutError as exc:
            code = _fail(out, EXIT_FAILED, str(exc))
        except ValueError as exc:  # a name or value the services refuse (e.g. an app name)
            code = _fail(out, EXIT_USAGE, str(exc))
        except KeyboardInterrupt:
            code = _fail(out, EXIT_INTERRUPTED, "interrupted; what was already started goes on (`adapterctl status`)")
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        _quiet_stdout()
        return EXIT_PIPE
