"""Run by the SGLang contract venv's python (tests/contracts/test_sglang_args.py): each command line read as JSON
from stdin goes through SGLang's own launch-time argument handling, exactly as `python -m sglang.launch_server`
and its Engine do it: `prepare_server_args(argv)`, `resolve_once()`, `check_server_args()`. Prints one JSON object
`{"results": [{"ok": bool, "error": str}, ...]}` on the last line. Imports nothing of the project.
"""

from __future__ import annotations

import json
import logging
import sys
import traceback
import warnings


def check(argv: list[str]) -> dict[str, object]:
    from sglang.srt.server_args import prepare_server_args

    try:
        server_args = prepare_server_args(argv)
        server_args.resolve_once()
        server_args.check_server_args()
    except SystemExit as exc:  # argparse refusing an argument or a choice
        return {"ok": False, "error": f"argparse exit {exc.code}"}
    except BaseException as exc:  # noqa: BLE001 - SGLang's checks are asserts and ValueErrors alike
        last = traceback.format_exception_only(type(exc), exc)[-1].strip()
        return {"ok": False, "error": last}
    return {"ok": True, "error": ""}


def main() -> None:
    warnings.simplefilter("ignore")
    cases = json.load(sys.stdin)
    results = []
    for argv in cases:
        results.append(check(argv))
        logging.getLogger().handlers.clear()  # prepare_server_args reconfigures logging per call
    print("\n" + json.dumps({"results": results}), flush=True)


if __name__ == "__main__":
    main()
