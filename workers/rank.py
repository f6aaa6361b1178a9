"""A rank other than 0 of a distributed group: no HTTP, no requests of its own.

`mlx.launch` starts it on its host (`python -m ollmlx_worker --group ...` with MLX_RANK
set). It loads its shard and then does, step for step, what rank 0 broadcasts
(lockstep.Follower), on its main thread, the only one that touches MLX here.

It leaves by itself when the group can no longer work: rank 0 says quit (exit 0), rank 0
is gone or silent for longer than the group timeout, or its launcher is gone (exit 1, so
that mlx.launch stops every other rank too). A load problem is reported by rank 0, so it
leaves quietly (exit 0) and lets rank 0 answer.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from .group import GroupSpec, Member
from .lockstep import Channel, Digest, Follower, GroupBatchRunner, GroupError
from .orphan import exit_when_orphaned

log = logging.getLogger("ollmlx.worker")


def run(
    spec: GroupSpec,
    model_dir: Path,
    prompt_cache_bytes: int,
    log_level: str,
    kv_cache_type: str = "f16",
) -> None:
    logging.basicConfig(
        level=log_level.upper(),
        format=f"%(asctime)s %(levelname)s rank{spec.rank}[{os.getpid()}]@{spec.host} %(message)s",
        stream=sys.stderr,
    )
    # mlx.launch merges every rank's stdout into the one the supervisor reads rank 0's
    # port from: this rank writes nothing there.
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    exit_when_orphaned(os.getppid(), code=1)
    log.info("rank %d on %s: pid %d", spec.rank, spec.host, os.getpid())
    member = Member(spec)
    try:
        member.join()
        model, tokenizer = member.load(model_dir)
    except GroupError as exc:  # every rank knows; rank 0 reports it through /health
        log.error("the group cannot load: %s", exc)
        _leave(0)
    except Exception:
        log.exception("loading failed")
        _leave(1)
    channel = Channel(member.group, Digest())
    from .kvquant import kv_settings

    kv_bits, kv_group = kv_settings(model, kv_cache_type)  # as rank 0's engine does
    batch = GroupBatchRunner(model, tokenizer, prompt_cache_bytes, channel, kv_bits, kv_group)
    try:
        Follower(channel, batch, spec.timeout).run()
    except GroupError as exc:
        log.error("leaving the group: %s", exc)
        _leave(1)
    except BaseException:
        log.exception("this rank failed; the group goes down")
        _leave(1)
    log.info("stopped")
    _leave(0)


def _leave(code: int) -> None:
    logging.shutdown()
    sys.stderr.flush()
    os._exit(code)  # as the worker does: skip a teardown that MLX's threads can abort
