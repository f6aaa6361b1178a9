"""Memory and open files of the supervisor and its workers, at one moment."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import psutil

from tests.conftest import Server


@dataclass
class ProcStat:
    pid: int
    rss: int
    fds: int
    sockets: int  # every socket (TCP and Unix)
    # The supervisor's TCP connections by peer: clients, live workers, workers now gone.
    to_workers: int = 0
    to_gone: int = 0

    @property
    def files(self) -> int:
        """Descriptors that are not sockets: files, pipes, event fds."""
        return self.fds - self.sockets


@dataclass
class Snapshot:
    supervisor: ProcStat
    workers: dict[str, ProcStat] = field(default_factory=dict)  # model name -> its worker


def worker_pids(server: Server) -> dict[str, int]:
    """Each live worker's model (from the server's "spawned worker" log lines)."""
    live = {w.pid for w in server.workers()}
    found: dict[str, int] = {}
    for line in server.log().splitlines():
        if "spawned worker pid=" in line:
            pid = int(line.split("pid=")[1].split()[0])
            name = line.rsplit(" for ", 1)[1].split(":")[0]
            if pid in live:
                found[name] = pid
    return found


def _stat(proc: psutil.Process) -> ProcStat:
    with proc.oneshot():
        return ProcStat(
            pid=proc.pid,
            rss=proc.memory_info().rss,
            fds=proc.num_fds(),
            sockets=len(proc.net_connections(kind="all")),
        )


def _listen_ports(proc: psutil.Process) -> set[int]:
    with contextlib.suppress(psutil.Error):
        return {
            c.laddr.port for c in proc.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN
        }
    return set()


def snapshot(server: Server) -> Snapshot:
    supervisor = psutil.Process(server.process.pid)
    pids = worker_pids(server)
    workers: dict[str, ProcStat] = {}
    worker_ports: set[int] = set()
    for name, pid in pids.items():
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            workers[name] = _stat(proc)
            worker_ports |= _listen_ports(proc)
    stat = _stat(supervisor)
    for conn in supervisor.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN or not conn.raddr:
            continue
        if conn.laddr.port == server.port:
            continue  # a client's connection
        if conn.raddr.port in worker_ports:
            stat.to_workers += 1
        else:
            stat.to_gone += 1  # to a worker that is gone: should have been closed
    return Snapshot(stat, workers)
