"""Command line: ``python -m devhost <subcommand>``; subcommands live in one registry.

``serve`` runs a function app on the local Durable host until SIGINT, SIGTERM or SIGHUP, then exits within a few
seconds even while activities run. Other subcommands (``up``) register themselves with :func:`register` and get
their own parser from :func:`build_parser`.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import importlib.util
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from devhost.functions import AppLoadError, load_app
from devhost.host import DevHost, PortInUseError
from devhost.store import StoreError


@dataclass(frozen=True)
class Subcommand:
    """A CLI subcommand: its name, one-line help, argument setup and entry point (returns exit code)."""

    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


SUBCOMMANDS: dict[str, Subcommand] = {}

# Modules that register more subcommands when imported (each calls ``register`` at import time).
# A module that does not exist is skipped; one that fails to import raises.
SUBCOMMAND_MODULES: tuple[str, ...] = ("devhost.up",)


def register(command: Subcommand) -> Subcommand:
    """Add ``command`` to the registry (a later registration with the same name replaces it)."""
    SUBCOMMANDS[command.name] = command
    return command


def load_subcommand_modules() -> None:
    """Import every module of :data:`SUBCOMMAND_MODULES` that exists, so they register themselves."""
    for name in SUBCOMMAND_MODULES:
        if importlib.util.find_spec(name) is not None:
            importlib.import_module(name)


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one sub-parser per registered subcommand."""
    load_subcommand_modules()
    parser = argparse.ArgumentParser(prog="python -m devhost", description="Local Durable Functions host")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for command in SUBCOMMANDS.values():
        sub = subparsers.add_parser(command.name, help=command.help, description=command.help)
        command.configure(sub)
        sub.set_defaults(_run=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen subcommand."""
    args = build_parser().parse_args(argv)
    return int(args._run(args))


def add_app_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by subcommands that run an app (``serve``; ``up`` can reuse them)."""
    parser.add_argument("--app", default="function_app:app", help="module:attribute of the app (default %(default)s)")
    parser.add_argument("--app-dir", default=".", help="directory put first on sys.path (default %(default)s)")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default %(default)s)")
    parser.add_argument("--port", type=int, default=7071, help="port (default %(default)s; 0 picks a free one)")
    parser.add_argument("--state-dir", default=".devhost", help="durable state directory (default %(default)s)")
    parser.add_argument("--blob-connection", default=None,
                        help="connection string for blob triggers (default: each trigger's connection setting)")
    parser.add_argument("--poll-interval", type=float, default=1.0, help="blob poll interval in seconds")
    parser.add_argument("--task-hub", default="DevHostHub", help="task hub name reported to clients")
    parser.add_argument("--settings", default=None,
                        help="local.settings.json whose Values fill unset environment variables, as Core Tools "
                             "does (default: <app-dir>/local.settings.json when present)")


def load_local_settings(path: Path) -> list[str]:
    """Copy ``Values`` of a local.settings.json into ``os.environ`` where unset; returns the names set."""
    values = json.loads(path.read_text()).get("Values") or {}
    added = [k for k in values if k not in os.environ]
    for key in added:
        os.environ[key] = str(values[key])
    return added


def host_from_args(args: argparse.Namespace) -> DevHost:
    """Build a :class:`DevHost` from :func:`add_app_arguments` options."""
    settings = Path(args.settings) if args.settings else Path(args.app_dir) / "local.settings.json"
    if args.settings or settings.exists():
        load_local_settings(settings)
    app = load_app(args.app, Path(args.app_dir).resolve())
    return DevHost(app, state_dir=Path(args.state_dir), host=args.host, port=args.port,
                   task_hub=args.task_hub, blob_connection=args.blob_connection,
                   poll_interval=args.poll_interval)


#: Signals that stop ``serve``: Ctrl-C, ``kill``, a closed terminal.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
#: Seconds ``serve`` gives the host to stop and its running activities to finish before it exits anyway.
STOP_GRACE_S = 1.5


async def serve_until_stopped(host: DevHost, grace_s: float = STOP_GRACE_S) -> None:
    """Start ``host``, print where it listens, and run until one of :data:`STOP_SIGNALS`; stopping the host
    takes at most ``grace_s`` (a later host resumes whatever was cut short)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    await host.start()
    try:
        names = sorted([*host.functions.orchestrators, *host.functions.activities,
                        *(e.name for e in host.functions.http), *(e.name for e in host.functions.blob)])
        print(f"devhost listening on {host.url} (state: {host.state_dir}); functions: {', '.join(names)}",
              flush=True)
        await stop.wait()
    finally:
        try:
            await asyncio.wait_for(host.stop(), grace_s)
        except TimeoutError:
            logging.getLogger("devhost").warning("host did not stop within %.1fs; exiting anyway", grace_s)


def run_until_stopped(host: DevHost, grace_s: float = STOP_GRACE_S) -> None:
    """:func:`serve_until_stopped` on a new event loop that, unlike ``asyncio.run``, does not wait for the threads
    still running activities or blocking calls; the caller decides what to do with them (:func:`_lingering`)."""
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(serve_until_stopped(host, grace_s))
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()  # shuts the default executor down without waiting


def _lingering(grace_s: float) -> list[threading.Thread]:
    """Non-daemon threads (activities, blocking calls) still alive after waiting up to ``grace_s`` for them."""
    deadline = time.monotonic() + grace_s
    others = [t for t in threading.enumerate() if t is not threading.current_thread() and not t.daemon]
    for thread in others:
        thread.join(max(0.0, deadline - time.monotonic()))
    return [t for t in others if t.is_alive()]


def run_serve(args: argparse.Namespace) -> int:
    """``serve``: run the app until a stop signal. Exit 2 on a bad app, a port in use or bad state dir.

    Once stopped, threads still running activities are abandoned after a short grace (the process exits at once
    instead of waiting for them, as the interpreter would: an activity may wait minutes on a server)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("azure").setLevel(logging.WARNING)  # the SDKs log every request at INFO
    try:
        run_until_stopped(host_from_args(args))
    except (AppLoadError, PortInUseError, StoreError, OSError, ValueError) as exc:
        print(f"devhost: {exc}", file=sys.stderr)
        return 2
    if lingering := _lingering(STOP_GRACE_S):
        logging.getLogger("devhost").warning("stopped; abandoning %d running thread(s): %s", len(lingering),
                                             ", ".join(t.name for t in lingering))
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


register(Subcommand("serve", "run a function app on the local Durable host", add_app_arguments, run_serve))
