"""One model served by a group of ranks: which models, and the handle on the group.

A model is served by a group when its Modelfile says `PARAMETER distributed tensor` or
`pipeline`, or with OLLMLX_DISTRIBUTED=auto when it does not fit this machine's budget but
its share fits each host's. The group is started with `mlx.launch` (one rank per entry
of OLLMLX_HOSTFILE); rank 0 runs on this machine and is the worker the supervisor talks
to, over the same HTTP protocol as any worker. `GroupProcess` is that worker's handle: it
spawns the launcher, and stops every rank on every host.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import random
import re
import signal
import socket
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from ..architectures import ENCODER_TYPES, parallelism, runs_with_mlx_vlm
from ..config import Settings
from ..errors import StatusError
from ..hostfile import Hostfile
from ..store.catalog import StoredModel
from ..store.modelinfo import read_config
from .runner import STOP_TIMEOUT, WorkerConfig, WorkerProcess, WorkerSpec

log = logging.getLogger("ollmlx.group")

# Rank 0 gets this long after SIGTERM to end its requests and tell every rank to quit.
GROUP_STOP_TIMEOUT = STOP_TIMEOUT + 5.0
# What a rank's log lines start with (workers/rank.py): its rank, pid and host.
_RANK_LINE = re.compile(r"\brank(\d+)\[(\d+)\]@(\S+)")


@dataclass(frozen=True)
class GroupPlan:
    parallelism: str  # "tensor" | "pipeline"
    hostfile: Hostfile

    @property
    def size(self) -> int:
        return len(self.hostfile.hosts)

    @property
    def hosts(self) -> list[str]:
        return self.hostfile.names

    @property
    def backend(self) -> str:
        return self.hostfile.backend


def check_distributed(settings: Settings, model_dir: Path | None, asked: str | None) -> None:
    """A 400 for a model that mlx-lm cannot split this way (at create and at load)."""
    if not asked or model_dir is None:
        return
    config = read_config(model_dir)
    model_type = str(config.get("model_type") or "")
    if runs_with_mlx_vlm(config) or model_type in ENCODER_TYPES:
        raise StatusError(f"a {model_type} model cannot be served by a distributed group", 400)
    supported = parallelism(model_type)
    if asked not in supported:
        other = f"; it supports {' and '.join(sorted(supported))}" if supported else ""
        method = "shard()" if asked == "tensor" else "pipeline()"
        raise StatusError(
            f"model type {model_type!r} has no {asked} parallelism in mlx-lm (no {method}){other}",
            400,
        )


def plan_group(settings: Settings, model: StoredModel, estimate: int) -> GroupPlan | None:
    """The group that serves `model`, or None for one process; a 400 when it asks for one
    that cannot be."""
    asked = model.manifest.parameters.get("distributed")
    hostfile = settings.hostfile
    if asked:
        if hostfile is None:
            raise StatusError(
                f"model {model.name.display} is served by a group (PARAMETER distributed "
                f"{asked}) but OLLMLX_HOSTFILE is not set",
                400,
            )
        check_distributed(settings, model.model_dir, asked)
        if model.adapter_dir is not None:
            raise StatusError("a model with an adapter cannot be served by a group", 400)
        return GroupPlan(asked, hostfile)
    budget = settings.memory_budget
    if not settings.distributed_auto or hostfile is None or not budget or estimate <= budget:
        return None
    if model.adapter_dir is not None or math.ceil(estimate / len(hostfile.hosts)) > budget:
        return None
    config = read_config(model.model_dir)
    if runs_with_mlx_vlm(config):
        return None
    supported = parallelism(str(config.get("model_type") or ""))
    for kind in ("tensor", "pipeline"):  # tensor: every rank works on every token
        if kind in supported:
            log.info("%s does not fit this machine: served by a %s group", model.name.display, kind)
            return GroupPlan(kind, hostfile)
    return None


def host_share(estimate: int, plan: GroupPlan | None) -> int:
    """Bytes one host holds of a model of `estimate` bytes (each rank: 1/N of it)."""
    return estimate if plan is None else math.ceil(estimate / plan.size)


class GroupProcess(WorkerProcess):
    """`mlx.launch` and every rank it starts; this machine's rank 0 serves HTTP.

    `pid` is the launcher's (its own session: every local rank is in its process group),
    `worker_pid` rank 0's. Remote ranks' pids come from their log lines, for the stop.
    """

    def __init__(
        self,
        spec: WorkerSpec,
        session: aiohttp.ClientSession,
        config: WorkerConfig | None = None,
    ) -> None:
        super().__init__(spec, session, config)
        assert self.spec.group is not None
        self.plan: GroupPlan = self.spec.group
        self._hostfile: Path | None = None
        self.rank_pids: dict[int, int] = {}
        self._remote_kill: asyncio.Future[None] | None = None

    def environment(self) -> dict[str, str]:
        env = super().environment()
        local = sum(1 for h in self.plan.hostfile.hosts if h.local)
        if local > 1 and "OPENBLAS_NUM_THREADS" not in env:
            # Ranks on one machine share its cores: unbounded, each one's BLAS threads
            # (which spin after every call) hold the cores the other ranks wait for.
            env["OPENBLAS_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // local))
        return env

    def command(self) -> list[str]:
        plan = self.plan
        fd, path = tempfile.mkstemp(prefix="ollmlx-hosts-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(plan.hostfile.launcher_json(), f)
        self._hostfile = Path(path)
        ports = sum(len(h.ips) for h in plan.hostfile.hosts) or plan.size
        worker = [
            *self.worker_command(),
            *("--group", plan.parallelism, "--group-hosts", ",".join(plan.hosts)),
            *("--group-backend", plan.backend),
            *("--group-timeout", f"{self.config.group_timeout:g}"),
            *("--supervisor-pid", str(os.getpid())),
        ]
        # Local ranks inherit this environment (the secret too); remote ones get these.
        env = ["PYTHONUNBUFFERED=1"]
        if self.config.debug:
            env.append("MLX_RING_VERBOSE=1")
        log.info(
            "launching %s on %d hosts (%s, %s parallelism): %s; every host loads %s",
            self.spec.name,
            plan.size,
            plan.backend,
            plan.parallelism,
            ", ".join(plan.hosts),
            self.spec.model_dir,
        )
        return [
            *_launcher(),
            *("--hostfile", path, "--backend", plan.backend),
            *("--starting-port", str(self.config.group_port or _free_ports(ports))),
            *(arg for e in env for arg in ("--env", e)),
            "--",
            *worker,
        ]

    async def wait_until_ready(self) -> None:
        await super().wait_until_ready()
        # mlx.launch read the hostfile when it started (its ranks get the hosts in their
        # environment): gone now, it cannot outlive a supervisor that is killed later.
        self._remove_hostfile()

    def output_line(self, text: str) -> None:
        match = _RANK_LINE.search(text)
        if match:
            self.rank_pids.setdefault(int(match.group(1)), int(match.group(2)))

    def kill(self) -> None:
        """SIGKILL every rank here (the launcher's process group) and on the other hosts."""
        self._kill_local()
        self._remote_kill = self._kill_remote()  # runs on; stop() or the loop finishes it

    async def stop(self) -> None:
        """Rank 0 first (it answers its requests with an error line and tells every rank
        to quit, so mlx.launch ends by itself); then whatever is left, on every host."""
        self.stopping = True
        proc = self._proc
        if proc is None:
            return
        if proc.returncode is None:
            target = self.worker_pid if self.worker_pid not in (0, proc.pid) else None
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if target is not None:
                    os.kill(target, signal.SIGTERM)
                else:
                    os.killpg(proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), GROUP_STOP_TIMEOUT)
            except asyncio.TimeoutError:
                log.warning("group of %s did not stop in time; killing every rank", self.spec.name)
        self._kill_local()
        remote = self._kill_remote()
        if remote is not None:
            await remote
        await proc.wait()
        log.info("stopped the group of %s (launcher exit code %s)", self.spec.name, proc.returncode)
        self.release()
        for task in self._readers:
            task.cancel()
        if proc.stdin:
            proc.stdin.close()

    def release(self) -> None:
        """The link, and the hostfile mlx.launch read (also when the group died alone)."""
        super().release()
        self._remove_hostfile()

    def _remove_hostfile(self) -> None:
        if self._hostfile is not None:
            self._hostfile.unlink(missing_ok=True)
            self._hostfile = None

    def _kill_local(self) -> None:
        if self._proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._proc.pid, signal.SIGKILL)

    def _kill_remote(self) -> asyncio.Future[None] | None:
        """The ranks on other hosts, by pid over ssh (mlx.launch's own way in)."""
        targets = [
            (self.plan.hostfile.hosts[rank].ssh, pid)
            for rank, pid in self.rank_pids.items()
            if rank < self.plan.size and not self.plan.hostfile.hosts[rank].local
        ]
        if not targets:
            return None
        return asyncio.ensure_future(
            asyncio.gather(*(_ssh_kill(h, p) for h, p in targets), return_exceptions=True)
        )  # type: ignore[return-value]


async def _ssh_kill(host: str, pid: int) -> None:
    # Only a process that still is our worker: never a pid the host has reused.
    script = f"ps -p {pid} -o args= | grep -q ollmlx_worker && kill -9 {pid}"
    proc = await asyncio.create_subprocess_exec(
        "ssh",
        *("-o", "BatchMode=yes", "-o", "ConnectTimeout=5", host, script),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        await asyncio.wait_for(proc.wait(), 15)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        log.warning("could not reach %s to stop its rank (pid %d)", host, pid)


def _launcher() -> list[str]:
    """mlx.launch from this environment (spawned, never imported: the supervisor has no MLX)."""
    script = Path(sys.executable).parent / "mlx.launch"
    if script.is_file():
        return [sys.executable, str(script)]
    code = "import sys; from mlx._distributed_utils.launch import main; sys.exit(main())"
    return [sys.executable, "-c", code]


def _free_ports(count: int) -> int:
    """The first of `count` consecutive ports free on this machine (ring listens on each)."""
    for _ in range(50):
        base = random.randint(20000, 60000 - count)
        with contextlib.ExitStack() as stack:
            try:
                for port in range(base, base + count):
                    sock = stack.enter_context(socket.socket())
                    sock.bind(("", port))
            except OSError:
                continue
            return base
    raise StatusError("no free ports for the group's ring backend (set OLLMLX_GROUP_PORT)")
