"""The running stack's connection file: parsing as data, where it is found, and flag > environment > file >
built-in precedence, seen from the server each command actually calls."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

from adapterctl.connection import Defaults, connection_path, parse_connection, read_connection
from tests.adapterctl.conftest import Run, write_connection
from tests.adapterctl.fake_api import FakeApi, serve

TRICKY = {  # what a shell would keep as one word each: quotes, spaces, `$`, `;`, `#`, `=`
    "ADAPTERS_STORAGE_CONNECTION": "DefaultEndpointsProtocol=http;AccountName=dev;AccountKey=a+b/c==;",
    "INFERENCE_API_KEY": "it's a \"key\" with $HOME; # not a comment",
    "CHAT_PAGE_URL": "http://127.0.0.1:7860/ page",
}


def test_round_trip_of_shell_quoted_values(tmp_path: Path) -> None:
    """Values written with shlex.quote (as devhost up writes them) read back exactly, with no shell run."""
    values, problems = read_connection(write_connection(tmp_path, TRICKY))
    assert values == TRICKY and problems == []


def test_parse_skips_comments_and_unknown_names_and_reports_bad_lines_by_number() -> None:
    """Blank and `#` lines are skipped, unknown names ignored, `export` optional; a bad line is named by number
    only (it may hold a secret)."""
    text = ("# written by devhost up\n\nexport ADAPTERCTL_URL='http://h:1'\nINFERENCE_API_KEY=k\n"
            "export SOMETHING_NEW='x'\nexport CHAT_API_URL='unclosed\nrm -rf / secret-ish\nexport\n")
    values, problems = parse_connection(text)
    assert values == {"ADAPTERCTL_URL": "http://h:1", "INFERENCE_API_KEY": "k"}
    assert problems == [f"line {n} is not `export NAME='value'`" for n in (6, 7, 8)]
    assert not any("secret" in p or "unclosed" in p for p in problems)


def test_a_file_others_can_read_is_reported_but_a_missing_one_is_not(tmp_path: Path) -> None:
    """Mode 0644 is a problem naming the mode and the fix; no file is no problem and no values."""
    path = write_connection(tmp_path, {"INFERENCE_API_KEY": "k"}, mode=0o644)
    values, problems = read_connection(path)
    assert values == {"INFERENCE_API_KEY": "k"}
    assert problems == [f"has mode 0644, readable by others; it holds secrets: chmod 600 {path}"]
    assert read_connection(tmp_path / "absent.env") == ({}, [])


def test_path_is_state_dir_or_dot_devhost_up(tmp_path: Path) -> None:
    assert connection_path({"DEVHOST_STATE_DIR": str(tmp_path)}) == tmp_path / "connection.env"
    assert connection_path({}) == Path(".devhost/up/connection.env")


def test_defaults_use_the_file_only_for_its_own_stack(tmp_path: Path) -> None:
    """Environment over file over default; a different URL (flag or environment) leaves the file out entirely."""
    write_connection(tmp_path, {"ADAPTERCTL_URL": "http://stack:1/", "INFERENCE_API_KEY": "file-key"})
    env = {"DEVHOST_STATE_DIR": str(tmp_path)}
    assert Defaults(env).get("INFERENCE_API_KEY") == "file-key"
    assert Defaults({**env, "INFERENCE_API_KEY": "env-key"}).get("INFERENCE_API_KEY") == "env-key"
    assert Defaults(env).get("ADAPTERCTL_FUNCTION_KEY", "builtin") == "builtin"
    assert Defaults(env, url_flag="http://stack:1").get("INFERENCE_API_KEY") == "file-key"  # same stack
    assert Defaults(env, url_flag="https://azure.example").get("INFERENCE_API_KEY") is None
    assert Defaults({**env, "ADAPTERCTL_URL": "https://azure.example"}).get("INFERENCE_API_KEY") is None


def test_warnings_come_once_and_only_when_the_file_is_used(tmp_path: Path) -> None:
    write_connection(tmp_path, {"INFERENCE_API_KEY": "s3cr3t-value"}, mode=0o640)
    seen: list[str] = []
    defaults = Defaults({"DEVHOST_STATE_DIR": str(tmp_path)}, warn=seen.append)
    defaults.get("INFERENCE_API_KEY")
    defaults.get("ADAPTERCTL_URL")
    assert len(seen) == 1 and "mode 0640" in seen[0] and "s3cr3t" not in seen[0]
    ignored: list[str] = []
    Defaults({"DEVHOST_STATE_DIR": str(tmp_path)}, url_flag="https://elsewhere", warn=ignored.append).get("X")
    assert ignored == []


def _apps_seen(api: FakeApi) -> int:
    return sum(1 for method, path, _ in api.requests if (method, path) == ("GET", "/api/apps"))


@pytest.fixture
def three(api: FakeApi):
    """Three orchestrators: `api` (named by the flag), one for the environment, one for the connection file."""
    with serve() as env_api, serve() as file_api:
        for fake in (api, env_api, file_api):
            fake.routes["/api/apps"] = (200, {"apps": []})
        yield api, env_api, file_api


def test_url_precedence_flag_env_file(run: Run, three, isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With all three set, the flag's server is called; without the flag, the environment's; then the file's
    (found in ./.devhost/up of the working folder, as after `make demo` there)."""
    flag_api, env_api, file_api = three
    write_connection(isolated / ".devhost" / "up", {"ADAPTERCTL_URL": file_api.url})
    monkeypatch.setenv("ADAPTERCTL_URL", env_api.url)
    assert run("--url", flag_api.url, "apps")[0] == 0
    assert run("apps")[0] == 0
    monkeypatch.delenv("ADAPTERCTL_URL")
    assert run("apps")[0] == 0
    assert [_apps_seen(a) for a in three] == [1, 1, 1]


def test_builtin_url_when_nothing_else(isolated: Path) -> None:
    """No flag, environment or file: the documented built-in URL."""
    from adapterctl.cli import build_parser, resolve_settings

    args = build_parser().parse_args(["apps"])
    resolve_settings(args, {})
    assert args.url == "http://127.0.0.1:7071" and args.function_key is None


def test_chat_key_precedence_flag_env_file(run: Run, api: FakeApi, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The chat API key sent: --api-key, else INFERENCE_API_KEY, else the file's (found via DEVHOST_STATE_DIR)."""
    state = tmp_path / "state"
    write_connection(state, {"ADAPTERCTL_URL": api.url, "INFERENCE_API_KEY": "file key"})
    monkeypatch.setenv("DEVHOST_STATE_DIR", str(state))
    api.routes["/api/apps/demo"] = (200, {"app": "demo", "endpoint": api.url, "manifest": {"alias": "live"}})
    api.chat_reply = ["hi"]
    run("chat", "demo", "Hello", "--api-key", "flag-key")
    monkeypatch.setenv("INFERENCE_API_KEY", "env-key")
    run("chat", "demo", "Hello")
    monkeypatch.delenv("INFERENCE_API_KEY")
    code, out, err = run("chat", "demo", "Hello")
    assert code == 0 and out == "hi\n" and err == ""
    sent = [h.get("Authorization") for _, path, h in api.requests if path == "/v1/chat/completions"]
    assert sent == ["Bearer flag-key", "Bearer env-key", "Bearer file key"]


def test_storage_from_the_file_but_never_mixed_with_the_environment(run: Run, api: FakeApi, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """deploy takes the file's storage connection; an environment account URL wins over it, and an http:// one is
    a one-line input error before anything is uploaded."""
    from adapterctl.cli import build_parser, resolve_settings

    write_connection(tmp_path, {"ADAPTERCTL_URL": api.url, "ADAPTERS_STORAGE_CONNECTION": "UseDevelopmentStorage=true"})
    env = {"DEVHOST_STATE_DIR": str(tmp_path)}
    args = build_parser().parse_args(["deploy", "x", "--app", "a"])
    resolve_settings(args, env)
    assert (args.storage_connection, args.account_url, args.url) == ("UseDevelopmentStorage=true", None, api.url)
    args = build_parser().parse_args(["deploy", "x", "--app", "a"])
    resolve_settings(args, {**env, "ADAPTERS_ACCOUNT_URL": "http://127.0.0.1:10000/devstoreaccount1"})
    assert (args.storage_connection, args.account_url) == (None, "http://127.0.0.1:10000/devstoreaccount1")
    monkeypatch.setenv("DEVHOST_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("ADAPTERS_ACCOUNT_URL", "http://127.0.0.1:10000/devstoreaccount1")
    code, out, err = run("deploy", str(tmp_path), "--app", "a")
    assert code == 2 and out == ""
    assert err == ("adapterctl: --account-url must start with https:// (for Azurite over http, give its "
                   "connection string with --storage-connection)\n")
    assert not [r for r in api.requests if r[0] == "POST"]


def test_bad_lines_warn_on_stderr_and_the_rest_is_used(run: Run, api: FakeApi, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """An unparseable line and a loose mode: one `adapterctl: warning:` line each on stderr, none in --json's
    stdout document, and the good lines still find the stack."""
    path = write_connection(tmp_path, {"ADAPTERCTL_URL": api.url}, mode=0o644)
    path.write_text(path.read_text() + "export INFERENCE_API_KEY='oops\n")
    monkeypatch.setenv("DEVHOST_STATE_DIR", str(tmp_path))
    api.routes["/api/apps"] = (200, {"apps": []})
    code, out, err = run("--json", "apps")
    assert code == 0 and json.loads(out) == []
    assert err.splitlines() == [f"adapterctl: warning: {path} has mode 0644, readable by others; it holds "
                                f"secrets: chmod 600 {path}",
                                f"adapterctl: warning: {path} line 2 is not `export NAME='value'`"]
    assert "oops" not in err and os.stat(path).st_mode & 0o777 == 0o644


def test_a_stopped_stacks_file_is_named_when_its_url_does_not_answer(run: Run, isolated: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The file outlives its stack: a URL taken from it that does not answer says where it came from (exit 3); a
    URL from the environment gets no such hint."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    write_connection(isolated / ".devhost" / "up", {"ADAPTERCTL_URL": dead})
    code, _, err = run("apps")
    assert code == 3 and f"not reachable at {dead}" in err and "connection.env: has that stack stopped?" in err, err
    monkeypatch.setenv("ADAPTERCTL_URL", dead)
    code, _, err = run("apps")
    assert code == 3 and "has that stack stopped" not in err
