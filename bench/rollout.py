"""Rollout benchmark on the embedded default (devhost + Azurite + the CPU inference server, tiny model).

Prints one table: upload-to-live for a hot swap and for the restart path (p50 of N each, first deploy shown
apart since it starts the server), for each runtime asked (`--runtimes process,container`: the same rollouts with
the server as a process and in the inference image's container, side by side in one run), then the Durable host
overhead (bench/durable_overhead.py), and the memory of every process of each stack together.

Rows added only when asked, in the same table and run:
- `--replicas N`: one more stack with N local replicas per app (`LOCAL_REPLICAS`): the first deploy and N-run hot
  swaps (no policy: straight to all traffic, every replica counted by the gate); the issue's target is a p50 of at
  most 1.5 s with 3 replicas;
- `--canary`: on that stack (or, without `--replicas`, one of a single replica), `--canary-runs` uploads under the
  policy `{"canary": {"steps": [50, 100], "hold_s": 10}}` from upload to live: the 10 s hold at 50 %, then
  promotion; one caller thread chats through the app's endpoint meanwhile (callers `bench-<i>`, one token each),
  so the step's analysis has requests of both versions to judge; expect the hold plus a few seconds.
`--runtimes ""` leaves out today's rows (the new ones alone).
Usage: `python bench/rollout.py [--runs 5] [--runtimes process,container] [--replicas 3] [--canary]
[--canary-runs 1]`.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from adapterctl.follow import follow  # noqa: E402
from devhost.up import local_stack  # noqa: E402

APP = "bench"
CANARY_POLICY = {"canary": {"steps": [50, 100], "hold_s": 10}}
CANARY_PATH = "canary 50→100 %, 10 s hold"
PATHS = ("first deploy", "hot swap", "restart", CANARY_PATH)


@dataclass
class Sample:
    path: str  # "first deploy" | "hot swap" | "restart"
    seconds: float
    stage: str
    activation: str | None


def variant(src: Path, dest: Path, revision: int) -> Path:
    """New content (a changed config field), same weights: a distinct adapter version."""
    shutil.copytree(src, dest)
    config = json.loads((dest / "adapter_config.json").read_text())
    config["revision"] = revision
    (dest / "adapter_config.json").write_text(json.dumps(config))
    return dest


def upload_to_live(stack, folder: Path, name: str, label: str) -> Sample:
    started = time.perf_counter()
    uploaded = stack.store.upload_adapter_folder(folder, APP, name)
    record = follow(stack.api, uploaded.deployment_id, 300, lambda _: None, interval=0.05)
    return Sample(label, time.perf_counter() - started, record["stage"], record.get("activation"))


def request_to_live(stack, name: str) -> Sample:
    started = time.perf_counter()
    accepted = stack.api.deploy(APP, name, force_restart=True)
    record = follow(stack.api, accepted["id"], 300, lambda _: None, interval=0.05)
    return Sample("restart", time.perf_counter() - started, record["stage"], record.get("activation"))


def memory_mib(pids: list[int]) -> float:
    import psutil

    total = 0
    for pid in pids:
        try:
            total += psutil.Process(pid).memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total / (1 << 20)


def measure(runtime: str, runs: int, tmp: Path) -> tuple[list[Sample], int, float]:
    """One stack with `runtime` (LOCAL_RUNTIME): the first deploy, `runs` hot swaps, `runs` restarts; the samples,
    the stack's process count and their memory (a container's server is not among them: docker runs it)."""
    root = Path(__file__).resolve().parents[1]
    samples: list[Sample] = []
    env = {"LOCAL_RUNTIME": runtime}
    with local_stack(tmp / f"state-{runtime}", root / "build/tinykit/llama", extra_env=env) as stack:
        kit = stack.kit
        samples.append(upload_to_live(stack, kit.adapters["alpha"], "alpha", "first deploy"))
        for i in range(runs):
            src = kit.adapters["beta" if i % 2 == 0 else "alpha"]
            samples.append(upload_to_live(stack, variant(src, tmp / f"{runtime}-v{i}", i), f"v{i}", "hot swap"))
        for i in range(runs):
            samples.append(request_to_live(stack, f"v{i % 2}"))
        pids = stack.process_ids()
        return samples, len(pids), memory_mib(pids)


@contextmanager
def light_traffic(stack) -> Iterator[None]:
    """One thread of alias chats from rotating callers through the app's endpoint until the block ends."""
    import requests

    endpoint, stop = stack.api.app(APP)["endpoint"], threading.Event()

    def run() -> None:
        with requests.Session() as session:
            for i in itertools.count():
                if stop.is_set():
                    return
                session.post(f"{endpoint}/v1/chat/completions", timeout=60,
                             headers={"Authorization": f"Bearer {stack.api_key}"},
                             json={"model": "live", "messages": [{"role": "user", "content": "Hello there!"}],
                                   "max_tokens": 1, "user": f"bench-{i % 50}"})

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(60)


def wait_idle(stack, timeout: float = 60.0) -> None:
    """Until the app's reconciler has nothing left to roll out (a policy write is read before the next upload)."""
    deadline = time.monotonic() + timeout
    while (stack.api.app(APP).get("reconciler") or {}).get("phase") != "idle":
        if time.monotonic() > deadline:
            raise TimeoutError(f"the reconciler of {APP} never went idle")
        time.sleep(0.1)


def measure_replicas(replicas: int, runs: int, canary_runs: int, tmp: Path) -> tuple[list[Sample], int, float]:
    """One process stack with `replicas` local replicas: the first deploy, `runs` hot swaps, then `canary_runs`
    uploads under `CANARY_POLICY`; the samples, the stack's process count and their memory."""
    import requests

    root = Path(__file__).resolve().parents[1]
    samples: list[Sample] = []
    # three servers loading at once on a small machine: room for the first deploy's gate
    env = {"LOCAL_REPLICAS": str(replicas), "ROLLOUT_HOT_SWAP_TIMEOUT_S": "60"}
    with local_stack(tmp / f"state-replicas-{replicas}", root / "build/tinykit/llama", extra_env=env) as stack:
        kit = stack.kit
        samples.append(upload_to_live(stack, kit.adapters["alpha"], "alpha", "first deploy"))
        for i in range(runs):
            src = kit.adapters["beta" if i % 2 == 0 else "alpha"]
            samples.append(upload_to_live(stack, variant(src, tmp / f"replicas-v{i}", i), f"v{i}", "hot swap"))
        if canary_runs:
            answer = requests.put(f"{stack.url}/api/apps/{APP}/policy", json=CANARY_POLICY, timeout=30)
            answer.raise_for_status()
            wait_idle(stack)
        for i in range(canary_runs):
            src = kit.adapters["alpha" if (runs + i) % 2 == 0 else "beta"]
            folder = variant(src, tmp / f"canary-v{i}", 1000 + i)
            with light_traffic(stack):
                samples.append(upload_to_live(stack, folder, f"c{i}", CANARY_PATH))
        pids = stack.process_ids()
        return samples, len(pids), memory_mib(pids)


def main(runs: int, runtimes: list[str], replicas: int | None = None, canary_runs: int = 0) -> None:
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for runtime in runtimes:
            results[runtime] = measure(runtime, runs, Path(tmp))
        if replicas or canary_runs:
            label = f"process, {replicas or 1} replica{'s' if (replicas or 1) > 1 else ''}"
            results[label] = measure_replicas(replicas or 1, runs if replicas else 0, canary_runs, Path(tmp))
    print(f"\nUpload → live on devhost (tiny model, CPU), {runs} runs each, by runtime (LOCAL_RUNTIME) and local "
          "replicas, one run")
    print("| runtime | path | n | p50 s | min s | max s | activation | failed |")
    print("|---|---|---|---|---|---|---|---|")
    for runtime, (samples, _, _) in results.items():
        for path in PATHS:
            mine = [s for s in samples if s.path == path]
            if not mine:
                continue
            times = [s.seconds for s in mine]
            kinds = sorted({s.activation or "-" for s in mine})
            print(f"| {runtime} | {path} | {len(times)} | {statistics.median(times):.2f} | {min(times):.2f} | "
                  f"{max(times):.2f} | {', '.join(kinds)} | {sum(s.stage != 'live' for s in mine)} |")
    print("target: hot swap live within 5 s of the upload (1.5 s with 3 replicas); a canary: its holds plus a few s")
    for runtime, (_, count, mem) in results.items():
        print(f"Memory of the {runtime} stack's {count} processes (Azurite, devhost, "
              f"{'docker client' if runtime == 'container' else 'inference servers'}): {mem:.0f} MiB RSS")
    import durable_overhead

    asyncio.run(durable_overhead.main(3))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--runtimes", default="process",
                        help="comma-separated LOCAL_RUNTIME values to measure side by side (process,container: the "
                        "container runtime needs `make image` first)")
    parser.add_argument("--replicas", type=int, choices=range(1, 9), metavar="1..8",
                        help="also measure hot swaps on a stack with this many local replicas per app")
    parser.add_argument("--canary", action="store_true",
                        help=f"also measure upload to live under the policy {json.dumps(CANARY_POLICY)}")
    parser.add_argument("--canary-runs", type=int, default=1, help="canary rollouts with --canary (default 1)")
    args = parser.parse_args()
    main(args.runs, [r.strip() for r in args.runtimes.split(",") if r.strip()], args.replicas,
         args.canary_runs if args.canary else 0)
