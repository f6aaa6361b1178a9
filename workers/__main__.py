"""`python -m ollmlx_worker --model-dir DIR`: serve one model on 127.0.0.1.

The worker binds its port before importing MLX, prints `{"port": N, "link": ...}` on
stdout so the supervisor knows where to poll and where to send completions, and loads the
model while /health says "loading".
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from pathlib import Path

from aiohttp import web

from ollmlx.protocol import SECRET_ENV

from .engine import Engine
from .link import LinkServer, remove_socket
from .orphan import before_exit, exit_now, exit_when_gone, exit_when_orphaned
from .server import create_app

log = logging.getLogger("ollmlx.worker")

STOP_GRACE = 5.0  # seconds the engine thread gets to end its requests after SIGTERM


async def _serve(engine: Engine, secret: str, max_body: int, port: int, link_socket: str) -> bool:
    """Serve until SIGTERM; whether the engine thread then ended in time."""
    app = create_app(engine, secret, max_body)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    bound = runner.addresses[0][1]
    link = LinkServer(engine, secret)
    address = await link.start(link_socket)
    if link_socket:
        before_exit(lambda: remove_socket(link_socket))
    # The pid too: under mlx.launch the supervisor's child is the launcher, not us.
    print(json.dumps({"port": bound, "pid": os.getpid(), "link": address}), flush=True)
    engine.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)  # the handler only records; we act here
    await stop.wait()
    log.info("stopping")
    # Requests still running get an error line from the engine, which then returns;
    # the link writes those lines before it closes.
    engine.close()
    ended = await asyncio.to_thread(engine.join, STOP_GRACE)
    await link.close()
    await runner.shutdown()
    await runner.cleanup()
    return ended


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="ollmlx_worker")
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--adapter-dir", type=Path, default=None)
    parser.add_argument("--port", type=int, default=0, help="0: pick a free port and report it")
    parser.add_argument(
        "--link-socket", default="", help="the completion link's Unix socket; none: a TCP port"
    )
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--memory-limit", type=int, default=0, help="bytes; 0: no limit")
    parser.add_argument("--prompt-cache-bytes", type=int, default=0, help="0: no prompt cache")
    parser.add_argument("--max-body", type=int, default=64 << 20, help="request body limit")
    parser.add_argument("--prompt-cache-dir", type=Path, default=None, help="the disk tier")
    parser.add_argument("--prompt-cache-disk", type=int, default=0, help="its bytes; 0: off")
    group = parser.add_argument_group("a rank of a distributed group (under mlx.launch)")
    group.add_argument("--group", choices=("tensor", "pipeline"), default=None)
    group.add_argument("--group-hosts", default="", help="the hostfile's names, by rank")
    group.add_argument("--group-backend", default="ring")
    group.add_argument("--group-timeout", type=float, default=60.0)
    group.add_argument("--supervisor-pid", type=int, default=0)
    parser.add_argument("--draft-dir", type=Path, default=None, help="a draft model")
    parser.add_argument("--draft-num-predict", type=int, default=4, help="drafts per round")
    parser.add_argument("--kv-cache-type", default="f16", choices=("f16", "q8_0", "q4_0"))
    args = parser.parse_args(argv)
    spec = driver = None
    if args.group:
        # Imported here only: a worker of one process binds its port before MLX loads.
        from .group import GroupSpec, LockstepDriver

        hosts = tuple(h for h in args.group_hosts.split(",") if h)
        spec = GroupSpec(args.group, hosts, args.group_backend, args.group_timeout)
        if spec.rank > 0:
            from . import rank

            os.environ.pop(SECRET_ENV, None)
            rank.run(
                spec, args.model_dir, args.prompt_cache_bytes, args.log_level, args.kv_cache_type
            )
            return
        driver = LockstepDriver(spec)
    logging.basicConfig(
        level=args.log_level.upper(),
        format=f"%(asctime)s %(levelname)s worker[{os.getpid()}]{' rank0' if spec else ''} "
        "%(message)s",
        stream=sys.stderr,
    )
    secret = os.environ.pop(SECRET_ENV, "")
    if not secret:
        parser.error(f"{SECRET_ENV} must be set")
    # In a group our parent is mlx.launch, and a code other than 0 makes it stop every
    # other rank; the supervisor is watched on its own.
    exit_when_orphaned(os.getppid(), code=1 if spec else 0)
    if spec and args.supervisor_pid:
        exit_when_gone(args.supervisor_pid, code=1)
    disk = None
    if args.prompt_cache_dir is not None and args.prompt_cache_disk > 0:
        disk = (args.prompt_cache_dir, args.prompt_cache_disk)
    engine = Engine(
        args.model_dir,
        args.adapter_dir,
        args.memory_limit,
        args.prompt_cache_bytes,
        disk,
        driver=driver,
        draft_dir=args.draft_dir,
        draft_num_predict=args.draft_num_predict,
        kv_cache_type=args.kv_cache_type,
    )
    ended = asyncio.run(_serve(engine, secret, args.max_body, args.port, args.link_socket))
    log.info("stopped")
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown: daemon threads (pipe watchers) and MLX's own threads
    # can abort it ("_enter_buffered_busy", "terminate called ..."), a crash report per
    # unload on macOS. Everything worth keeping is flushed; the OS frees the rest.
    # A group's rank 0 whose engine is stuck (in a collective with a hung rank) says so
    # with its code: mlx.launch then stops every other rank.
    exit_now(0 if ended or not spec else 1)


if __name__ == "__main__":
    main()
