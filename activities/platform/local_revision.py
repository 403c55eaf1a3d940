"""The local platform's revision runner: N replicas of one revision behind a small front, as ACA's ingress spreads
requests over a revision's replicas.

`python -m activities.platform.local_revision --replicas N --revision <app>--<n> --host H --port P
--replicas-file F [--docker D] -- <server command…>` starts N copies of the server command, replica i named
`<app>--<n>-<i>` (its `CONTAINER_APP_REPLICA_NAME`, the report id), each on its own free loopback port. In the command
`{port}` is replaced by the replica's port and `{replica}` by its index (the container runtime names each container
`<name>-<i>`; with `--docker`, `docker rm -f -v` of that container runs before each start and after each exit, so a
client killed hard leaves none behind and the name is free again). The environment is the runner's own (the platform
gives it the server's), so secrets never appear in a command line.

The front serves every request on H:P and proxies it to the next replica that is up, round-robin per request:
method, path, query, body and headers (Authorization included; hop-by-hop headers dropped) go through, and the answer
is relayed chunk by chunk as it arrives (SSE streams stay unbuffered). A replica that refuses the connection is
skipped for that request; when none is up the front answers 502 with an OpenAI-style JSON error. A replica is up from
its first 200 on /health until its process exits.

A replica whose process exits is started again under the same name (as ACA restarts a crashed container): at once
the first time (so it is out of the list only for the moment its new process takes to spawn), then after a back-off
that doubles from 0.5 s up to 10 s while it keeps exiting before it answers /health (reset once it answers). At start the front opens once every
replica answers /health; a replica that exits before that ends the runner (exit 1), so a broken server fails the
platform's start with its log instead of looping. The live replicas (name, pid, port, up) are written to the
replicas file on every change; the platform lists those whose process is alive. Replica output goes to the runner's
stdout (the app's log), each line prefixed `[<replica name>] `.

SIGTERM (or SIGINT): the front stops accepting, every replica gets SIGTERM and drains, the runner exits once they are
gone. Replicas get SIGTERM too if the runner dies without cleaning up (Linux parent-death signal).
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import itertools
import json
import os
import signal
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import web

#: Headers that describe one connection, not the message: never forwarded either way.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
                        "transfer-encoding", "upgrade", "host", "content-length"})
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 10.0
HEALTH_POLL_S = 0.1
_PR_SET_PDEATHSIG = 1


@dataclass
class Replica:
    """One replica: its name and index, and while it runs its process and port."""

    index: int
    name: str
    proc: asyncio.subprocess.Process | None = None
    port: int = 0
    up: bool = False
    backoff: float = 0.0  # before the next restart
    ever_up: bool = False
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None


class Runner:
    """Starts, watches and restarts the replicas; the front picks among those that are up."""

    def __init__(self, args: argparse.Namespace, command: list[str]) -> None:
        self.args = args
        self.command = command
        self.replicas = [Replica(i, f"{args.revision}-{i}") for i in range(args.replicas)]
        self.stopping = asyncio.Event()
        self.failed: str | None = None
        self._turn = itertools.count()
        self._session: aiohttp.ClientSession | None = None

    # -- replicas ------------------------------------------------------------------------------------------------
    def _argv(self, replica: Replica) -> list[str]:
        return [a.replace("{port}", str(replica.port)).replace("{replica}", str(replica.index)) for a in self.command]

    async def _remove_container(self, replica: Replica) -> None:
        """`docker rm -f -v <container>` of the replica (container runtime only); errors are only logged."""
        if not self.args.docker:
            return
        name = self.args.container.replace("{replica}", str(replica.index))
        proc = await asyncio.create_subprocess_exec(self.args.docker, "rm", "-f", "-v", name,
                                                    stdin=asyncio.subprocess.DEVNULL,
                                                    stdout=asyncio.subprocess.DEVNULL,
                                                    stderr=asyncio.subprocess.DEVNULL)
        await proc.wait()

    async def start(self, replica: Replica) -> None:
        await self._remove_container(replica)
        replica.port = _free_port()
        env = {**os.environ, "CONTAINER_APP_REPLICA_NAME": replica.name}
        _say(f"starting {replica.name} on port {replica.port}")
        replica.proc = await asyncio.create_subprocess_exec(
            *self._argv(replica), env=env, cwd=self.args.cwd, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, preexec_fn=_die_with_parent)
        replica.up = False
        self.publish()
        for coro in (self._relay_output(replica, replica.proc), self._watch(replica, replica.proc)):
            task = asyncio.create_task(coro)
            replica.tasks.add(task)
            task.add_done_callback(replica.tasks.discard)

    async def _relay_output(self, replica: Replica, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        prefix = f"[{replica.name}] ".encode()
        out = sys.stdout.buffer
        async for line in proc.stdout:
            out.write(prefix + line if line.endswith(b"\n") else prefix + line + b"\n")
            out.flush()

    async def _watch(self, replica: Replica, proc: asyncio.subprocess.Process) -> None:
        """Mark the replica up at its first /health 200; when it exits, restart it (unless stopping)."""
        assert self._session is not None
        url = f"http://127.0.0.1:{replica.port}/health"
        while proc.returncode is None and not replica.up:
            try:
                async with self._session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as answer:
                    if answer.status == 200:
                        replica.up = replica.ever_up = True
                        replica.backoff = 0.0
                        _say(f"{replica.name} is up")
                        self.publish()
                        break
            except (TimeoutError, aiohttp.ClientError):
                pass
            try:
                await asyncio.wait_for(proc.wait(), HEALTH_POLL_S)
            except TimeoutError:
                pass
        code = await proc.wait()
        replica.up = False
        self.publish()
        await self._remove_container(replica)
        if self.stopping.is_set():
            return
        _say(f"{replica.name} exited with code {code}")
        if not replica.ever_up:
            self.failed = f"{replica.name} exited with code {code} before it answered /health"
            self.stopping.set()
            return
        if replica.backoff:
            try:
                await asyncio.wait_for(self.stopping.wait(), replica.backoff)
            except TimeoutError:
                pass
        replica.backoff = min(max(replica.backoff * 2, BACKOFF_FIRST_S), BACKOFF_MAX_S)
        if not self.stopping.is_set():
            await self.start(replica)

    def publish(self) -> None:
        """Write the replicas file (atomically): the runner's pid and each running replica's pid, port and state."""
        listed = {r.name: {"pid": r.proc.pid, "port": r.port, "up": r.up} for r in self.replicas
                  if r.proc is not None and r.alive}
        path = Path(self.args.replicas_file)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"runner_pid": os.getpid(), "replicas": listed}, indent=1))
        os.replace(tmp, path)

    async def stop_replicas(self) -> None:
        """SIGTERM every running replica and wait for all of them (they drain)."""
        running = [r for r in self.replicas if r.proc is not None and r.alive]
        for replica in running:
            assert replica.proc is not None
            try:
                replica.proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
        await asyncio.gather(*(r.proc.wait() for r in running if r.proc is not None))
        await asyncio.gather(*(t for r in self.replicas for t in list(r.tasks)), return_exceptions=True)

    # -- front ---------------------------------------------------------------------------------------------------
    def candidates(self) -> list[Replica]:
        """The replicas that are up, starting with the one whose turn it is."""
        up = [r for r in self.replicas if r.up and r.alive]
        if not up:
            return []
        start = next(self._turn) % len(up)
        return up[start:] + up[:start]

    async def proxy(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        for replica in self.candidates():
            url = f"http://127.0.0.1:{replica.port}{request.rel_url}"
            try:
                upstream = await self._session.request(request.method, url, headers=headers, data=body,
                                                       allow_redirects=False)
            except aiohttp.ClientConnectorError:
                continue  # refused (exited, or not listening yet): the next replica
            except aiohttp.ClientError as exc:
                return _bad_gateway(f"replica {replica.name} failed: {exc}")
            async with upstream:
                answer = web.StreamResponse(status=upstream.status, reason=upstream.reason)
                for name, value in upstream.headers.items():
                    if name.lower() not in HOP_BY_HOP:
                        answer.headers.add(name, value)
                await answer.prepare(request)
                try:
                    async for chunk in upstream.content.iter_any():
                        await answer.write(chunk)
                except aiohttp.ClientError:
                    if request.transport is not None:  # cut mid-answer: the client sees it cut too
                        request.transport.close()
                    return answer
                await answer.write_eof()
                return answer
        return _bad_gateway("no replica is up")

    # -- lifetime ------------------------------------------------------------------------------------------------
    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        self._session = aiohttp.ClientSession(auto_decompress=False, timeout=aiohttp.ClientTimeout(total=None),
                                              connector=aiohttp.TCPConnector(limit=0))
        app = web.Application(client_max_size=self.args.max_body_bytes)
        app.router.add_route("*", "/{tail:.*}", self.proxy)
        front = web.AppRunner(app, access_log=None, handle_signals=False)
        try:
            for replica in self.replicas:
                await self.start(replica)
            while not self.stopping.is_set() and not all(r.up for r in self.replicas):
                await asyncio.sleep(HEALTH_POLL_S)
            if not self.stopping.is_set():
                await front.setup()
                site = web.TCPSite(front, self.args.host, self.args.port, reuse_address=True)
                await site.start()
                _say(f"front on {self.args.host}:{self.args.port} for {len(self.replicas)} replicas")
                await self.stopping.wait()
                await site.stop()  # no new connections; answers in flight go on while the replicas drain
            _say(f"stopping: {self.failed or 'asked to'}")
            await self.stop_replicas()
        finally:
            await front.cleanup()
            await self._session.close()
            self.publish()
        return 1 if self.failed else 0


def _bad_gateway(message: str) -> web.Response:
    return web.json_response({"error": {"message": message, "type": "bad_gateway", "code": 502}}, status=502)


def _say(message: str) -> None:
    sys.stdout.buffer.write(f"[revision runner] {message}\n".encode())
    sys.stdout.buffer.flush()


def _die_with_parent() -> None:
    """In the replica's process before exec: SIGTERM when the runner dies (Linux; elsewhere nothing)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """The runner's flags, and the server command after `--`."""
    argv = list(argv)
    if "--" not in argv:
        raise SystemExit("local_revision: the server command follows `--`")
    split = argv.index("--")
    parser = argparse.ArgumentParser(prog="python -m activities.platform.local_revision")
    parser.add_argument("--replicas", type=int, required=True)
    parser.add_argument("--revision", required=True, help="<app>--<n>: replica i is <app>--<n>-<i>")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--replicas-file", required=True)
    parser.add_argument("--cwd", default=None, help="the servers' working folder")
    parser.add_argument("--docker", default="", help="the docker client, for the container runtime")
    parser.add_argument("--container", default="", help="the container name, `{replica}` its index")
    parser.add_argument("--max-body-bytes", type=int, default=64 << 20)
    args = parser.parse_args(argv[:split])
    command = argv[split + 1:]
    if not command or args.replicas < 1:
        parser.error("needs a server command and --replicas >= 1")
    if args.docker and "{replica}" not in args.container:
        parser.error("--docker needs --container with `{replica}`")
    return args, command


def main(argv: Sequence[str] | None = None) -> int:
    args, command = parse_args(sys.argv[1:] if argv is None else argv)
    return asyncio.run(Runner(args, command).run())


if __name__ == "__main__":
    sys.exit(main())
