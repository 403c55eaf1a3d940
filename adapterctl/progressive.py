"""`adapterctl` commands of progressive delivery: a person's decisions on a waiting rollout, an app's policy.

- `approve ID` / `reject ID` (a rollout `awaiting_approval`), `promote ID` / `abort ID` (a rollout in `canary`;
  `abort` also ends one awaiting approval): `POST /api/deployments/{id}/{action}` with `{"by": --by or $USER}`,
  then the rollout is followed to its end like a deploy, unless `--no-wait`. A rollout in a stage that does not
  take the action is refused (409: exit 2, naming the stage and what it takes).
- `policy show APP`, `policy set APP FILE`, `policy clear APP`: `GET` / `PUT` / `DELETE /api/apps/{app}/policy`
  (the policy's format: docs/rollouts.md "Rollout policies"). A policy that does not parse is refused (400: exit 2,
  naming the field).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from .api import OrchestratorApi, _seg
from .lifecycle import refused_as_usage
from .output import EXIT_OK, Output, UsageError, api_for, follow_and_show

ACTIONS = {
    "approve": "let a rollout awaiting approval go on",
    "reject": "end a rollout awaiting approval (rolled back)",
    "promote": "skip a canary's remaining steps: the candidate takes all traffic",
    "abort": "end a canary (or a rollout awaiting approval): rolled back",
}


#: Refusals that are the user's input here: a bad policy (400), an unknown id (404), a stage that does not take
#: the decision (409).
REFUSALS = (400, 404, 409)


def _refused_as_usage(call: Any) -> dict[str, Any]:
    return refused_as_usage(call, REFUSALS)


def send_action(api: OrchestratorApi, deployment_id: str, action: str, by: str | None) -> dict[str, Any]:
    return _refused_as_usage(lambda: api._call("POST", f"deployments/{_seg(deployment_id)}/{action}",
                                               {"by": by} if by else {}))


def cmd_action(args: argparse.Namespace, out: Output) -> int:
    api = api_for(args)
    by = args.by or os.environ.get("USER") or None
    sent = send_action(api, args.id, args.command, by)
    out.line(f"{args.command} sent to {args.id} (was {sent.get('stage')})")
    if args.no_wait:
        out.result(sent)
        return EXIT_OK
    return follow_and_show(api, out, args.id, args.timeout)


def _policy_text(answer: dict[str, Any]) -> str:
    own, effective = answer.get("policy"), answer.get("effective")
    source = {"app": "the app's own policy", "setting": "the ROLLOUT_POLICY setting (the app has none of its own)",
              "none": "none: rollouts go straight to all traffic after the smoke chat"}.get(answer.get("source"), "?")
    text = f"{answer.get('app')}: rollouts follow {source}"
    shown = own if own is not None else effective
    return text + ("\n" + json.dumps(shown, indent=2) if shown is not None else "")


def cmd_policy(args: argparse.Namespace, out: Output) -> int:
    api = api_for(args)
    path = f"apps/{_seg(args.app)}/policy"
    if args.policy_command == "set":
        try:
            policy = json.loads(Path(args.file).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise UsageError(f"policy file {args.file!r}: {exc}") from exc
        answer = _refused_as_usage(lambda: api._call("PUT", path, policy))
    elif args.policy_command == "clear":
        answer = _refused_as_usage(lambda: api._call("DELETE", path))
    else:
        answer = _refused_as_usage(lambda: api._call("GET", path))
    out.result(answer, _policy_text(answer))
    return EXIT_OK


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    """Add the action commands and `policy show|set|clear` to adapterctl's subparsers."""
    for action, text in ACTIONS.items():
        p = subparsers.add_parser(action, parents=[common], help=text)
        p.add_argument("id", help="the deployment's id (as deploy and status print it)")
        p.add_argument("--by", help="who decides, kept in the record (default: $USER)")
        p.add_argument("--no-wait", action="store_true", help="send it and exit without following the rollout")
        p.set_defaults(func=cmd_action)

    p = subparsers.add_parser("policy", help="an app's rollout policy: canary steps, quality gate, approval")
    policy_sub = p.add_subparsers(dest="policy_command", required=True)
    for name, text in (("show", "the app's policy and where it comes from"),
                       ("set", "store the app's own policy from a JSON file"),
                       ("clear", "remove the app's own policy (the ROLLOUT_POLICY setting applies again)")):
        c = policy_sub.add_parser(name, parents=[common], help=text)
        c.add_argument("app")
        if name == "set":
            c.add_argument("file", help="a JSON policy (docs/rollouts.md, \"Rollout policies\")")
        c.set_defaults(func=cmd_policy)
