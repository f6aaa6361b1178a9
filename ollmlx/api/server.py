"""`ollmlx serve`: run the supervisor until SIGINT/SIGTERM, then shut down in order."""

from __future__ import annotations

import errno
import logging
import logging.handlers
import sys

from aiohttp import web

from ..config import Settings
from .app import create_app

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_BACKUPS = 5  # rotated files kept next to the log file: server.log.1 ... .5


def setup_logging(settings: Settings) -> None:
    """Readable lines on stderr by hand; a rotating file when OLLMLX_LOG_FILE is set.

    A service runs for weeks, so its log must not grow without bound.
    """
    level = logging.DEBUG if settings.debug else logging.INFO
    handler: logging.Handler
    if settings.log_file is not None:
        settings.log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.handlers.RotatingFileHandler(
            settings.log_file,
            maxBytes=settings.log_max_bytes,
            backupCount=LOG_BACKUPS,
            encoding="utf-8",
        )
        print(f"ollmlx: logging to {settings.log_file}", file=sys.stderr, flush=True)
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    logging.basicConfig(level=level, handlers=[handler])
    # aiohttp's access log is one line per request: useful at debug level only.
    logging.getLogger("aiohttp.access").setLevel(
        logging.DEBUG if settings.debug else logging.WARNING
    )


def serve(settings: Settings) -> None:
    """Serve until a signal; in-flight streams get `shutdown_grace` seconds to finish.

    aiohttp's run_app stops accepting on SIGINT/SIGTERM, waits for handlers up to the
    grace period, then runs the app's cleanup, which stops every worker.
    """
    setup_logging(settings)
    log = logging.getLogger("ollmlx.server")
    log.info("ollmlx listening on %s", settings.base_url)
    try:
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
    except OSError as exc:
        # Most often another server (Ollama itself) holds the port: one line, not a traceback.
        reason = exc.strerror or str(exc)
        if exc.errno == errno.EADDRINUSE:
            reason = "address already in use"
        log.error("cannot listen on %s: %s", settings.base_url, reason)
        print(
            f"Error: listen tcp {settings.host}:{settings.port}: bind: {reason}",
            file=sys.stderr,
        )
        sys.exit(1)
    log.info("ollmlx stopped")
