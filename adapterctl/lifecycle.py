"""`adapterctl` app lifecycle commands: `apps delete APP`, `rollback APP [--to VERSION]`, and the check that
`deploy` makes before uploading to an app (`check_app_known`: an unknown app needs `--create`).

`register(subparsers, common)` adds the commands to adapterctl's parser (`common`: a parent parser, or a list of
them, whose options every command takes; None for none). They use the orchestrator's routes:

- `DELETE /api/apps/{app}` → 202 with the deletion's id; followed to its end (`state: deleted`), unless `--no-wait`.
  It stops the app's server and removes its store folder, uploads and deployment records (in Azure: deletes the
  container app; shared resources stay). Asks for confirmation unless `--yes`; refused (409) while a rollout runs.
- `POST /api/apps/{app}/rollback` (`{"to": VERSION}` optional) → a deploy request with its own record, followed
  like a deploy. VERSION is as `status` shows it (`adapter@sha256-prefix`) or an adapter name.

Exit status as for every command: 0 done, 1 the rollout / deletion did not succeed, 2 bad input (an unknown app or
version, no confirmation), 3 the orchestrator unreachable or answering with an error.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, TextIO

from .api import ApiError, OrchestratorApi, _seg
from .follow import follow
from .output import EXIT_FAILED, EXIT_OK, Output, UsageError, api_for, follow_and_show


# -- calls -----------------------------------------------------------------------------------------------------
def delete_app(api: OrchestratorApi, app: str) -> dict[str, Any]:
    """Start the app's deletion: `{"id", "app", "status_url"}`."""
    return refused_as_usage(lambda: api._call("DELETE", f"apps/{_seg(app)}"))


def rollback(api: OrchestratorApi, app: str, to: str | None = None) -> dict[str, Any]:
    """Request a rollback: the deploy request's `{"id", "adapter", "rollback_of", "rollback_to", "status_url"}`."""
    return refused_as_usage(lambda: api._call("POST", f"apps/{_seg(app)}/rollback", {} if to is None else {"to": to}))


def refused_as_usage(call: Any, statuses: tuple[int, ...] = (400, 404)) -> dict[str, Any]:
    """The orchestrator's refusals in `statuses` (400 / 404: a bad name, an unknown app or version) name what was
    wrong with what was asked: UsageError (exit 2)."""
    try:
        return call()
    except ApiError as exc:
        if exc.status in statuses:
            raise UsageError(str(exc)) from exc
        raise


def check_app_known(client: OrchestratorApi, app: str, create: bool) -> dict[str, Any] | None:
    """Before `deploy` uploads: the app's status when it exists; None for a new app when `create` is given.
    UsageError (exit 2) for an app that does not exist without `create` (a typo would otherwise start a second
    app and a second server), and for an app being deleted (its uploads would be deleted with it)."""
    try:
        info = client.app(app)
    except ApiError as exc:
        if exc.status != 404:
            raise
        if create:
            return None
        raise UsageError(f"there is no app {app!r} (see `adapterctl apps`): check the name, or pass --create to "
                         "create it with this deploy") from None
    deleting = info.get("deleting")
    if deleting:
        raise UsageError(f"app {app!r} is being deleted ({deleting.get('id')}); deploy once that ended")
    return info


# -- commands --------------------------------------------------------------------------------------------------
def confirm(question: str, stdin: TextIO | None = None, stderr: TextIO | None = None) -> bool:
    """Ask on stderr and read one line: True only for y / yes (no answer, end of input: no)."""
    stdin, stderr = stdin or sys.stdin, stderr or sys.stderr
    print(f"{question} [y/N] ", end="", file=stderr, flush=True)
    answer = stdin.readline()
    if not answer.endswith("\n"):
        print(file=stderr)
    return answer.strip().lower() in ("y", "yes")


def cmd_apps_delete(args: argparse.Namespace, out: Output) -> int:
    api = api_for(args)
    if not args.yes:
        try:
            info = api.app(args.app)
        except ApiError as exc:
            if exc.status == 404:
                raise UsageError(f"there is no app {args.app!r} to delete (see `adapterctl apps`)") from None
            raise
        served = (info.get("served") or {}).get("version") or "nothing"
        question = (f"delete app {args.app!r} (serving {served})? Its server stops; its store folder, uploads and "
                    "deployment records are removed (in Azure: its container app is deleted).")
        if not confirm(question):
            raise UsageError(f"not deleting {args.app!r} (not confirmed; pass --yes to skip the question)")
    started = delete_app(api, args.app)
    out.line(f"deleting {args.app}: {started['id']}")
    if args.no_wait:
        out.result(started)
        return EXIT_OK
    record = follow(api, started["id"], args.timeout, lambda _entry: None)
    ok = record.get("runtime_status") == "Completed" and record.get("state") == "deleted"
    text = f"{args.app}: deleted" if ok else f"{args.app}: {record.get('state') or record.get('runtime_status')}"
    if not ok and record.get("reason"):
        text += f" — {record['reason']}"
    out.result(record, text)
    return EXIT_OK if ok else EXIT_FAILED


def cmd_rollback(args: argparse.Namespace, out: Output) -> int:
    api = api_for(args)
    started = rollback(api, args.app, args.to)
    target = started.get("rollback_to") or started.get("adapter")
    since = f" (from {started['rollback_of']})" if started.get("rollback_of") else ""
    out.line(f"rolling {args.app} back to {target}{since}: deployment {started['id']}")
    if args.no_wait:
        out.result(started)
        return EXIT_OK
    return follow_and_show(api, out, started["id"], args.timeout)


def register(subparsers: Any, common: argparse.ArgumentParser | list[argparse.ArgumentParser] | None = None
             ) -> None:
    """Add `apps delete APP` (under an existing `apps` command, which keeps listing apps without a subcommand)
    and `rollback APP [--to VERSION]` to adapterctl's subparsers."""
    parents = [common] if isinstance(common, argparse.ArgumentParser) else list(common or [])
    apps = subparsers.choices.get("apps")
    if apps is None:
        apps = subparsers.add_parser("apps", help="app commands", parents=parents)
    apps_sub = apps.add_subparsers(dest="apps_command", required=apps.get_default("func") is None,
                                   metavar="{delete}")
    p = apps_sub.add_parser("delete", parents=parents, help="stop and remove an app (asks unless --yes)",
                            description="Stop the app's server and remove its store folder, uploads and deployment "
                            "records (in Azure: delete its container app; shared resources stay). Refused while a "
                            "rollout runs.")
    p.add_argument("app")
    p.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    p.add_argument("--no-wait", action="store_true", help="print the deletion's id and exit")
    p.set_defaults(func=cmd_apps_delete)

    p = subparsers.add_parser("rollback", parents=parents, help="redeploy an earlier version (a normal rollout)",
                              description="Redeploy the version live before the current one, or --to VERSION, as a "
                              "rollout with its own deployment record.")
    p.add_argument("app")
    p.add_argument("--to", metavar="VERSION",
                   help="a version as `adapterctl status` shows it (adapter@sha256-prefix), or an adapter name")
    p.add_argument("--no-wait", action="store_true", help="print the deployment's id and exit")
    p.set_defaults(func=cmd_rollback)
