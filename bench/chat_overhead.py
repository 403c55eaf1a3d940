"""Chat proxy overhead: direct to a fake streaming upstream vs through our server (SGLang engine, attached).

Three kinds of process, as in ANCHORS.md: the fake upstream (`tests.fakes.fake_sglang`, 64 tokens at 2 ms/token,
SSE), our server (`python -m inference_server --engine sglang --sglang-upstream URL`, auth + validation + metrics +
routing on), and a load client (this file with `--client`, one shared aiohttp session). For each concurrency it
runs direct, through our server, and through `bare_proxy.py` (the minimal aiohttp pass-through, as a reference
on a noisy machine), back to back, a few seconds each, and prints one table; CPU time per request comes from
psutil. Then it prints the peak RSS of the CPU server with the tiny model kit.

    .venv/bin/python bench/chat_overhead.py [--duration 3] [--concurrency 1 16 64 256]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import psutil

ROOT = Path(__file__).resolve().parent.parent
API_KEY = "bench-key"
TOKENS, TOKEN_DELAY_S = 64, 0.002


@dataclass(frozen=True)
class RequestInput:
    url: str
    model: str
    headers: dict[str, str] = field(default_factory=dict)
    max_tokens: int = 128


@dataclass
class RequestOutput:
    success: bool = False
    latency: float = 0.0
    ttft: float = 0.0
    itl: list[float] = field(default_factory=list)
    chunks: int = 0
    error: str = ""


async def send_request(session: aiohttp.ClientSession, req: RequestInput) -> RequestOutput:
    """One streaming chat request; failures are recorded in the output, never raised."""
    out = RequestOutput()
    body = {"model": req.model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": req.max_tokens,
            "stream": True}
    start = last = time.perf_counter()
    try:
        async with session.post(req.url, json=body, headers=req.headers) as resp:
            if resp.status != 200:
                out.error = f"HTTP {resp.status}"
                return out
            async for _ in resp.content.iter_any():
                now = time.perf_counter()
                if out.chunks == 0:
                    out.ttft = now - start
                else:
                    out.itl.append(now - last)
                last = now
                out.chunks += 1
        out.latency = time.perf_counter() - start
        out.success = True
    except (aiohttp.ClientError, TimeoutError) as exc:
        out.error = type(exc).__name__
    return out


async def run_load(req: RequestInput, concurrency: int, duration_s: float) -> dict[str, object]:
    """C workers send back-to-back requests for `duration_s` after a warm-up round; returns a summary."""
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        await asyncio.gather(*(send_request(session, req) for _ in range(concurrency)))  # warm-up: open connections
        outputs: list[RequestOutput] = []
        deadline = time.perf_counter() + duration_s

        async def worker() -> None:
            while time.perf_counter() < deadline:
                outputs.append(await send_request(session, req))

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    ok = sorted(o.latency for o in outputs if o.success)
    errors = [o.error for o in outputs if not o.success]
    return {
        "ok": len(ok), "failed": len(errors), "first_error": errors[0] if errors else "",
        "rps": len(ok) / elapsed,
        "p50": statistics.median(ok) if ok else float("nan"),
        "p99": ok[min(len(ok) - 1, int(len(ok) * 0.99))] if ok else float("nan"),
        "ttft_p50": statistics.median([o.ttft for o in outputs if o.success]) if ok else float("nan"),
    }


# -- orchestration (the parent process) ---------------------------------------------------------------------
def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "inference_image"), env.get("PYTHONPATH", "")])
    return env


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen[bytes], headers: dict[str, str] | None = None,
               timeout_s: float = 120) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    raise TimeoutError(url)


def _start_server(args: list[str]) -> tuple[subprocess.Popen[bytes], str]:
    """Start `python -m inference_server ARGS --port 0`; returns the process and its printed URL."""
    cmd = [sys.executable, "-m", "inference_server", *args, "--host", "127.0.0.1", "--port", "0", "--api-keys", API_KEY]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    for line in proc.stdout:
        match = re.search(rb"listening on (http://\S+)", line)
        if match:
            return proc, match.group(1).decode()
    raise RuntimeError("server exited before printing its URL")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _client(url: str, model: str, concurrency: int, duration_s: float, auth: bool) -> dict[str, object]:
    cmd = [sys.executable, __file__, "--client", url, "--model", model, "--concurrency", str(concurrency),
           "--duration", str(duration_s)] + (["--auth"] if auth else [])
    done = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, check=True, timeout=duration_s + 120)
    return json.loads(done.stdout.decode().strip().splitlines()[-1])


def overhead_table(concurrencies: list[int], duration_s: float) -> None:
    port = _free_port()
    upstream = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.fake_sglang", "--model-path", "tiny", "--served-model-name", "tiny",
         "--port", str(port), "--tokens", str(TOKENS), "--token-delay", str(TOKEN_DELAY_S)],
        cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    bare_port = _free_port()
    bare = subprocess.Popen([sys.executable, str(ROOT / "bench" / "bare_proxy.py"), f"http://127.0.0.1:{port}",
                             str(bare_port)], cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = None
    try:
        _wait_http(f"http://127.0.0.1:{port}/health", upstream)
        server, url = _start_server(["--engine", "sglang", "--sglang-upstream", f"http://127.0.0.1:{port}",
                                     "--base-model-name", "tiny"])
        _wait_http(url + "/ready", server, {"Authorization": f"Bearer {API_KEY}"})
        print(f"fake upstream: {TOKENS} tokens at {TOKEN_DELAY_S * 1000:g} ms/token; {duration_s:g} s per point; "
              f"{os.cpu_count()} CPUs; 'bare' = minimal aiohttp pass-through")
        print(f"{'C':>4} | {'direct p50/p99 ms':>17} | {'ours p50/p99 ms':>15} | {'direct rps':>10} | {'ours rps':>8} | "
              f"{'ratio':>5} | {'p50 added':>9} | {'CPU ms/req':>10} | {'bare ratio':>10} | {'bare CPU':>8} | failed")
        for c in concurrencies:
            direct = _client(f"http://127.0.0.1:{port}/v1/chat/completions", "tiny", c, duration_s, auth=False)
            ours, ours_cpu = _measured(server.pid, url, c, duration_s)
            ref, ref_cpu = _measured(bare.pid, f"http://127.0.0.1:{bare_port}", c, duration_s)
            failed = [int(r["failed"]) for r in (direct, ours, ref)]
            print(f"{c:>4} | {direct['p50'] * 1e3:>7.1f} / {direct['p99'] * 1e3:>7.1f} | "
                  f"{ours['p50'] * 1e3:>6.1f} / {ours['p99'] * 1e3:>6.1f} | {direct['rps']:>10.1f} | "
                  f"{ours['rps']:>8.1f} | {ours['rps'] / direct['rps']:>5.2f} | "
                  f"{(ours['p50'] - direct['p50']) * 1e3:>+9.2f} | {ours_cpu:>10.2f} | "
                  f"{ref['rps'] / direct['rps']:>10.2f} | {ref_cpu:>8.2f} | {'/'.join(map(str, failed))}")
    finally:
        for proc in (server, bare, upstream):
            if proc is not None:
                _stop(proc)


def _measured(pid: int, url: str, concurrency: int, duration_s: float) -> tuple[dict[str, object], float]:
    """Load `url` and return the client summary and the server's CPU ms per request (warm-up round included)."""
    proc = psutil.Process(pid)
    cpu0 = sum(proc.cpu_times()[:2])
    result = _client(url + "/v1/chat/completions", "tiny", concurrency, duration_s, auth=True)
    cpu_ms = (sum(proc.cpu_times()[:2]) - cpu0) * 1000 / max(int(result["ok"]) + concurrency, 1)
    return result, cpu_ms


def _peak_rss_mb(pid: int) -> float:
    """VmHWM (peak resident set) of a process, in MiB (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_server_rss() -> None:
    sys.path.insert(0, str(ROOT))
    from tinykit import build_kit

    kit = build_kit(ROOT / "build" / "tinykit" / "llama", arch="llama")
    server, url = _start_server(["--engine", "transformers", "--model-path", str(kit.base),
                                 "--base-model-name", kit.base_model_name])
    try:
        _wait_http(url + "/ready", server, {"Authorization": f"Bearer {API_KEY}"})
        result = _client(url + "/v1/chat/completions", kit.base_model_name, 4, 1.0, auth=True)
        print(f"CPU server (transformers engine, tiny kit): peak RSS {_peak_rss_mb(server.pid):.0f} MiB "
              f"after {result['ok']} requests ({result['failed']} failed)")
    finally:
        _stop(server)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=3.0)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64, 256])
    p.add_argument("--client", help="internal: run the load client against this URL and print JSON")
    p.add_argument("--model", default="tiny")
    p.add_argument("--auth", action="store_true")
    p.add_argument("--skip-rss", action="store_true")
    args = p.parse_args()
    if args.client:
        headers = {"Authorization": f"Bearer {API_KEY}"} if args.auth else {}
        req = RequestInput(args.client, args.model, headers)
        try:
            import uvloop
        except ImportError:
            summary = asyncio.run(run_load(req, args.concurrency[0], args.duration))
        else:
            summary = uvloop.run(run_load(req, args.concurrency[0], args.duration))
        print(json.dumps(summary))
        return
    overhead_table(args.concurrency, args.duration)
    if not args.skip_rss:
        cpu_server_rss()


if __name__ == "__main__":
    main()
