"""Chat proxy overhead: direct to a fake streaming upstream vs through our server (SGLang engine, attached).

Three kinds of process, as in ANCHORS.md: the fake upstream (`tests.fakes.fake_sglang`, 64 tokens at 2 ms/token,
SSE), our server (`python -m inference_server --engine sglang --sglang-upstream URL`, auth + validation + metrics +
routing on), and a load client (this file with `--client`, one shared aiohttp session). For each concurrency it
runs direct, through our server, and through `bare_proxy.py` (the minimal aiohttp pass-through, as a reference
on a noisy machine), back to back, a few seconds each, for `--rounds` rounds, and prints one table of medians
(ratios and added latency are per-round pairs, so slow drift of a shared machine cancels); CPU time per request
comes from psutil. Then it prints the peak RSS of the CPU server with the tiny model kit.

    .venv/bin/python bench/chat_overhead.py [--duration 3] [--rounds 3] [--concurrency 1 16 64 256]
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


@dataclass
class Point:
    """One target at one concurrency: the client's summaries and the server's CPU ms/request, one per round."""

    runs: list[dict[str, object]] = field(default_factory=list)
    cpu_ms: list[float] = field(default_factory=list)

    def median(self, key: str) -> float:
        return statistics.median(float(r[key]) for r in self.runs)

    @property
    def failed(self) -> int:
        return sum(int(r["failed"]) for r in self.runs)


def _vs(proxied: Point, direct: Point) -> tuple[float, float]:
    """Median over rounds of (rps ratio, p50 added in ms), each round's pair measured back to back."""
    pairs = list(zip(proxied.runs, direct.runs, strict=True))
    ratio = statistics.median(float(p["rps"]) / float(d["rps"]) for p, d in pairs)
    added = statistics.median((float(p["p50"]) - float(d["p50"])) * 1e3 for p, d in pairs)
    return ratio, added


def overhead_table(concurrencies: list[int], duration_s: float, rounds: int) -> None:
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
        print(f"fake upstream: {TOKENS} tokens at {TOKEN_DELAY_S * 1000:g} ms/token; {duration_s:g} s per point, "
              f"median of {rounds} round(s) of direct, ours, bare back to back; {os.cpu_count()} CPUs; "
              f"'bare' = minimal aiohttp pass-through; CPU = the proxy's CPU ms per request")
        print(f"{'C':>4} | {'direct p50/p99 ms':>17} | {'ours p50/p99 ms':>15} | {'direct rps':>10} | {'ours rps':>8} | "
              f"{'ratio':>5} | {'p50 added':>9} | {'CPU ms/req':>10} | {'bare ratio/added':>16} | {'bare CPU':>8} | "
              f"failed")
        targets = {"direct": (None, f"http://127.0.0.1:{port}"), "ours": (server.pid, url),
                   "bare": (bare.pid, f"http://127.0.0.1:{bare_port}")}
        for c in concurrencies:
            points = {name: Point() for name in targets}
            for _ in range(rounds):
                for name, (pid, target) in targets.items():
                    result, cpu_ms = _measured(pid, target, c, duration_s)
                    points[name].runs.append(result)
                    points[name].cpu_ms.append(cpu_ms)
            direct, ours, ref = points["direct"], points["ours"], points["bare"]
            ratio, added = _vs(ours, direct)
            ref_ratio, ref_added = _vs(ref, direct)
            print(f"{c:>4} | {direct.median('p50') * 1e3:>7.1f} / {direct.median('p99') * 1e3:>7.1f} | "
                  f"{ours.median('p50') * 1e3:>6.1f} / {ours.median('p99') * 1e3:>6.1f} | "
                  f"{direct.median('rps'):>10.1f} | {ours.median('rps'):>8.1f} | {ratio:>5.2f} | {added:>+9.2f} | "
                  f"{statistics.median(ours.cpu_ms):>10.2f} | {ref_ratio:>5.2f} / {ref_added:>+8.2f} | "
                  f"{statistics.median(ref.cpu_ms):>8.2f} | {direct.failed}/{ours.failed}/{ref.failed}")
    finally:
        for proc in (server, bare, upstream):
            if proc is not None:
                _stop(proc)


def _measured(pid: int | None, url: str, concurrency: int, duration_s: float) -> tuple[dict[str, object], float]:
    """Load `url` with a client process; returns its summary and CPU ms per request of process `pid` (the proxy;
    NaN for None, the direct run), warm-up round included. Only the direct run skips the API key."""
    proc = psutil.Process(pid) if pid is not None else None
    cpu0 = sum(proc.cpu_times()[:2]) if proc else 0.0
    result = _client(url + "/v1/chat/completions", "tiny", concurrency, duration_s, auth=proc is not None)
    if proc is None:
        return result, float("nan")
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
    p.add_argument("--rounds", type=int, default=3, help="direct/ours/bare rounds per concurrency (medians)")
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
    overhead_table(args.concurrency, args.duration, args.rounds)
    if not args.skip_rss:
        cpu_server_rss()


if __name__ == "__main__":
    main()
