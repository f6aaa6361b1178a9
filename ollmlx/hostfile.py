"""OLLMLX_HOSTFILE: the hosts of a worker group, in `mlx.launch`'s JSON hostfile format."""

from __future__ import annotations

import ipaddress
import json
import socket
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError

# Backends of `mlx.launch` that ollmlx runs a group on (mpi and nccl are not supported).
GROUP_BACKENDS = ("ring", "jaccl", "jaccl-ring")
LOCAL_NAMES = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class GroupHost:
    """One entry of the hostfile: one rank of every group."""

    ssh: str  # how mlx.launch reaches it; a name of this machine runs the rank directly
    ips: tuple[str, ...]  # where the ring backend connects (Thunderbolt bridge, Ethernet)
    # jaccl only: the RDMA device(s) towards each rank (None: no cable, or itself).
    rdma: tuple[str | tuple[str, ...] | None, ...] = ()
    local: bool = False  # this machine: no ssh, environment inherited


@dataclass(frozen=True)
class Hostfile:
    """OLLMLX_HOSTFILE: mlx.launch's JSON hostfile, checked once."""

    path: Path
    hosts: tuple[GroupHost, ...]
    backend: str = "ring"
    envs: tuple[str, ...] = ()

    @property
    def names(self) -> list[str]:
        return [h.ssh for h in self.hosts]

    def launcher_json(self) -> dict[str, object]:
        """The hostfile handed to mlx.launch: this machine's entries as 127.0.0.1, which
        mlx.launch runs directly (no ssh to ourselves, the environment inherited)."""
        return {
            "backend": self.backend,
            "envs": list(self.envs),
            "hosts": [
                {
                    "ssh": "127.0.0.1" if h.local else h.ssh,
                    "ips": list(h.ips),
                    "rdma": [list(d) if isinstance(d, tuple) else d for d in h.rdma],
                }
                for h in self.hosts
            ],
        }


def is_this_machine(name: str) -> bool:
    host = socket.gethostname()
    return name in LOCAL_NAMES or name in (host, host.split(".")[0], f"{host.split('.')[0]}.local")


def parse_hostfile(path: Path) -> Hostfile:
    """mlx.launch's hostfile (`{"backend", "envs", "hosts": [{"ssh", "ips", "rdma"}]}` or
    a bare list of hosts), with every problem a ConfigError naming the entry."""
    where = f"OLLMLX_HOSTFILE {path}"
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read it ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise ConfigError(f"{where}: not valid JSON ({exc})") from None
    if isinstance(data, list):
        data = {"hosts": data}
    if not isinstance(data, dict) or not isinstance(data.get("hosts"), list):
        raise ConfigError(f'{where}: expected {{"hosts": [...]}} or a list of hosts')
    backend = data.get("backend") or "ring"
    if backend not in GROUP_BACKENDS:
        raise ConfigError(
            f"{where}: backend must be one of {', '.join(GROUP_BACKENDS)}, got {backend!r}"
        )
    envs = data.get("envs") or []
    if not isinstance(envs, list) or not all(isinstance(e, str) and "=" in e for e in envs):
        raise ConfigError(f'{where}: "envs" must be a list of "NAME=value" strings')
    entries = data["hosts"]
    if len(entries) < 2:
        raise ConfigError(f"{where}: a group needs at least 2 hosts, got {len(entries)}")
    hosts = tuple(
        _parse_host(where, i, entry, backend, len(entries)) for i, entry in enumerate(entries)
    )
    if not hosts[0].local:
        raise ConfigError(
            f"{where}: the first host is rank 0, which serves the API, so it must be this "
            f"machine (127.0.0.1, localhost or {socket.gethostname()}), got {hosts[0].ssh!r}"
        )
    return Hostfile(path, hosts, backend, tuple(envs))


def _parse_host(where: str, index: int, entry: object, backend: str, count: int) -> GroupHost:
    at = f"{where}: host {index}"
    if not isinstance(entry, dict):
        raise ConfigError(f'{at}: expected an object with "ssh" and "ips"')
    ssh = entry.get("ssh")
    if not isinstance(ssh, str) or not ssh.strip():
        raise ConfigError(f'{at}: "ssh" must be a host name')
    ips = entry.get("ips", [])
    if not isinstance(ips, list) or not all(isinstance(ip, str) for ip in ips):
        raise ConfigError(f'{at} ({ssh}): "ips" must be a list of IP addresses')
    for ip in ips:
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            raise ConfigError(f"{at} ({ssh}): {ip!r} is not an IP address") from None
    if not ips and (backend == "ring" or index == 0):
        raise ConfigError(f'{at} ({ssh}): the {backend} backend needs its "ips"')
    rdma = entry.get("rdma", [])
    if not isinstance(rdma, list) or not all(_is_device(d) for d in rdma):
        raise ConfigError(f'{at} ({ssh}): "rdma" must list a device name, names or null per host')
    if backend.startswith("jaccl") and len(rdma) != count:
        raise ConfigError(f'{at} ({ssh}): jaccl needs one "rdma" entry per host ({count})')
    devices = tuple(tuple(d) if isinstance(d, list) else d for d in rdma)
    return GroupHost(ssh.strip(), tuple(ips), devices, is_this_machine(ssh.strip()))


def _is_device(entry: object) -> bool:
    """null (no cable, or the host itself), a device name, or one name per cable."""
    if isinstance(entry, list):
        return bool(entry) and all(isinstance(d, str) for d in entry)
    return entry is None or isinstance(entry, str)
