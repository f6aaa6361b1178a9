"""A worker's part in a distributed group: join it, check and load one shard, and the
step driver that rank 0's engine runs with.

Every rank runs this same code under `mlx.launch` (MLX_RANK tells which one it is):
join with `mx.distributed.init`, compare its model files with rank 0's, `sharded_load`
(tensor parallelism through the model's `shard()`, pipeline through `pipeline()`), then
tell every rank what went wrong anywhere. A problem on any host is reported by rank 0,
through /health, naming the host; the other ranks just leave.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .driver import SingleProcess
from .lockstep import (
    HEARTBEAT,
    Channel,
    Digest,
    GroupBatchRunner,
    GroupError,
    Leader,
    array_bytes,
    byte_array,
    ints,
)

log = logging.getLogger("ollmlx.worker")

# mx.distributed.init's name for each backend of mlx.launch's.
_INIT_BACKEND = {"ring": "ring", "jaccl": "jaccl", "jaccl-ring": "jaccl"}


@dataclass(frozen=True)
class GroupSpec:
    parallelism: str  # "tensor" | "pipeline"
    hosts: tuple[str, ...]  # the hostfile's names, by rank (for messages)
    backend: str = "ring"
    timeout: float = 60.0  # a step longer than this means a rank stalled

    @property
    def rank(self) -> int:
        return int(os.environ.get("MLX_RANK", "0"))

    @property
    def host(self) -> str:
        rank = self.rank
        return self.hosts[rank] if rank < len(self.hosts) else f"rank {rank}"

    def where(self, rank: int) -> str:
        return f"host {self.hosts[rank]} (rank {rank})"


class Member:
    """This process as one rank of the group."""

    def __init__(self, spec: GroupSpec) -> None:
        self.spec = spec
        self.group: Any = None
        self.rank_memory: list[int] = []  # bytes of weights each rank holds

    def join(self) -> Any:
        import mlx.core as mx

        group = mx.distributed.init(strict=True, backend=_INIT_BACKEND[self.spec.backend])
        if group.size() != len(self.spec.hosts):
            raise GroupError(
                f"the group has {group.size()} ranks but the hostfile {len(self.spec.hosts)}"
            )
        self.group = group
        log.info(
            "rank %d of %d on %s joined (%s, %s parallelism)",
            group.rank(),
            group.size(),
            self.spec.host,
            self.spec.backend,
            self.spec.parallelism,
        )
        return group

    def load(self, model_dir: Path) -> tuple[Any, Any]:
        """This rank's shard of the model; GroupError (on every rank alike) naming each host
        where something is wrong."""
        import mlx.core as mx
        from mlx.utils import tree_flatten
        from mlx_lm.utils import sharded_load

        group = self.group if self.group is not None else self.join()
        self._check_files(model_dir)
        model: Any = None
        tokenizer: Any = None
        problem = ""
        tensor = self.spec.parallelism == "tensor"
        try:
            model, tokenizer = sharded_load(  # type: ignore[misc]
                str(model_dir),
                pipeline_group=None if tensor else group,
                tensor_group=group if tensor else None,
            )[:2]
        except Exception as exc:
            log.exception("loading this rank's shard failed")
            problem = f"{type(exc).__name__}: {exc}"
            # The one sync sharded_load ends with, so a failed rank stays paired with the
            # others (they are waiting in it) for the report below.
            mx.eval(mx.distributed.all_sum(mx.array(1.0), group=group, stream=mx.cpu))
        params: Any = tree_flatten(model.parameters()) if model is not None else []
        weights = sum(int(v.nbytes) for _, v in params)
        reports = [json.loads(r) for r in self._gather(json.dumps([problem, weights]))]
        self._raise_problems([p for p, _ in reports])
        self.rank_memory = [int(w) for _, w in reports]
        log.info("rank %d holds %d MiB of weights", group.rank(), weights >> 20)
        return model, tokenizer

    def _check_files(self, model_dir: Path) -> None:
        """Every rank must have rank 0's files, at the same path and of the same sizes."""
        listing = _listing(model_dir) if self.group.rank() == 0 else {}
        expected: dict[str, int] = json.loads(self._broadcast(json.dumps(listing)))
        problem = _compare(model_dir, expected, self.spec.parallelism)
        self._raise_problems(self._gather(problem))

    def _raise_problems(self, problems: list[str]) -> None:
        found = [f"{self.spec.where(rank)}: {p}" for rank, p in enumerate(problems) if p]
        if found:
            raise GroupError("; ".join(found))

    def _broadcast(self, text: str) -> str:
        """Rank 0's `text`, on every rank (load time: the CPU stream, nothing else runs)."""
        import mlx.core as mx

        data = text.encode() if self.group.rank() == 0 else b""
        length = mx.array([len(data)], dtype=mx.int64)
        (size,) = ints(mx.distributed.all_sum(length, group=self.group, stream=mx.cpu))
        if not size:
            return ""
        out = mx.distributed.all_sum(byte_array(data, size), group=self.group, stream=mx.cpu)
        mx.eval(out)
        return array_bytes(out).decode()

    def _gather(self, text: str) -> list[str]:
        """Every rank's `text`, by rank, on every rank."""
        import mlx.core as mx

        data = text.encode()
        length = mx.array([len(data)], dtype=mx.int64)
        sizes = ints(mx.distributed.all_gather(length, group=self.group, stream=mx.cpu))
        padded = byte_array(data.ljust(max(*sizes, 1), b"\0"))
        rows = mx.distributed.all_gather(padded[None], group=self.group, stream=mx.cpu)
        mx.eval(rows)
        return [array_bytes(rows[r])[: sizes[r]].decode() for r in range(len(sizes))]


def _listing(model_dir: Path) -> dict[str, int]:
    """Relative path -> size of every file of a model directory (hidden ones skipped)."""
    files = {}
    for path in sorted(model_dir.rglob("*")):
        rel = path.relative_to(model_dir)
        if path.is_file() and not any(part.startswith(".") for part in rel.parts):
            files[rel.as_posix()] = path.stat().st_size
    return files


def _compare(model_dir: Path, expected: dict[str, int], parallelism: str) -> str:
    """What this host lacks of rank 0's model files ("" when nothing)."""
    if not model_dir.is_dir():
        return f"the model directory {model_dir} does not exist"
    missing, wrong = [], []
    for name, size in expected.items():
        path = model_dir / name
        if not path.is_file():
            missing.append(name)
        elif path.stat().st_size != size:
            wrong.append(f"{name} ({path.stat().st_size} bytes, rank 0 has {size})")
    problems = []
    if missing:
        problems.append(f"missing model file(s) in {model_dir}: {', '.join(missing)}")
    if wrong:
        problems.append(f"model file(s) of another size in {model_dir}: {', '.join(wrong)}")
    if parallelism == "pipeline" and "model.safetensors.index.json" not in expected:
        # sharded_load picks each stage's weight files from the index.
        problems.append("pipeline parallelism needs model.safetensors.index.json")
    return "; ".join(problems)


class LockstepDriver(SingleProcess):
    """Rank 0's step driver: loads this rank's shard, and its runner broadcasts each
    step to every rank before taking it (lockstep.Leader)."""

    idle_timeout = HEARTBEAT  # an idle rank 0 still steps, so the others know it lives
    embeds = False

    def __init__(self, spec: GroupSpec) -> None:
        self.spec = spec
        self.member = Member(spec)
        self.kv_divisor = len(spec.hosts) if spec.parallelism == "tensor" else 1
        self._leader: Leader | None = None

    @property
    def rank_memory(self) -> list[int]:  # type: ignore[override]
        return self.member.rank_memory

    def load(self, model_dir: Path, adapter: str | None) -> tuple[Any, Any]:
        if adapter:
            raise GroupError("a model with an adapter cannot be served by a group")
        return self.member.load(model_dir)

    def runner(
        self,
        model: Any,
        tokenizer: Any,
        cache_bytes: int,
        disk: Any = None,
        draft: Any = None,
        num_draft: int = 4,
        kv_bits: int = 0,
        kv_group: int = 64,
    ) -> Any:
        # `disk` and `draft` are None: the supervisor gives a group no disk tier (a rank's
        # cache entries are its shard of them, and ranks on one host would share the
        # folder) and no draft (the other ranks would have to run it too).
        channel = Channel(self.member.group, Digest())
        batch = GroupBatchRunner(model, tokenizer, cache_bytes, channel, kv_bits, kv_group)
        self._leader = Leader(channel, batch, self.spec.timeout)
        return self._leader

    def close(self) -> None:
        if self._leader is not None:
            self._leader.quit()
