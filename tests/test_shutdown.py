"""Clean shutdown: grace for in-flight answers, workers stopped, nothing left behind."""

from __future__ import annotations

import json
import signal
import socket
from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import start_server, wait_for


def port_is_free(port: int) -> bool:
    """Nothing accepts connections on the port (bind would fail on TIME_WAIT leftovers)."""
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_lets_streams_finish_then_stops_workers(
    sig: signal.Signals, tmp_path: Path, tiny_model_dir: Path
) -> None:
    server = start_server(tmp_path, OLLMLX_SHUTDOWN_GRACE="60s")
    with server.client() as client:
        client.create(model="tiny", from_=str(tiny_model_dir))
        client.generate(model="tiny", prompt="")
    workers = server.workers()
    worker_ports = [
        c.laddr.port for w in workers for c in w.net_connections() if c.status == "LISTEN"
    ]
    body = {"model": "tiny", "prompt": "finish me", "options": {"num_predict": 300}}
    with httpx.stream("POST", server.url + "/api/generate", json=body, timeout=60) as response:
        lines = response.iter_lines()
        next(lines)
        server.process.send_signal(sig)
        # New connections are refused while the answer in flight goes on to its end.
        assert wait_for(lambda: port_is_free(server.port), timeout=10)
        rest = [json.loads(line) for line in lines if line]
    assert rest[-1]["done"] is True and rest[-1]["eval_count"] == 300
    assert server.process.wait(30) == 0
    server.stop()  # closes the log file
    _gone, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive
    assert all(port_is_free(port) for port in worker_ports)
    log = server.log()
    assert "shutting down: stopping 1 worker(s)" in log
    assert "ollmlx stopped" in log


def test_grace_period_ends_long_streams(tmp_path: Path, tiny_model_dir: Path) -> None:
    server = start_server(tmp_path, OLLMLX_SHUTDOWN_GRACE="0.5s")
    with server.client() as client:
        client.create(model="tiny", from_=str(tiny_model_dir))
        client.generate(model="tiny", prompt="")
    workers = server.workers()
    body = {"model": "tiny", "prompt": "forever", "options": {"num_predict": 4000}}
    with httpx.stream("POST", server.url + "/api/generate", json=body, timeout=60) as response:
        lines = response.iter_lines()
        next(lines)
        server.process.send_signal(signal.SIGTERM)
        with pytest.raises(httpx.HTTPError):
            for _ in lines:
                pass
    assert server.process.wait(30) == 0
    server.stop()  # closes the log file
    _gone, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive


def test_no_temporary_files_outlive_the_server(tmp_path: Path, tiny_model_dir: Path) -> None:
    server = start_server(tmp_path)
    with server.client() as client:
        client.create(model="tiny", from_=str(tiny_model_dir))
        client.generate(model="tiny", prompt="hi", options={"num_predict": 2})
    before = sorted(p.name for p in (server.models_dir / "blobs").iterdir())
    server.stop()
    after = sorted(p.name for p in (server.models_dir / "blobs").iterdir())
    assert before == after and all(name.startswith("sha256-") for name in after)
    assert not list((server.models_dir / "ollmlx" / "tmp").iterdir())
