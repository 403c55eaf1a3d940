"""Command line: `python -m tinykit build OUT_DIR [--arch llama|phi3] [--force]`."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from .build import ARCHS, build_kit


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and build the kit; prints where the base model and adapters are."""
    parser = argparse.ArgumentParser(prog="python -m tinykit", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="build the tiny base model and its adapters")
    build.add_argument("out_dir", type=Path)
    build.add_argument("--arch", choices=sorted(ARCHS), default="llama")
    build.add_argument("--force", action="store_true", help="rebuild even when the stamp matches")
    args = parser.parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one line per step is enough for a command
    started = time.perf_counter()
    paths = build_kit(args.out_dir, arch=args.arch, force=args.force)
    print(f"base model {paths.base_model_name}: {paths.base}")
    for name, folder in paths.adapters.items():
        print(f"adapter {name}: {folder}")
    print(f"done in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
