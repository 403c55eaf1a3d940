"""Chat proxy overhead: direct to a fake streaming upstream vs through our server (SGLang engine, attached).

Three kinds of process, as in ANCHORS.md: the streaming upstream (`stream_upstream.py`: 64 tokens at 2 ms per
decode step, SGLang's SSE, paced by one shared clock like a batching engine), our server
(`python -m inference_server --engine sglang --sglang-upstream URL`, auth + validation + metrics + routing on), and
the load client (`load_client.py`, C keep-alive connections). Both harness processes are built on asyncio protocols
so that on a small machine the CPU goes to the server under test. For each concurrency it runs direct, through our
server, and through the references of ANCHORS.md measured in the same run: `bare_proxy.py` (the minimal aiohttp
pass-through) and, when `nginx` is installed, nginx with one worker and proxy_buffering off. They run back to back,
a few seconds each, for `--rounds` rounds, and one table of medians is printed (ratios and added latency are
per-round pairs, so slow drift of a shared machine cancels); CPU time per request comes from psutil. Then it prints
the peak RSS of the CPU server with the tiny model kit.

    .venv/bin/python bench/chat_overhead.py [--duration 3] [--rounds 3] [--concurrency 1 16 64 256]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
API_KEY = "bench-key"
TOKENS, TOKEN_DELAY_S = 64, 0.002


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
    cmd = [sys.executable, str(ROOT / "bench" / "load_client.py"), url, "--model", model, "--concurrency",
           str(concurrency), "--duration", str(duration_s)] + (["--auth", API_KEY] if auth else [])
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


NGINX_CONF = """worker_processes 1;
master_process off;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    upstream engine {{ server 127.0.0.1:{upstream_port}; keepalive 1024; }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://engine;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }}
    }}
}}
"""


def _start_nginx(upstream_port: int, workdir: Path) -> tuple[subprocess.Popen[bytes], str] | None:
    """nginx as in ANCHORS.md (one worker process, proxy_buffering off, keep-alive upstream), when installed."""
    binary = shutil.which("nginx", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin"]))
    if binary is None:
        return None
    port = _free_port()
    conf = workdir / "nginx.conf"
    conf.write_text(NGINX_CONF.format(dir=workdir, upstream_port=upstream_port, port=port))
    proc = subprocess.Popen([binary, "-p", str(workdir), "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    return proc, f"http://127.0.0.1:{port}"


def overhead_table(concurrencies: list[int], duration_s: float, rounds: int) -> None:
    port = _free_port()
    upstream_url = f"http://127.0.0.1:{port}"
    upstream = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "stream_upstream.py"), str(port), "--tokens", str(TOKENS),
         "--token-delay", str(TOKEN_DELAY_S)],
        cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    procs: list[subprocess.Popen[bytes]] = [upstream]
    with tempfile.TemporaryDirectory() as workdir:
        try:
            _wait_http(upstream_url + "/health", upstream)
            server, url = _start_server(["--engine", "sglang", "--sglang-upstream", upstream_url,
                                         "--base-model-name", "tiny"])
            procs.append(server)
            _wait_http(url + "/ready", server, {"Authorization": f"Bearer {API_KEY}"})
            targets: dict[str, tuple[int | None, str]] = {"direct": (None, upstream_url), "ours": (server.pid, url)}
            bare_port = _free_port()
            bare = subprocess.Popen([sys.executable, str(ROOT / "bench" / "bare_proxy.py"), upstream_url,
                                     str(bare_port)], cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            procs.append(bare)
            targets["bare"] = (bare.pid, f"http://127.0.0.1:{bare_port}")
            _wait_http(targets["bare"][1] + "/health", bare)
            nginx = _start_nginx(port, Path(workdir))
            if nginx is not None:
                procs.append(nginx[0])
                targets["nginx"] = (nginx[0].pid, nginx[1])
                _wait_http(nginx[1] + "/health", nginx[0])  # proxied to the upstream's
            _print_table(targets, concurrencies, duration_s, rounds)
        finally:
            for proc in reversed(procs):
                _stop(proc)


def _print_table(targets: dict[str, tuple[int | None, str]], concurrencies: list[int], duration_s: float,
                 rounds: int) -> None:
    refs = [name for name in targets if name not in ("direct", "ours")]
    print(f"upstream: {TOKENS} tokens, one per {TOKEN_DELAY_S * 1000:g} ms decode step; {duration_s:g} s per point, "
          f"median of {rounds} round(s) of {', '.join(targets)} back to back; {os.cpu_count()} CPUs; "
          f"'bare' = minimal aiohttp pass-through; CPU = the proxy's CPU ms per request")
    print(f"{'C':>4} | {'direct p50/p99 ms':>17} | {'ours p50/p99 ms':>15} | {'direct rps':>10} | {'ours rps':>8} | "
          f"{'ratio':>5} | {'p50 added':>9} | {'CPU ms/req':>10} | "
          + "".join(f"{name + ' ratio/added':>17} | {name + ' CPU':>9} | " for name in refs) + "failed")
    for c in concurrencies:
        points = {name: Point() for name in targets}
        for _ in range(rounds):
            for name, (pid, target) in targets.items():
                result, cpu_ms = _measured(pid, target, c, duration_s)
                points[name].runs.append(result)
                points[name].cpu_ms.append(cpu_ms)
        direct, ours = points["direct"], points["ours"]
        ratio, added = _vs(ours, direct)
        row = (f"{c:>4} | {direct.median('p50') * 1e3:>7.1f} / {direct.median('p99') * 1e3:>7.1f} | "
               f"{ours.median('p50') * 1e3:>6.1f} / {ours.median('p99') * 1e3:>6.1f} | "
               f"{direct.median('rps'):>10.1f} | {ours.median('rps'):>8.1f} | {ratio:>5.2f} | {added:>+9.2f} | "
               f"{statistics.median(ours.cpu_ms):>10.2f} | ")
        for name in refs:
            ref_ratio, ref_added = _vs(points[name], direct)
            row += f"{ref_ratio:>6.2f} / {ref_added:>+8.2f} | {statistics.median(points[name].cpu_ms):>9.2f} | "
        print(row + "/".join(str(points[name].failed) for name in targets), flush=True)


def _measured(pid: int | None, url: str, concurrency: int, duration_s: float) -> tuple[dict[str, object], float]:
    """Load `url` with a client process; returns its summary and CPU ms per request of process `pid` (the proxy;
    NaN for None, the direct run) over every request sent, warm-up included. Only the direct run skips the API key."""
    proc = psutil.Process(pid) if pid is not None else None
    cpu0 = sum(proc.cpu_times()[:2]) if proc else 0.0
    result = _client(url + "/v1/chat/completions", "tiny", concurrency, duration_s, auth=proc is not None)
    if proc is None:
        return result, float("nan")
    cpu_ms = (sum(proc.cpu_times()[:2]) - cpu0) * 1000 / max(int(result["sent"]), 1)
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
    p.add_argument("--skip-rss", action="store_true")
    args = p.parse_args()
    overhead_table(args.concurrency, args.duration, args.rounds)
    if not args.skip_rss:
        cpu_server_rss()


if __name__ == "__main__":
    main()
