"""The Azurite wrapper: free-port start, a working connection string, clear port-in-use error, clean stop."""

from __future__ import annotations

import os
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
