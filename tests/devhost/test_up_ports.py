"""The host's port under `local_stack(port=0)`: a port picked free can be taken before the host binds it (Azurite,
started on its own port 0, once got it; every request of that stack then reached Azurite and answered 404). The host
must answer on its own route before the stack is up, and a lost port is replaced by another."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from devhost import up

pytestmark = pytest.mark.slow


class _NotFound(BaseHTTPRequestHandler):
    """Answers every request 404 with an XML body, as Azurite does on a path that is not a blob."""

    def do_GET(self) -> None:  # noqa: N802 (the handler's name)
        self.send_response(404)
        self.send_header("Content-Type", "application/xml")
        self.end_headers()
        self.wfile.write(b"<Error><Code>ResourceNotFound</Code></Error>")

    def log_message(self, *_args: object) -> None:
        pass


@contextmanager
def foreign_server() -> Iterator[int]:
    """Another HTTP server on a loopback port; yields the port."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _NotFound)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_a_port_taken_after_it_was_picked_is_replaced(tiny_kit, tmp_path: Path, monkeypatch, capsys) -> None:
    """The first free port picked is taken by another server before the host starts. The other server's 404 is not
    taken for the host's answer; the host exits, another port is picked, and the stack's URL reaches the host."""
    picks: list[int] = []
    real_free_port = up.free_port
    with foreign_server() as taken:
        monkeypatch.setattr(up, "free_port", lambda: picks.append(0) or (taken if len(picks) == 1 else real_free_port()))
        with up.local_stack(tmp_path / "state", tiny_kit.root) as stack:
            assert len(picks) == 2 and not stack.url.endswith(f":{taken}")
            assert stack.api.apps() is not None
            assert f"port {taken} was taken before the host bound it" in capsys.readouterr().out
