"""`python -m inference_server --engine transformers --model-path ... --adapter-store ... --port 8000`.

Prints the URL it listens on (the real port when `--port 0`). SIGTERM or SIGINT starts a graceful drain: stop
listening, answer 503 to new requests on open connections, wait for running streams, then stop the engine.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

from .api_router import create_app
from .config import ConfigError, ServerConfig
from .listener import listen


async def serve(config: ServerConfig) -> None:
    """Run until SIGTERM/SIGINT, then drain and stop."""
    listener = await listen(create_app(config), config)
    host = "127.0.0.1" if config.host in ("0.0.0.0", "") else config.host
    print(f"inference_server listening on http://{host}:{listener.port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
        logging.getLogger(__name__).info("draining")
    finally:
        await listener.close()


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = ServerConfig.from_args(argv)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(config))
    else:
        uvloop.run(serve(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
