"""`python -m chat_page --api-url http://127.0.0.1:8000 --api-key-env INFERENCE_API_KEY --port 7860`.

Runs offline: analytics off (set before Gradio is imported), no share link, no server-side rendering, no
monitoring or MCP endpoints. Prints the URL it listens on; SIGTERM or SIGINT closes the server and exits 0.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Sequence

from .client import ChatClient
from .config import PageConfig, PageConfigError


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config = PageConfig.from_args(argv)
    except PageConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # Block the stop signals before Gradio starts any thread (threads inherit the mask), then take them with
    # sigwait: no handler runs inside a lock wait, and a signal sent during start-up is not lost.
    stops = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stops)
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # Gradio reads it at import: no telemetry, no version check
    from .page import build_page

    page = build_page(ChatClient(config.api_url, config.api_key), config)
    _, url, _ = page.queue(default_concurrency_limit=config.concurrency).launch(
        server_name=config.host, server_port=config.port, share=False, auth=config.auth, show_error=False,
        ssr_mode=False, enable_monitoring=False, mcp_server=False, pwa=False, footer_links=[], quiet=True,
        prevent_thread_lock=True,
    )
    print(f"chat_page listening on {url} (chat API {config.api_url})", flush=True)
    signal.sigwait(stops)
    page.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
