"""`python -m ollmlx_worker --model-dir DIR`: serve one model on 127.0.0.1.

The worker binds its port before importing MLX, prints `{"port": N}` on stdout so the
supervisor knows where to poll, and loads the model while /health says "loading".
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

from aiohttp import web

from ollmlx.protocol import SECRET_ENV

from .engine import Engine
from .server import create_app

log = logging.getLogger("ollmlx.worker")

STOP_GRACE = 5.0  # seconds the engine thread gets to end its requests after SIGTERM


def _exit_when_orphaned(parent_pid: int) -> None:
    """Exit as soon as the supervisor is gone, even after a SIGKILL of it.

    The supervisor holds the write end of our stdin: end of file means it died. The
    parent-pid check covers a stdin that is not a pipe. Both work on macOS and Linux.
    """

    def read_stdin() -> None:
        try:
            while sys.stdin.buffer.read(4096):
                pass
        except (OSError, ValueError):
            return
        log.info("supervisor closed the pipe; exiting")
        os._exit(0)

    def poll_parent() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.25)
        log.info("supervisor %d is gone; exiting", parent_pid)
        os._exit(0)

    if not sys.stdin.isatty():
        threading.Thread(target=read_stdin, name="stdin-watch", daemon=True).start()
    threading.Thread(target=poll_parent, name="parent-watch", daemon=True).start()


async def _serve(app: web.Application, engine: Engine, port: int) -> None:
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    bound = runner.addresses[0][1]
    print(json.dumps({"port": bound}), flush=True)
    engine.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)  # the handler only records; we act here
    await stop.wait()
    log.info("stopping")
    # Requests still running get an error line from the engine, which then returns;
    # the handlers write those lines before the server closes their connections.
    engine.close()
    await asyncio.to_thread(engine.join, STOP_GRACE)
    await runner.shutdown()
    await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="ollmlx_worker")
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--adapter-dir", type=Path, default=None)
    parser.add_argument("--port", type=int, default=0, help="0: pick a free port and report it")
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--memory-limit", type=int, default=0, help="bytes; 0: no limit")
    parser.add_argument("--prompt-cache-bytes", type=int, default=0, help="0: no prompt cache")
    parser.add_argument("--max-body", type=int, default=64 << 20, help="request body limit")
    parser.add_argument("--prompt-cache-dir", type=Path, default=None, help="the disk tier")
    parser.add_argument("--prompt-cache-disk", type=int, default=0, help="its bytes; 0: off")
    parser.add_argument("--draft-dir", type=Path, default=None, help="a draft model")
    parser.add_argument("--draft-num-predict", type=int, default=4, help="drafts per round")
    parser.add_argument("--kv-cache-type", default="f16", choices=("f16", "q8_0", "q4_0"))
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format=f"%(asctime)s %(levelname)s worker[{os.getpid()}] %(message)s",
        stream=sys.stderr,
    )
    secret = os.environ.pop(SECRET_ENV, "")
    if not secret:
        parser.error(f"{SECRET_ENV} must be set")
    _exit_when_orphaned(os.getppid())
    disk = None
    if args.prompt_cache_dir is not None and args.prompt_cache_disk > 0:
        disk = (args.prompt_cache_dir, args.prompt_cache_disk)
    engine = Engine(
        args.model_dir,
        args.adapter_dir,
        args.memory_limit,
        args.prompt_cache_bytes,
        disk,
        draft_dir=args.draft_dir,
        draft_num_predict=args.draft_num_predict,
        kv_cache_type=args.kv_cache_type,
    )
    asyncio.run(_serve(create_app(engine, secret, args.max_body), engine, args.port))
    log.info("stopped")
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown: daemon threads (pipe watchers) and MLX's own threads
    # can abort it ("_enter_buffered_busy", "terminate called ..."), a crash report per
    # unload on macOS. Everything worth keeping is flushed; the OS frees the rest.
    os._exit(0)


if __name__ == "__main__":
    main()
