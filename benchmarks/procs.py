"""Process helpers shared by the systems: ports, readiness polls, peak memory, CPU time."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil

from tests.conftest import free_port

__all__ = ["cpu_seconds", "free_port", "peak_rss", "stop_process", "wait_http"]


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 120.0) -> None:
    """Poll `url` until it answers 200; fail early if `proc` exits."""
    deadline = time.monotonic() + timeout
    # One client: each new one costs ~30 ms (SSL context), too coarse for cold starts.
    with httpx.Client(timeout=1) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if client.get(url).status_code == 200:
                    return
            time.sleep(0.01)  # short: cold-start figures include this poll's granularity
    raise RuntimeError(f"{url} did not answer within {timeout:g}s")


def peak_rss(pid: int) -> int:
    """Peak resident memory of a live process (VmHWM on Linux, current RSS elsewhere)."""
    status = Path(f"/proc/{pid}/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    with contextlib.suppress(psutil.Error):
        return int(psutil.Process(pid).memory_info().rss)
    return 0


def self_peak_rss() -> int:
    """This process's peak RSS (ru_maxrss is KiB on Linux, bytes on macOS)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process (not its children)."""
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    """SIGTERM, wait, SIGKILL: the benchmark leaves no process behind."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def env_without_preload() -> dict[str, str]:
    """os.environ minus LD_PRELOAD: processes that must not inherit the bench's OpenBLAS."""
    return {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
