# ruff: noqa: F811 - the fixtures imported from tests/orchestrations/test_app_lifecycle_routes.py
"""`adapterctl apps delete`, `rollback` and deploy's app check (adapterctl/lifecycle.py) against the orchestrator's
real routes: function_app on devhost with Azurite and the local platform (the fixture of
tests/orchestrations/test_app_lifecycle_routes.py), the commands run in a thread as `main` runs them."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import sys

import pytest

from adapterctl.api import ApiError, OrchestratorApi
from adapterctl.lifecycle import check_app_known, confirm, register
from adapterctl.output import EXIT_API, EXIT_USAGE, Output, UsageError
from tests.orchestrations.test_app_lifecycle_routes import (  # noqa: F401 - fixtures
    azurite,
    finished,
    host,
    serve,
    upload,
    went_live,
)

pytestmark = pytest.mark.azurite


def parser() -> argparse.ArgumentParser:
    """adapterctl's global options, an `apps` listing command, and this module's commands."""
    p = argparse.ArgumentParser(prog="adapterctl")
    p.add_argument("--url")
    p.add_argument("--function-key")
    p.add_argument("--json", action="store_true")
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--http-timeout", type=float, default=30.0)
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("apps").set_defaults(func=lambda args, out: out.result(["listed"], "listed") or 0)
    register(sub, None)
    return p


def run(url: str, *argv: str, stdin: str = "") -> tuple[int, str, str]:
    """Parse and run like adapterctl's main (UsageError: 2, ApiError: 3); (exit code, stdout, stderr)."""
    stdout, stderr = io.StringIO(), io.StringIO()
    args = parser().parse_args(["--url", url, *argv])
    out = Output(args.json, stdout)
    old = sys.stdin, sys.stderr
    sys.stdin, sys.stderr = io.StringIO(stdin), stderr
    try:
        code = args.func(args, out)
    except UsageError as exc:
        code, _ = EXIT_USAGE, print(f"adapterctl: {exc}", file=stderr)
    except ApiError as exc:
        code, _ = EXIT_API, print(f"adapterctl: {exc}", file=stderr)
    finally:
        sys.stdin, sys.stderr = old
    return code, stdout.getvalue(), stderr.getvalue()


async def cli(host, *argv: str, stdin: str = "") -> tuple[int, str, str]:
    return await asyncio.to_thread(run, host.devhost.url, *argv, stdin=stdin)


def test_apps_keeps_listing_and_delete_needs_an_app() -> None:
    """`apps` alone is still the listing; `apps delete` without APP is a usage error."""
    assert parser().parse_args(["apps"]).func(None, Output(False, io.StringIO())) == 0
    args = parser().parse_args(["apps", "delete", "demo", "--yes"])
    assert args.func.__name__ == "cmd_apps_delete" and args.app == "demo" and args.yes
    with pytest.raises(SystemExit):
        parser().parse_args(["apps", "delete"])
    args = parser().parse_args(["rollback", "demo", "--to", "alpha@0123456789ab"])
    assert args.func.__name__ == "cmd_rollback" and args.to == "alpha@0123456789ab"


def test_confirm_takes_only_yes() -> None:
    for answer, expected in (("y\n", True), ("YES\n", True), ("n\n", False), ("\n", False), ("", False),
                             ("yess\n", False)):
        assert confirm("delete?", io.StringIO(answer), io.StringIO()) is expected, answer


async def test_deploy_check_refuses_unknown_apps_without_create(host) -> None:
    """An unknown app: refused naming --create; with create: None (a new app); a known app: its status; an app
    being deleted: refused."""
    api = OrchestratorApi(host.devhost.url)
    with pytest.raises(UsageError, match="--create"):
        await asyncio.to_thread(check_app_known, api, "typo", False)
    assert await asyncio.to_thread(check_app_known, api, "typo", True) is None
    upload(host, "known", "alpha", "1")
    info = await asyncio.to_thread(check_app_known, api, "known", False)
    assert info["app"] == "known" and info["exists"] is True
    host.svc.records.mark_deleting("known", "delete-known.20260101T000000000000")
    with pytest.raises(UsageError, match="being deleted"):
        await asyncio.to_thread(check_app_known, api, "known", True)


async def test_apps_delete_asks_then_deletes(host) -> None:
    """Not confirmed: exit 2, nothing deleted; confirmed: followed to `deleted`, exit 0; unknown app: exit 2."""
    done = upload(host, "gone", "alpha", "1")
    went_live(host, "gone", done)
    serve(host, "gone", done)
    code, out, err = await cli(host, "apps", "delete", "gone", stdin="n\n")
    assert code == 2 and "not confirmed" in err and "delete app 'gone' (serving alpha@" in err, err
    assert host.svc.records.has_app("gone")
    code, out, err = await cli(host, "--json", "apps", "delete", "gone", stdin="y\n")
    assert code == 0, (out, err)
    record = json.loads(out)
    assert record["state"] == "deleted" and record["id"].startswith("delete-gone.")
    assert not host.svc.records.has_app("gone") and not (host.tmp / "store" / "gone").exists()
    code, out, err = await cli(host, "apps", "delete", "gone", "--yes")
    assert code == 2 and "no app 'gone'" in err and out == ""
    code, out, err = await cli(host, "apps", "delete", "gone")
    assert code == 2 and "no app 'gone' to delete" in err


async def test_apps_delete_refused_while_a_rollout_may_run(host) -> None:
    """409 from the orchestrator: exit 3 with its reason (try again later), the app untouched."""
    upload(host, "busy", "alpha", "1")
    host.svc.records.ingest("busy")
    code, out, err = await cli(host, "apps", "delete", "busy", "--yes")
    assert code == 3 and "have not ended" in err, err
    assert host.svc.records.has_app("busy")


async def test_apps_delete_no_wait_prints_the_id(host) -> None:
    upload(host, "quick", "alpha", "1")
    code, out, err = await cli(host, "apps", "delete", "quick", "--yes", "--no-wait")
    assert code == 0 and "deleting quick: delete-quick." in out, (out, err)
    deletion_id = out.split(": ", 1)[1].splitlines()[0]
    assert (await finished(host, deletion_id))["state"] == "deleted"


async def test_rollback_requests_the_previous_version(host) -> None:
    """`rollback APP --no-wait`: the request's id and the version it goes back to; `--to` an unknown version or an
    app with nothing earlier: exit 2 with the orchestrator's reason."""
    alpha = upload(host, "rb", "alpha", "1")
    alpha_v = went_live(host, "rb", alpha)
    beta = upload(host, "rb", "beta", "2")
    beta_v = went_live(host, "rb", beta)
    serve(host, "rb", beta)
    code, out, err = await cli(host, "rollback", "rb", "--no-wait")
    assert code == 0 and f"rolling rb back to {alpha_v} (from {beta_v}): deployment rb." in out, (out, err)
    code, out, err = await cli(host, "--json", "rollback", "rb", "--to", beta_v, "--no-wait")
    assert code == 0 and json.loads(out)["rollback_to"] == beta_v
    requests_made = [r for r in host.svc.records.recent("rb") if r["source"] == "request"]
    assert sorted(r["adapter"] for r in requests_made) == ["alpha", "beta"]
    code, out, err = await cli(host, "rollback", "rb", "--to", "alpha@000000000000")
    assert code == 2 and "no version 'alpha@000000000000'" in err, err
    code, out, err = await cli(host, "rollback", "nothing-here")
    assert code == 2 and "no earlier live version" in err, err


def test_register_fits_adapterctls_own_parser() -> None:
    """On adapterctl's real parser: `apps` still lists, `apps delete` and `rollback` parse, and a missing APP is
    adapterctl's one-line usage error."""
    from adapterctl import cli

    real = cli.build_parser()
    sub = next(a for a in real._actions if isinstance(a, argparse._SubParsersAction))
    if "rollback" not in sub.choices:  # until cli.py registers this module itself
        register(sub, None)
    assert real.parse_args(["apps"]).func is cli.cmd_apps
    args = real.parse_args(["--json", "apps", "delete", "demo", "-y", "--no-wait"])
    assert args.func.__name__ == "cmd_apps_delete" and args.yes and args.no_wait and args.json
    args = real.parse_args(["rollback", "demo", "--to", "beta@0123456789ab"])
    assert args.func.__name__ == "cmd_rollback" and args.to == "beta@0123456789ab"
    with pytest.raises(UsageError, match="app"):
        real.parse_args(["apps", "delete"])
