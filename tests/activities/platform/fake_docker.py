"""A stand-in for the docker client, as strict as the real one where the local platform's container runtime uses it.

`fake_docker.py --log FILE --image NAME [--image NAME...] --standin SCRIPT -- <docker arguments>`; tests wrap it in
an executable `docker` script. Commands: `image inspect NAME` (exit 1 for an image not listed), `rm [-f] [-v] NAME`, and
`run --rm --name N --network host -v SRC:DST[:ro] -e NAME … IMAGE python -m inference_server ARGS…`, which checks
what the real client would refuse (an unknown flag, a relative or missing mount source, a taken container name)
and then runs the stand-in server with ARGS in the foreground, with the environment the container would get: the
`-e NAME=VALUE` pairs and the `-e NAME` names that are set in the client's environment. Every call is appended to FILE as one JSON line; the
stand-in inherits no other variable (as a container does not), and `docker rm -f` of a running container SIGKILLs it.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

RUN_FLAGS_WITH_VALUE = {"--name", "--network", "-v", "-e"}
RUN_SWITCHES = {"--rm"}


def _log(path: Path, entry: dict) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(entry) + "\n")


def _running(state: Path, name: str) -> int | None:
    """The pid of container `name` when it runs."""
    try:
        pid = int((state / name).read_text())
        os.kill(pid, 0)
    except (FileNotFoundError, ValueError, ProcessLookupError):
        return None
    return pid


def _run(args: list[str], opts: argparse.Namespace, state: Path) -> int:
    flags: dict[str, list[str]] = {"--name": [], "--network": [], "-v": [], "-e": [], "--rm": []}
    i = 0
    while i < len(args) and args[i].startswith("-"):
        flag = args[i]
        if flag in RUN_SWITCHES:
            flags[flag].append("")
            i += 1
        elif flag in RUN_FLAGS_WITH_VALUE and i + 1 < len(args):
            flags[flag].append(args[i + 1])
            i += 2
        else:
            print(f"unknown flag: {flag}", file=sys.stderr)
            return 125
    image, command = args[i], args[i + 1:]
    if image not in opts.image:
        print(f"Unable to find image '{image}' locally", file=sys.stderr)
        return 125
    for mount in flags["-v"]:
        src = mount.split(":")[0]
        if not os.path.isabs(src) or not os.path.exists(src):
            print(f"invalid mount source {src!r}", file=sys.stderr)
            return 125
    name = flags["--name"][0]
    if _running(state, name):
        print(f'Conflict. The container name "/{name}" is already in use', file=sys.stderr)
        return 125
    if command[:3] != ["python", "-m", "inference_server"]:
        print(f"fake docker runs only the inference server, not {command}", file=sys.stderr)
        return 125
    given = dict(e.split("=", 1) for e in flags["-e"] if "=" in e)  # -e NAME=VALUE, else NAME from our environment
    env = {n: os.environ[n] for n in flags["-e"] if "=" not in n and n in os.environ} | given
    env["PATH"] = os.environ.get("PATH", "")
    _log(opts.log, {"cmd": "run", "name": name, "mounts": flags["-v"], "env_names": [e.split("=", 1)[0] for e in flags["-e"]],
                    "network": flags["--network"], "rm": bool(flags["--rm"]), "image": image, "argv": command})
    (state / name).write_text(str(os.getpid()))
    os.execve(sys.executable, [sys.executable, opts.standin, *command[3:]], env)
    return 0  # not reached


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("--image", action="append", default=[])
    parser.add_argument("--standin", required=True)
    parser.add_argument("docker", nargs=argparse.REMAINDER)
    opts = parser.parse_args()
    args = opts.docker[1:] if opts.docker[:1] == ["--"] else opts.docker
    state = opts.log.parent / "containers"
    state.mkdir(exist_ok=True)
    if args[:2] == ["image", "inspect"]:
        _log(opts.log, {"cmd": "inspect", "image": args[2]})
        return 0 if args[2] in opts.image else 1
    if args[:1] == ["rm"] and len(args) >= 2 and set(args[1:-1]) <= {"-f", "-v"}:
        pid = _running(state, args[-1])
        if pid and "-f" in args:
            os.kill(pid, signal.SIGKILL)
        elif pid:
            print("cannot remove a running container without -f", file=sys.stderr)
            return 1
        (state / args[-1]).unlink(missing_ok=True)
        _log(opts.log, {"cmd": "rm", "name": args[-1], "was_running": bool(pid)})
        return 0
    if args[:1] == ["run"]:
        return _run(args[1:], opts, state)
    print(f"fake docker: unsupported command {args}", file=sys.stderr)
    return 125


if __name__ == "__main__":
    sys.exit(main())
