"""The Azurite wrapper: free-port start, a working connection string, clear port-in-use error, clean stop."""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

import pytest

from devhost.azurite import Azurite, AzuriteError, PortInUseError

pytestmark = pytest.mark.azurite


def test_start_answers_and_stops() -> None:
    """Port 0 picks a free port; the connection string works with the SDK; stop ends the process."""
    from azure.storage.blob import BlobServiceClient

    emulator = Azurite(blob_port=0)
    with emulator:
        assert emulator.blob_endpoint.startswith("http://127.0.0.1:")
        client = BlobServiceClient.from_connection_string(emulator.connection_string)
        client.create_container("probe")
        assert [c.name for c in client.list_containers()] == ["probe"]
        assert emulator.running
        (pid,) = emulator.pids
    assert not emulator.running
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # terminated and reaped
    with pytest.raises(AzuriteError, match="not running"):
        _ = emulator.blob_endpoint


def test_port_in_use_names_the_port() -> None:
    """A taken port raises PortInUseError (an OSError) naming it, and leaves nothing running."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(PortInUseError, match=str(port)) as info:
            Azurite(blob_port=port).start()
    assert isinstance(info.value, OSError) and info.value.port == port


def test_missing_install_is_clear(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without node_modules the error says to run npm install."""
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(AzuriteError, match="npm install"):
        Azurite(bin_dir=tmp_path).start()


def test_location_keeps_blobs_across_restarts(tmp_path: Path) -> None:
    """With `location` the data lives in that folder: a crash (SIGKILL) and `restart()` keep the port and the blobs,
    and a new emulator on the same folder sees them too."""
    from azure.storage.blob import BlobServiceClient

    emulator = Azurite(blob_port=0, location=tmp_path / "blobs")
    with emulator:
        endpoint = emulator.blob_endpoint
        client = BlobServiceClient.from_connection_string(emulator.connection_string)
        client.get_container_client("keep").create_container()
        client.get_blob_client("keep", "a.txt").upload_blob(b"first")
        emulator.restart()  # a clean stop writes everything out; the same port again
        assert emulator.poll() is None
        os.kill(emulator.pids[0], signal.SIGKILL)
        emulator._services[0].process.wait()
        assert emulator.poll() == -signal.SIGKILL and not emulator.running
        emulator.restart()
        assert emulator.blob_endpoint == endpoint and emulator.poll() is None
        assert client.get_blob_client("keep", "a.txt").download_blob().readall() == b"first"
    assert (tmp_path / "blobs").is_dir() and emulator.poll() == -1
    with Azurite(location=tmp_path / "blobs") as again:
        client = BlobServiceClient.from_connection_string(again.connection_string)
        assert client.get_blob_client("keep", "a.txt").download_blob().readall() == b"first"
