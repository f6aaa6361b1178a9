"""The `ollmlx` client commands, run as real subprocesses against a real server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import ollmlx
from ollmlx.cli.manage import processor
from ollmlx.config import OLLAMA_API_VERSION, detect_backend
from tests.conftest import Server, free_port


def ollmlx_cli(
    server: Server | None, *args: str, cwd: Path | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ}
    env["OLLAMA_HOST"] = server.host if server else f"127.0.0.1:{free_port()}"
    return subprocess.run(
        [sys.executable, "-m", "ollmlx", *args],
        env=env,
        cwd=cwd,
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_version() -> None:
    result = ollmlx_cli(None, "--version")
    assert result.returncode == 0
    # Its own version and the Ollama release whose API it implements.
    expected = f"ollmlx version is {ollmlx.__version__} (Ollama API {OLLAMA_API_VERSION})"
    assert result.stdout.strip() == expected


def test_create_from_modelfile_then_list_show_cp_rm(
    server: Server, tiny_model_dir: Path, tmp_path: Path
) -> None:
    # FROM is relative to the Modelfile, as in Ollama.
    (tmp_path / "tiny").symlink_to(tiny_model_dir)
    (tmp_path / "Modelfile").write_text(
        '# a comment\nFROM ./tiny\nSYSTEM """You are\na poet."""\n'
        "PARAMETER temperature 0.3\nPARAMETER stop <|end|>\nPARAMETER stop END\n"
    )
    created = ollmlx_cli(server, "create", "poet", "-f", "Modelfile", cwd=tmp_path)
    assert created.returncode == 0, created.stderr
    assert "success" in created.stderr

    listed = ollmlx_cli(server, "list")
    assert listed.returncode == 0
    header, *rows = listed.stdout.splitlines()
    assert header.split() == ["NAME", "ID", "SIZE", "MODIFIED"]
    assert any(row.startswith("poet:latest") for row in rows)

    shown = ollmlx_cli(server, "show", "poet")
    assert shown.returncode == 0
    assert "architecture        llama" in shown.stdout
    assert "completion" in shown.stdout
    assert "temperature" in shown.stdout
    system = ollmlx_cli(server, "show", "poet", "--system")
    assert system.stdout.strip() == "You are\na poet."
    parameters = ollmlx_cli(server, "show", "poet", "--parameters")
    assert parameters.stdout.count("stop") == 2

    copied = ollmlx_cli(server, "cp", "poet", "poet2")
    assert copied.returncode == 0
    assert copied.stdout.strip() == "copied 'poet' to 'poet2'"
    removed = ollmlx_cli(server, "rm", "poet", "poet2")
    assert removed.returncode == 0
    assert removed.stdout.splitlines() == ["deleted 'poet'", "deleted 'poet2'"]
    assert "poet" not in ollmlx_cli(server, "list").stdout


def test_run_prints_the_answer(server: Server) -> None:
    with server.client() as client:
        expected = client.generate(
            model="tiny", prompt="hello", options={"temperature": 0, "num_predict": 10}
        ).response
    # The CLI has no --options flag: a model with stored parameters gives the same settings.
    with server.client() as client:
        client.create(
            model="tiny-greedy", from_="tiny", parameters={"temperature": 0, "num_predict": 10}
        )
    result = ollmlx_cli(server, "run", "tiny-greedy", "hello")
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected + "\n\n"


def test_ps_and_stop(server: Server) -> None:
    with server.client() as client:
        client.copy("tiny", "stoppable")
        client.generate(model="stoppable", prompt="")
    ps = ollmlx_cli(server, "ps")
    assert ps.returncode == 0
    assert ps.stdout.splitlines()[0].split() == [
        "NAME",
        "ID",
        "SIZE",
        "PROCESSOR",
        "CONTEXT",
        "UNTIL",
    ]
    (row,) = [line for line in ps.stdout.splitlines() if line.startswith("stoppable:latest")]
    # Ollama's PROCESSOR column: MLX on the CPU (Linux without CUDA) holds nothing in VRAM.
    processor = "100% CPU" if detect_backend() == "cpu" else "100% GPU"
    assert f"  {processor}  " in row
    assert "  2048  " in row  # the context: the default, capped at the trained one
    stopped = ollmlx_cli(server, "stop", "stoppable")
    assert stopped.returncode == 0
    assert "stoppable" not in ollmlx_cli(server, "ps").stdout


def test_errors_are_one_line_and_exit_non_zero(server: Server, tmp_path: Path) -> None:
    result = ollmlx_cli(server, "show", "missing-model")
    assert result.returncode == 1
    assert result.stderr == "Error: model 'missing-model' not found\n"
    result = ollmlx_cli(server, "create", "x", "-f", "Modelfile", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith("Error: open Modelfile")
    (tmp_path / "Modelfile").write_text("PARAMETER temperature 1\n")
    result = ollmlx_cli(server, "create", "x", "-f", "Modelfile", cwd=tmp_path)
    assert result.stderr == "Error: no FROM line\n"


def test_client_commands_explain_a_server_that_is_not_running() -> None:
    result = ollmlx_cli(None, "list")
    assert result.returncode == 1
    assert result.stderr.startswith("Error: could not connect to ollmlx at http://127.0.0.1:")
    assert "ollmlx serve" in result.stderr


def test_processor_column_is_ollamas() -> None:
    # cmd/cmd.go ListRunningHandler.
    assert processor(1000, 0) == "100% CPU"
    assert processor(1000, 1000) == "100% GPU"
    assert processor(1000, 2000) == "Unknown"
    assert processor(1000, 750) == "25%/75% CPU/GPU"
    assert processor(1000, 995) == "1%/99% CPU/GPU"  # 0.5% rounds up, as Go's math.Round
