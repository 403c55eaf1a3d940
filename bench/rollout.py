"""Rollout benchmark on the embedded default (devhost + Azurite + the CPU inference server, tiny model).

Prints one table: upload-to-live for a hot swap and for the restart path (p50 of N each, first deploy shown
apart since it starts the server), for each runtime asked (`--runtimes process,container`: the same rollouts with
the server as a process and in the inference image's container, side by side in one run), then the Durable host
overhead (bench/durable_overhead.py), and the memory of every process of each stack together.
Usage: `python bench/rollout.py [--runs 5] [--runtimes process,container]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from adapterctl.follow import follow  # noqa: E402
from devhost.up import local_stack  # noqa: E402

APP = "bench"


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


def main(runs: int, runtimes: list[str]) -> None:
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for runtime in runtimes:
            results[runtime] = measure(runtime, runs, Path(tmp))
    print(f"\nUpload → live on devhost (tiny model, CPU), {runs} runs each, by runtime (LOCAL_RUNTIME), one run")
    print("| runtime | path | n | p50 s | min s | max s | activation | failed |")
    print("|---|---|---|---|---|---|---|---|")
    for runtime, (samples, _, _) in results.items():
        for path in ("first deploy", "hot swap", "restart"):
            mine = [s for s in samples if s.path == path]
            times = [s.seconds for s in mine]
            kinds = sorted({s.activation or "-" for s in mine})
            print(f"| {runtime} | {path} | {len(times)} | {statistics.median(times):.2f} | {min(times):.2f} | "
                  f"{max(times):.2f} | {', '.join(kinds)} | {sum(s.stage != 'live' for s in mine)} |")
    print("target: hot swap live within 5 s of the upload")
    for runtime, (_, count, mem) in results.items():
        print(f"Memory of the {runtime} stack's {count} processes (Azurite, devhost, "
              f"{'docker client' if runtime == 'container' else 'inference server'}): {mem:.0f} MiB RSS")
    import durable_overhead

    asyncio.run(durable_overhead.main(3))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--runtimes", default="process",
                        help="comma-separated LOCAL_RUNTIME values to measure side by side (process,container: the "
                        "container runtime needs `make image` first)")
    args = parser.parse_args()
    main(args.runs, [r.strip() for r in args.runtimes.split(",") if r.strip()])
