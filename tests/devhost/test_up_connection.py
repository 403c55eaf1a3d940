"""`devhost up`'s connection file, its port checks and its port flags, without starting a stack."""

from __future__ import annotations

import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from devhost.cli import build_parser
from devhost.host import PortInUseError
from devhost.up import CONNECTION_NAMES, ROOT, check_ports, free_port, write_connection

VALUES = {
    "ADAPTERCTL_URL": "http://127.0.0.1:7071",
    "ADAPTERS_STORAGE_CONNECTION": "DefaultEndpointsProtocol=http;AccountName=a;AccountKey=k+/==;BlobEndpoint=x;",
    "INFERENCE_API_KEY": "it's $HOME `and` \"quotes\" \\ too",
    "DEVHOST_STATE_DIR": "/tmp/a folder/state",
}


def sourced(path: Path) -> dict[str, str]:
    """The values bash sees after `source path` (the file is run by a real shell)."""
    script = f'source "$1" && for n in {" ".join(CONNECTION_NAMES)}; do printf "%s=%s\\0" "$n" "${{!n-<unset>}}"; done'
    out = subprocess.run(["bash", "-c", script, "bash", str(path)], capture_output=True, text=True, check=True,
                         env={"PATH": "/usr/bin:/bin"})
    pairs = (item.split("=", 1) for item in out.stdout.split("\0") if item)
    return {name: value for name, value in pairs if value != "<unset>"}


def test_connection_file_is_private_and_sources_to_the_values(tmp_path: Path) -> None:
    path = tmp_path / "connection.env"
    write_connection(path, VALUES)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sourced(path) == VALUES
    exports = [line for line in path.read_text().splitlines() if not line.startswith("#")]
    assert [line.split("=", 1)[0] for line in exports] == [f"export {n}" for n in CONNECTION_NAMES if n in VALUES]
    assert all(line.split("=", 1)[1].startswith("'") for line in exports)  # export NAME='value'


def test_rewrite_replaces_the_file_and_keeps_it_private(tmp_path: Path) -> None:
    """A rewrite (new ports, a chat page) replaces the whole file; an old file readable by others is not kept."""
    path = tmp_path / "connection.env"
    path.write_text("export CHAT_PAGE_URL='http://old'\n")
    path.chmod(0o644)
    write_connection(path, {**VALUES, "CHAT_API_URL": "http://127.0.0.1:9/v1"})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sourced(path) == {**VALUES, "CHAT_API_URL": "http://127.0.0.1:9/v1"}
    assert [p.name for p in tmp_path.iterdir()] == ["connection.env"]  # no temporary file left


@pytest.mark.parametrize("flag", ["--port", "--azurite-port", "--inference-port", "--chat-page-port"])
def test_taken_port_names_its_flag(flag: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        wanted = {"--port": 0, "--azurite-port": 0, "--inference-port": 0, "--chat-page-port": 0, flag: port}
        with pytest.raises(PortInUseError, match=rf"port {port} .*in use; pass another {flag} \(0: any free port\)"):
            check_ports(wanted)


def test_one_port_for_two_flags_is_refused() -> None:
    port = free_port()
    with pytest.raises(PortInUseError, match=f"--port and --chat-page-port both ask for port {port}"):
        check_ports({"--port": port, "--chat-page-port": port})
    check_ports({"--port": 0, "--azurite-port": 0, "--chat-page-port": port})  # 0 is any port, never a clash


def test_time_wait_connections_do_not_block_a_restart() -> None:
    """After a server (with SO_REUSEADDR, as all of ours) closed its side of a connection first (TIME_WAIT on its
    port, as after a stop), the port is free for our servers; a plain bind, as the old check did, refuses it."""
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = server.accept()
        accepted.close()  # the server closes first: its end goes to TIME_WAIT
        time.sleep(0.1)
        client.close()
    time.sleep(0.1)
    with socket.socket() as plain, pytest.raises(OSError):
        plain.bind(("127.0.0.1", port))
    check_ports({"--port": port})


def test_port_flags_zero_is_any_port_and_the_page_has_its_own_switch() -> None:
    parser = build_parser()
    args = parser.parse_args(["up"])
    assert (args.port, args.chat_page_port, args.no_chat_page) == (7071, 7860, False)
    args = parser.parse_args(["up", "--port", "0", "--chat-page-port", "0", "--azurite-port", "0"])
    assert (args.port, args.chat_page_port, args.azurite_port, args.no_chat_page) == (0, 0, 0, False)
    assert parser.parse_args(["up", "--no-chat-page"]).no_chat_page
    with pytest.raises(SystemExit) as exited:
        parser.parse_args(["up", "--inference-port", "70000"])
    assert exited.value.code == 2


def test_container_runtime_without_its_image_stops_before_anything_starts(tmp_path: Path) -> None:
    """`up --runtime container` with an image the engine lacks (or no engine, or no docker client) exits 2 with one
    line saying what to do, before any child or state folder is made."""
    args = build_parser().parse_args(["up", "--runtime", "container", "--image", "lora-inference:no-such-tag"])
    assert (args.runtime, args.image) == ("container", "lora-inference:no-such-tag")
    assert build_parser().parse_args(["up"]).runtime == "process"
    proc = subprocess.run([sys.executable, "-m", "devhost", "up", "--runtime", "container", "--image",
                           "lora-inference:no-such-tag", "--once", "--state-dir", str(tmp_path / "state")],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.startswith("devhost up: --runtime container") and proc.stderr.count("\n") == 1, proc.stderr
    assert "make image" in proc.stderr or "docker client" in proc.stderr
    assert not (tmp_path / "state").exists()


def test_image_built_from_other_sources_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """The image label is a digest of inference_image/ (caches left out); `check_image` warns when the image was
    built from other sources (or has no label), and says nothing when they match."""
    import devhost.up as up
    from devhost.image import sources_digest

    (tmp_path / "pkg" / "__pycache__").mkdir(parents=True)
    (tmp_path / "pkg" / "server.py").write_text("A = 1\n")
    before = sources_digest(tmp_path)
    (tmp_path / "pkg" / "__pycache__" / "server.cpython-311.pyc").write_bytes(b"cache")
    assert sources_digest(tmp_path) == before
    (tmp_path / "pkg" / "server.py").write_text("A = 2\n")
    assert sources_digest(tmp_path) != before

    for label, warned in ((sources_digest(), False), ("0" * 64, True), ("<no value>", True)):
        monkeypatch.setattr(up.subprocess, "run",
                            lambda *a, label=label, **k: subprocess.CompletedProcess(a, 0, label + "\n", ""))
        up.check_image("lora-inference:cpu")
        err = capsys.readouterr().err
        assert ("was not built from the inference_image/ sources here" in err) is warned, err
        assert ("no sources label" in err) is (label == "<no value>")
