"""`ollmlx finetune` against a real server: its progress output, errors, Ctrl-C and --resume;
and the progress bar's rendering."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest

from ollmlx.cli.finetune import FinetuneView, describe_data, render_bar
from tests.conftest import Server, start_server, wait_for
from tests.finetune_helpers import job_folders, text_records
from tests.test_cli import ollmlx_cli
from tests.training_helpers import write_jsonl


@pytest.fixture(scope="module")
def cli_server(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[Server]:
    srv = start_server(tmp_path_factory.mktemp("finetune-cli"))
    with srv.client() as client:
        client.create(model="tiny", from_=str(tiny_model_dir))
    yield srv
    srv.stop()


@pytest.fixture
def data(tmp_path: Path) -> Path:
    write_jsonl(tmp_path / "train.jsonl", text_records())
    write_jsonl(tmp_path / "valid.jsonl", text_records()[:2])
    return tmp_path


def test_finetune_prints_progress_and_creates_the_model(cli_server: Server, data: Path):
    result = ollmlx_cli(
        cli_server,
        "finetune",
        "cli-tuned",
        "--from",
        "tiny",
        "--data",
        "train.jsonl",  # relative to the CLI's directory: sent as an absolute path
        "--valid",
        "valid.jsonl",
        "--method",
        "full",
        "--iters",
        "20",
        "--learning-rate",
        "1e-3",
        cwd=data,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert lines[0] == "loading base"
    assert re.fullmatch(
        r"data: 4 records \(0 truncated\), 2 for validation; 20 iterations,"
        r" about [\d.]+ MB of memory",
        lines[1],
    ), lines[1]
    bars = [line for line in lines if line.startswith("training")]
    assert [re.search(r"(\d+)/20", bar)[1] for bar in bars] == ["10", "20"]  # type: ignore[index]
    assert re.fullmatch(
        r"training 100% ▕█{18}▏ 20/20  loss \d+\.\d{3}  val \d+\.\d{3}  [\d.]+ it/s", bars[-1]
    ), bars[-1]
    assert lines[-3:-1] == ["writing model", "writing manifest"]
    assert re.fullmatch(
        r"success: created cli-tuned:latest \(train loss \d+\.\d{3}, val loss \d+\.\d{3}\)",
        lines[-1],
    ), lines[-1]
    shown = ollmlx_cli(cli_server, "show", "cli-tuned")
    assert shown.returncode == 0, shown.stderr
    assert "  Fine-tuning\n    base                tiny:latest\n    method              full\n" in (
        shown.stdout
    )
    assert re.search(r"\n    iterations          20\n", shown.stdout)


def test_finetune_reports_bad_data_with_its_line(cli_server: Server, tmp_path: Path):
    (tmp_path / "train.jsonl").write_text('{"text": "a"}\n{"txt": "b"}\n')
    result = ollmlx_cli(
        cli_server, "finetune", "x", "--from", "tiny", "--data", "train.jsonl", cwd=tmp_path
    )
    assert result.returncode == 1
    assert result.stderr == (
        'Error: train.jsonl line 2: unknown record format: expected "messages", "prompt" and'
        ' "completion", or "text" (keys: txt)\n'
    )
    missing = ollmlx_cli(cli_server, "finetune", "x", "--from", "tiny", "--data", "no.jsonl")
    assert missing.returncode == 1 and "no.jsonl: no such file or directory" in missing.stderr


def test_ctrl_c_cancels_the_job_and_resume_continues(cli_server: Server, data: Path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OLLAMA_", "OLLMLX_"))}
    env["OLLAMA_HOST"] = cli_server.host
    args = ["-m", "ollmlx", "finetune", "ctrl-c", "--from", "tiny", "--data", "train.jsonl"]
    args += ["--method", "lora", "--learning-rate", "5e-4", "--save-every", "10"]
    child = pexpect.spawn(
        sys.executable,
        [*args, "--iters", "100000"],
        env=env,
        cwd=str(data),
        encoding="utf-8",
        timeout=60,
        dimensions=(24, 150),
    )
    try:
        # On a terminal the bar redraws in place; wait until a checkpoint is behind it.
        child.expect(r"training +\d+% ▕[█ ]+▏ ([2-9]\d|\d{3,})/100000")
        child.sendintr()
        child.expect(r"cancelled: --resume continues from its last checkpoint \(iteration (\d+)")
        seen = int(child.match[1])
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 130
    assert seen >= 10 and seen % 10 == 0
    pattern = r"job for ctrl-c:latest cancelled .*; its checkpoint at iteration (\d+) stays"
    assert wait_for(lambda: re.search(pattern, cli_server.log()), timeout=30)
    saved = int(re.search(pattern, cli_server.log())[1])  # type: ignore[index]
    assert saved >= seen
    assert "ctrl-c:latest" not in ollmlx_cli(cli_server, "list").stdout
    (folder,) = job_folders(cli_server)
    assert (folder / "checkpoint.json").is_file()

    # The same job, resumed; `iters` may change (it is not part of what is resumed).
    resumed = ollmlx_cli(cli_server, *args[2:], "--iters", str(saved + 20), "--resume", cwd=data)
    assert resumed.returncode == 0, resumed.stderr
    bars = [line for line in resumed.stderr.splitlines() if line.startswith("training")]
    assert re.search(r"\d+/\d+", bars[0])[0] == f"{saved + 10}/{saved + 20}", bars  # type: ignore[index]
    assert "success: created ctrl-c:latest" in resumed.stderr
    assert job_folders(cli_server) == []


def test_the_bar_shows_iteration_losses_and_time_left():
    assert render_bar(30, 120, 1.23456, None, 15.0) == (
        "training  25% ▕████              ▏ 30/120  loss 1.235  15 it/s  6s left"
    )
    assert render_bar(120, 120, 0.5, 0.75, 250.0) == (
        "training 100% ▕██████████████████▏ 120/120  loss 0.500  val 0.750  250 it/s"
    )
    assert describe_data({"train": 3, "truncated": 1, "iters": 9}) == (
        "data: 3 records (1 truncated); 9 iterations"
    )


def test_the_view_measures_the_rate_between_reports():
    class Out(list):
        def write(self, text: str) -> None:
            self.append(text)

        def flush(self) -> None:
            pass

    out = Out()
    view = FinetuneView(out, live=False)  # type: ignore[arg-type]
    view.handle({"status": "data", "iters": 100}, now=0.0)
    view.handle({"status": "training", "iteration": 10, "iterations_per_second": 50}, now=1.0)
    view.handle({"status": "validating", "iteration": 20, "val_loss": 2.0}, now=1.5)
    view.handle({"status": "training", "iteration": 20, "train_loss": 1.0}, now=2.0)
    text = "".join(out)
    assert "10/100  50 it/s  1s left" in text  # the job's own rate at first
    # Then wall time between reports (10 its in 1 s), smoothed: 0.7 * 50 + 0.3 * 10.
    assert "20/100  loss 1.000  val 2.000  38 it/s  2s left" in text
