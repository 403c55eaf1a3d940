"""Settings not given as flags: the environment, else a running local stack's connection file.

`devhost up` (and so `make demo`) writes `<state-dir>/connection.env` (mode 0600), one `export NAME='value'` line
per setting. It is read here as data with `shlex`, never run. The state folder is `$DEVHOST_STATE_DIR`, else
`./.devhost/up`. The file describes one stack, so its values are used only when the orchestrator URL is that
stack's: no `--url` / `ADAPTERCTL_URL`, or the same URL.
"""

from __future__ import annotations

import shlex
import stat
from collections.abc import Callable, Mapping
from pathlib import Path

FILE_NAME = "connection.env"
DEFAULT_STATE_DIR = Path(".devhost") / "up"
#: The names the file may set; any other name is ignored (a newer `devhost up` may write more).
NAMES = frozenset({"ADAPTERCTL_URL", "ADAPTERS_STORAGE_CONNECTION", "INFERENCE_API_KEY", "CHAT_API_URL",
                   "CHAT_PAGE_URL", "DEVHOST_STATE_DIR"})


def connection_path(environ: Mapping[str, str]) -> Path:
    """Where a running stack's connection file is: `$DEVHOST_STATE_DIR/connection.env`, else `./.devhost/up/...`."""
    return Path(environ.get("DEVHOST_STATE_DIR") or DEFAULT_STATE_DIR) / FILE_NAME


def parse_connection(text: str) -> tuple[dict[str, str], list[str]]:
    """Values of `export NAME='value'` lines (blank and `#` lines skipped) and one problem per line that is not
    such a line. Problems name the line number only: a line may hold a secret."""
    values: dict[str, str] = {}
    problems: list[str] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            words = shlex.split(line, comments=True)
        except ValueError:  # an unclosed quote
            words = []
        if words[:1] == ["export"]:
            words = words[1:]
        name, equals, value = words[0].partition("=") if len(words) == 1 else ("", "", "")
        if not equals or not name.isidentifier():
            problems.append(f"line {number} is not `export NAME='value'`")
        elif name in NAMES:
            values[name] = value
    return values, problems


def read_connection(path: Path) -> tuple[dict[str, str], list[str]]:
    """The file's values and its problems (a missing file: nothing, no problem)."""
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}, []
    except (OSError, UnicodeDecodeError) as exc:
        return {}, [f"cannot be read ({type(exc).__name__})"]
    values, problems = parse_connection(text)
    if stat.S_IMODE(mode) & 0o077:
        problems.insert(0, f"has mode {stat.S_IMODE(mode):04o}, readable by others; it holds secrets: "
                           f"chmod 600 {path}")
    return values, problems


class Defaults:
    """`get(NAME)`: the environment's value, else the connection file's (when it is the same stack), else
    `default`. The file is read on first need; `warn` sees each of its problems once, as one line."""

    def __init__(self, environ: Mapping[str, str], url_flag: str | None = None,
                 warn: Callable[[str], None] = lambda _line: None) -> None:
        self.environ = environ
        self.url_flag = url_flag
        self.warn = warn
        self.path = connection_path(environ)
        self._file: dict[str, str] | None = None

    def file_values(self) -> dict[str, str]:
        """The connection file's values, or none when the orchestrator URL is set elsewhere to another URL."""
        if self._file is None:
            values, problems = read_connection(self.path)
            chosen = self.url_flag or self.environ.get("ADAPTERCTL_URL")
            if chosen and _same_url(chosen, values.get("ADAPTERCTL_URL")):
                chosen = None
            self._file = {} if chosen else values
            for problem in [] if chosen else problems:
                self.warn(f"warning: {self.path} {problem}")
        return self._file

    def get(self, name: str, default: str | None = None) -> str | None:
        return self.environ.get(name) or self.file_values().get(name) or default

    def origin(self, name: str) -> str:
        """Where `get(name)` finds its value, for messages: `NAME`, `NAME in <file>`, or `the built-in default`."""
        if self.environ.get(name):
            return name
        return f"{name} in {self.path}" if self.file_values().get(name) else "the built-in default"


def _same_url(a: str, b: str | None) -> bool:
    return b is not None and a.rstrip("/") == b.rstrip("/")

