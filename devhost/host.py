"""DevHost: the local Durable Functions host for one app — store, worker, HTTP front, blob and timer triggers.

``async with DevHost(app, state_dir=...) as host:`` starts everything on a loopback port (0 picks a
free one) and stops it on exit; ``host.url`` is the origin, ``host.worker`` the dispatcher and
``host.reset()`` clears all state. The CLI's ``serve`` runs one until interrupted.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import inspect
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from azure.functions.blob import InputStream
from azure.functions.timer import TimerRequest

from devhost.functions import FunctionEntry, FunctionIndex, call_kwargs
from devhost.http_front import DurableEndpoints, create_http_app
from devhost.store import Store
from devhost.timer_trigger import TimerScheduler
from devhost.triggers import AzureBlobLister, BlobLister, BlobPoller
from devhost.worker import Worker

log = logging.getLogger("devhost")


class PortInUseError(OSError):
    """The requested port is already taken."""


class DevHost:
    """Runs a v2 Python function app (``df.DFApp``) locally with durable state in ``state_dir``."""

    def __init__(self, app: Any, *, state_dir: str | Path, host: str = "127.0.0.1", port: int = 0,
                 task_hub: str = "DevHostHub", blob_connection: str | None = None,
                 blob_lister_factory: Callable[[str], BlobLister] = AzureBlobLister,
                 poll_interval: float = 1.0, route_prefix: str = "api", max_workers: int = 8) -> None:
        self.functions = FunctionIndex.from_app(app)
        self.state_dir = Path(state_dir)
        self.host = host
        self.port = port
        self.blob_connection = blob_connection
        self.blob_lister_factory = blob_lister_factory
        self.poll_interval = poll_interval
        self.route_prefix = route_prefix
        self.max_workers = max_workers
        self.endpoints = DurableEndpoints(task_hub)
        self.store: Store | None = None
        self._worker: Worker | None = None
        self._runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.pollers: list[BlobPoller] = []

    @property
    def worker(self) -> Worker:
        """The dispatcher (available after :meth:`start`)."""
        if self._worker is None:
            raise RuntimeError("DevHost is not started")
        return self._worker

    @property
    def url(self) -> str:
        """The host's origin, e.g. ``http://127.0.0.1:7071``."""
        return self.endpoints.base_url

    async def start(self) -> None:
        """Open the store, resume unfinished orchestrations, bind the port, start the triggers."""
        self.store = Store(self.state_dir / "durable.sqlite")
        self._worker = Worker(self.store, self.functions, max_workers=self.max_workers,
                              client_binding=self.endpoints.client_binding)
        app = create_http_app(self.functions, self._worker, self.store, self.endpoints,
                              route_prefix=self.route_prefix)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        # reuse_address: a restart binds again while the last run's connections linger in TIME_WAIT;
        # shutdown_timeout: stopping waits at most this long for requests still being answered
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True, shutdown_timeout=1.0)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            self.store.close()
            if exc.errno == errno.EADDRINUSE:
                error = PortInUseError(f"port {self.port} on {self.host} is already in use")
                error.errno = exc.errno
                raise error from exc
            raise
        bound_port = self._runner.addresses[0][1]
        self.endpoints.base_url = f"http://{self.host}:{bound_port}"
        self.port = bound_port
        await self._worker.start()
        self._start_blob_triggers()
        self._start_timer_triggers()

    async def stop(self) -> None:
        """Stop triggers, the worker and the HTTP server; close the store."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self._worker is not None:
            await self._worker.stop()
        if self._runner is not None:
            await self._runner.cleanup()
        if self.store is not None:
            self.store.close()

    def reset(self) -> None:
        """Delete all instances and history (for tests; do not call with orchestrations running)."""
        if self.store is not None:
            self.store.reset()

    async def __aenter__(self) -> DevHost:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _start_blob_triggers(self) -> None:
        listers: dict[str, BlobLister] = {}
        for entry in self.functions.blob:
            connection = self.blob_connection or os.environ.get(str(entry.trigger.connection))
            if not connection:
                log.warning("blob trigger %s skipped: no connection string (setting %s or --blob-connection)",
                            entry.name, entry.trigger.connection)
                continue
            lister = listers.get(connection) or listers.setdefault(connection, self.blob_lister_factory(connection))
            poller = BlobPoller(str(entry.trigger.path), lister, functools.partial(self.invoke, entry),
                                interval=self.poll_interval,
                                receipts_file=self.state_dir / f"blob-receipts-{entry.name}.json")
            self.pollers.append(poller)
            self._tasks.append(asyncio.create_task(poller.run(), name=f"devhost-blob-{entry.name}"))

    def _start_timer_triggers(self) -> None:
        for entry in self.functions.timer:
            scheduler = TimerScheduler(str(entry.trigger.schedule), functools.partial(self.invoke, entry),
                                       run_on_startup=bool(getattr(entry.trigger, "run_on_startup", False)))
            self._tasks.append(asyncio.create_task(scheduler.run(), name=f"devhost-timer-{entry.name}"))

    async def invoke(self, entry: FunctionEntry, trigger_value: InputStream | TimerRequest) -> Any:
        """Invoke a blob- or timer-triggered function with its trigger value (and durable client)."""
        fn = entry.user_function
        kwargs = call_kwargs(entry, trigger_value, self.endpoints.client_binding() if entry.client_params else None)
        if inspect.iscoroutinefunction(fn):
            return await fn(**kwargs)
        return await asyncio.to_thread(functools.partial(fn, **kwargs))
