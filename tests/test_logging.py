"""Server logs: readable lines on the terminal by hand, a rotating file for a service."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from ollmlx.config import ConfigError, load_settings
from tests.conftest import Server, server_env, start_server, wait_for

LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR) \S+: ")


def test_serve_by_hand_writes_readable_lines_to_the_terminal(server: Server) -> None:
    # conftest captures the server's stderr in server.log_path.
    lines = server.log().splitlines()
    listening = [line for line in lines if line.endswith(f"ollmlx listening on {server.url}")]
    assert len(listening) == 1
    assert LINE.match(listening[0])


def test_log_file_gets_the_lines_and_rotates_past_its_size(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "server.log"
    # Debug level logs one access line per request: enough to pass 2 KB quickly.
    srv = start_server(
        tmp_path, OLLMLX_LOG_FILE=str(log), OLLMLX_LOG_MAX_SIZE="2K", OLLAMA_DEBUG="1"
    )
    try:
        assert wait_for(lambda: log.exists() and "ollmlx listening on" in log.read_text())
        assert srv.log().strip() == f"ollmlx: logging to {log}"  # the terminal only says where

        def rotated() -> bool:
            httpx.get(f"{srv.url}/api/version", timeout=5)
            return (log.parent / "server.log.1").exists()

        assert wait_for(rotated, timeout=30)
        assert LINE.match((log.parent / "server.log.1").read_text().splitlines()[0])
        assert (log.parent / "server.log.1").stat().st_size <= 2048
    finally:
        srv.stop()


def test_log_settings_are_parsed_with_clear_errors() -> None:
    settings = load_settings({"OLLMLX_LOG_FILE": "~/x.log", "OLLMLX_LOG_MAX_SIZE": "5M"})
    assert settings.log_file == Path("~/x.log").expanduser()
    assert settings.log_max_bytes == 5 << 20
    assert load_settings({}).log_file is None
    assert load_settings({}).log_max_bytes == 10 << 20
    with pytest.raises(ConfigError, match="OLLMLX_LOG_MAX_SIZE"):
        load_settings({"OLLMLX_LOG_MAX_SIZE": "big"})


def test_port_in_use_is_one_error_line_and_exit_1(server: Server, tmp_path: Path) -> None:
    # The running test server holds its port: a second server there must say so plainly.
    done = subprocess.run(
        [sys.executable, "-m", "ollmlx", "serve"],
        env=server_env(tmp_path / "models", server.port),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1] == (
        f"Error: listen tcp 127.0.0.1:{server.port}: bind: address already in use"
    )
    assert "Traceback" not in done.stderr
