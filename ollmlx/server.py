"""`ollmlx serve`: run the supervisor until SIGINT/SIGTERM, then shut down in order."""

from __future__ import annotations

import logging
import sys

from aiohttp import web

from .api.app import create_app
from .config import Settings


def setup_logging(debug: int) -> None:
    level = logging.DEBUG if debug else logging.INFO
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # aiohttp's access log is one line per request: useful at debug level only.
    logging.getLogger("aiohttp.access").setLevel(logging.DEBUG if debug else logging.WARNING)


def serve(settings: Settings) -> None:
    """Serve until a signal; in-flight streams get `shutdown_grace` seconds to finish.

    aiohttp's run_app stops accepting on SIGINT/SIGTERM, waits for handlers up to the
    grace period, then runs the app's cleanup, which stops every worker.
    """
    setup_logging(settings.debug)
    log = logging.getLogger("ollmlx.server")
    log.info("ollmlx listening on %s", settings.base_url)
    web.run_app(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        # The grace period is spent in the app's on_shutdown (wait_for_inflight).
        shutdown_timeout=1.0,
        handler_cancellation=True,
        print=None,
        access_log=logging.getLogger("aiohttp.access"),
    )
    log.info("ollmlx stopped")
