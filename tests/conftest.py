"""Fixtures: tiny models built once, and real `ollmlx serve` subprocesses on free ports."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import ollama
import psutil
import pytest

from tests.tinymodel import build_tiny_model

REPO = Path(__file__).resolve().parent.parent


def require(module: str, reason: str) -> Any:
    """Import an optional test dependency: skip without it, but fail in CI (`make install`
    installs it there, so a skip would hide a broken install step)."""
    if os.environ.get("CI"):
        import importlib

        return importlib.import_module(module)
    return pytest.importorskip(module, reason=reason)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    port: int
    models_dir: Path
    log_path: Path
    log_file: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def workers(self) -> list[psutil.Process]:
        """Live worker processes started by this server."""
        try:
            children = psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        return [c for c in children if _is_worker(c)]

    def stop(self, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.log_file is not None:
            self.log_file.close()
        return self.process.returncode

    def client(self) -> ollama.Client:
        """An official client; close it (or use `with`) to free its connections."""
        return ollama.Client(host=self.url)


def _is_worker(proc: psutil.Process) -> bool:
    with contextlib.suppress(psutil.Error):
        return "ollmlx_worker" in " ".join(proc.cmdline())
    return False


def server_env(models_dir: Path, port: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OLLAMA_", "OLLMLX_"))}
    env.update(
        OLLAMA_HOST=f"127.0.0.1:{port}",
        OLLMLX_MODELS=str(models_dir),
        HF_HUB_OFFLINE="1",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def start_server(tmp: Path, **env: str) -> Server:
    """Start `ollmlx serve` and wait until it answers `GET /`."""
    port = free_port()
    tmp.mkdir(parents=True, exist_ok=True)
    models_dir = tmp / "models"
    log_path = tmp / f"server-{port}.log"
    log_file = log_path.open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "ollmlx", "serve"],
        env=server_env(models_dir, port, **env),
        stdout=log_file,
        stderr=subprocess.STDOUT,
        cwd=tmp,
    )
    server = Server(process, port, models_dir, log_path, log_file)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited early:\n{server.log()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(server.url, timeout=1).status_code == 200:
                return server
        time.sleep(0.05)
    server.stop()
    raise RuntimeError(f"server did not start:\n{server.log()}")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def other_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second, different tiny model (another seed) for multi-model tests."""
    return build_tiny_model(tmp_path_factory.mktemp("models") / "other", seed=7)


@pytest.fixture(scope="session")
def kv_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model whose heads (64 values) a quantized KV cache can take."""
    return build_tiny_model(
        tmp_path_factory.mktemp("models") / "kv64", hidden_size=128, num_heads=2, num_kv_heads=1
    )


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[Server]:
    """One shared server with the tiny model created as `tiny`."""
    srv = start_server(tmp_path_factory.mktemp("server"), OLLAMA_KEEP_ALIVE="10m")
    with srv.client() as c:
        c.create(model="tiny", from_=str(tiny_model_dir))
    yield srv
    srv.stop()


@pytest.fixture
def client(server: Server) -> Iterator[ollama.Client]:
    with server.client() as c:
        yield c


@pytest.fixture
def fresh_server(tmp_path: Path, tiny_model_dir: Path) -> Iterator[Server]:
    """A server of the test's own (for tests that stop or break it)."""
    srv = start_server(tmp_path)
    with srv.client() as c:
        c.create(model="tiny", from_=str(tiny_model_dir))
    yield srv
    srv.stop()


def wait_for(predicate: object, timeout: float = 10.0, interval: float = 0.05) -> bool:
    """Poll `predicate()` until true or the deadline passes; never a bare sleep."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(interval)
    return bool(predicate())  # type: ignore[operator]
