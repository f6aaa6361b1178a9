"""The training job program's failures and lifecycle: 400s that name the record, cancelling
by signal, closed stdin or a dead parent, and resuming from a checkpoint."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlx.core as mx
import pytest

from ollmlx.finetune_memory import format_bytes
from tests.oracle import Oracle
from tests.training_helpers import (
    TEXTS,
    JobRun,
    chat_records,
    job_env,
    no_leftovers,
    run_job,
    with_template,
    write_jsonl,
)

NO_SYSTEM_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'system' %}{{ raise_exception('no system role') }}{% endif %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{%- endfor %}"
)


def test_bad_json_is_a_400_naming_the_line_before_loading(tiny_model_dir: Path, tmp_path: Path):
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    (job_dir / "train.jsonl").write_text('{"text": "a"}\n{"text": "b"}\n{"text": "c",}\n')
    rc, run = run_job(tmp_path, model=str(tiny_model_dir), timeout=30)
    assert rc == 2
    message = "train.jsonl line 3: invalid JSON (Expecting property name enclosed in double"
    assert run.stderr.splitlines()[-1].startswith(f"error: {message}")
    assert [line["status"] for line in run.lines] == ["error"]
    assert run.lines[0]["code"] == 400 and run.lines[0]["error"].startswith(message)


def test_a_record_the_template_cannot_render_is_a_400(tiny_model_dir: Path, tmp_path: Path):
    model = with_template(tiny_model_dir, tmp_path / "model", NO_SYSTEM_TEMPLATE)
    records = chat_records()
    records[2]["messages"].insert(0, {"role": "system", "content": "be brief"})
    write_jsonl(tmp_path / "job" / "train.jsonl", records)
    rc, run = run_job(tmp_path, model=str(model), timeout=60)
    assert rc == 2, run.stderr
    message = "train.jsonl line 3: the chat template cannot render it: no system role"
    assert run.stderr.splitlines()[-1] == f"error: {message}"
    assert run.lines[-1] == {
        "status": "error",
        "error": message,
        "code": 400,
        "split": "train",
        "record": 2,
    }
    assert not (tmp_path / "out").exists()


def test_impossible_jobs_are_400s_before_loading(tiny_model_dir: Path, tmp_path: Path):
    write_jsonl(tmp_path / "job" / "train.jsonl", [{"text": t} for t in TEXTS])
    rc, run = run_job(tmp_path, model=str(tiny_model_dir), batch_size=8, timeout=30)
    assert rc == 2
    assert run.lines == [
        {
            "status": "error",
            "error": "batch_size 8 is more than the 4 training records",
            "code": 400,
        }
    ]
    # The worker's own estimate, with the real token counts, against the job's limit.
    rc, run = run_job(tmp_path, model=str(tiny_model_dir), memory_limit=1000, timeout=60)
    assert rc == 2
    estimate = run.of("data")[0]["memory_estimate"]
    assert run.lines[-1]["error"] == (
        f"the job needs about {format_bytes(estimate)} of memory; 1000 B is available"
    )
    assert run.of("training") == [] and not (tmp_path / "out").exists()
    (tmp_path / "out").mkdir()
    rc, run = run_job(tmp_path, model=str(tiny_model_dir), timeout=30)
    assert rc == 2 and run.lines[-1]["error"] == f"output {tmp_path / 'out'} already exists"


def long_job(tmp_path: Path, model: Path, **job: object) -> JobRun:
    write_jsonl(tmp_path / "job" / "train.jsonl", [{"text": t} for t in TEXTS])
    settings = dict(method="lora", iters=100_000, report_every=1, save_every=5, val_every=10**6)
    return JobRun.start(tmp_path, model=str(model), **{**settings, **job})


def assert_cancelled_cleanly(run: JobRun, tmp_path: Path, reason: str, since: float) -> None:
    rc = run.finish(timeout=10)
    took = time.monotonic() - since
    assert rc == 130, run.stderr
    assert took < 3.0, f"took {took:.2f}s to stop"
    last = run.lines[-1]
    assert last["status"] == "cancelled" and last["reason"] == reason
    # It stopped at an iteration boundary: every step it took was reported.
    assert last["iteration"] == run.of("training")[-1]["iteration"]
    assert not (tmp_path / "out").exists()
    assert no_leftovers(tmp_path) == []
    pointer = json.loads((tmp_path / "job" / "checkpoint.json").read_text())
    assert pointer["iteration"] % 5 == 0 and pointer["iteration"] <= last["iteration"]
    assert (tmp_path / "job" / pointer["adapters"]).is_file()


def test_sigterm_stops_within_an_iteration_and_keeps_checkpoints(
    tiny_model_dir: Path, tmp_path: Path
):
    run = long_job(tmp_path, tiny_model_dir, max_seq_length=8)
    try:
        data = run.wait_for("data")
        # The real tokenizer's count: every text is longer than 8 tokens with its EOS.
        assert data["truncated"] == 4
        run.wait_for("checkpoint", iteration=5)
        run.wait_for("training", iteration=7)
        since = time.monotonic()
        run.proc.send_signal(signal.SIGTERM)
        assert_cancelled_cleanly(run, tmp_path, "SIGTERM", since)
    finally:
        run.close()


def test_closing_stdin_stops_the_job(tiny_model_dir: Path, tmp_path: Path):
    run = long_job(tmp_path, tiny_model_dir)
    try:
        run.wait_for("checkpoint", iteration=5)
        since = time.monotonic()
        assert run.proc.stdin is not None
        run.proc.stdin.close()
        assert_cancelled_cleanly(run, tmp_path, "stdin closed", since)
    finally:
        run.close()


def test_a_cancel_while_loading_exits_at_once(tiny_model_dir: Path, tmp_path: Path):
    run = long_job(tmp_path, tiny_model_dir)
    try:
        run.wait_for("loading base")
        run.proc.send_signal(signal.SIGINT)
        assert run.finish(timeout=10) == 130
        assert run.lines[-1]["status"] == "cancelled" and run.lines[-1]["reason"] == "SIGINT"
        assert not (tmp_path / "out").exists()
    finally:
        run.close()


def test_the_job_ends_when_its_parent_dies(tiny_model_dir: Path, tmp_path: Path):
    write_jsonl(tmp_path / "job" / "train.jsonl", [{"text": t} for t in TEXTS])
    job = {"model": str(tiny_model_dir), "job_dir": str(tmp_path / "job"), "iters": 100_000}
    job |= {"output": str(tmp_path / "out"), "report_every": 1}
    (tmp_path / "job.json").write_text(json.dumps(job))
    # A shell parent that we SIGKILL; the job keeps our stdin pipe, so only the parent
    # watch can notice. (Via fd 3: a background job's stdin is /dev/null otherwise.)
    job_file = tmp_path / "job.json"
    command = f"exec 3<&0; {sys.executable} -m ollmlx_worker.training {job_file} <&3 & wait"
    shell = subprocess.Popen(
        ["sh", "-c", command], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=job_env()
    )
    try:
        assert shell.stdout is not None
        statuses = []
        for raw in shell.stdout:
            statuses.append(json.loads(raw)["status"])
            if statuses[-1] == "training":
                break
        assert statuses[-1] == "training", statuses
        shell.kill()
        shell.wait()
        rest = [json.loads(raw) for raw in shell.stdout]  # EOF: the job has exited too
        assert rest[-1]["status"] == "cancelled" and rest[-1]["reason"] == "parent gone"
        assert not (tmp_path / "out").exists()
    finally:
        if shell.poll() is None:
            shell.kill()
        shell.wait()
        for pipe in (shell.stdin, shell.stdout):
            if pipe is not None:
                pipe.close()


def test_resume_continues_from_the_checkpoint_as_an_unbroken_run(
    tiny_model_dir: Path, tmp_path: Path
):
    write_jsonl(tmp_path / "valid.jsonl", [{"text": t} for t in TEXTS[:2]])
    settings = dict(
        model=str(tiny_model_dir),
        method="lora",
        rank=4,
        dropout=0.1,  # the dropout masks too must continue where they were
        batch_size=1,  # four batches a pass: their order must continue too
        iters=30,
        learning_rate=5e-4,
        report_every=1,
        save_every=10,
        val_every=10,
    )
    for name in ("broken", "unbroken"):
        write_jsonl(tmp_path / name / "job" / "train.jsonl", [{"text": t} for t in TEXTS])
        (tmp_path / name / "job" / "valid.jsonl").write_bytes(
            (tmp_path / "valid.jsonl").read_bytes()
        )

    broken = tmp_path / "broken"
    run = JobRun.start(broken, **settings)
    try:
        run.wait_for("checkpoint", iteration=10)
        run.proc.send_signal(signal.SIGTERM)
        assert run.finish(timeout=10) == 130
    finally:
        run.close()
    saved = json.loads((broken / "job" / "checkpoint.json").read_text())["iteration"]
    assert saved in (10, 20)

    rc, resumed = run_job(broken, **settings, resume=True)
    assert rc == 0, resumed.stderr
    assert resumed.of("training")[0]["iteration"] == saved + 1
    assert resumed.of("training")[-1]["iteration"] == 30
    assert [v["iteration"] for v in resumed.of("validating")] == list(range(saved + 10, 31, 10))
    assert resumed.lines[-1]["resumed_from"] == saved

    rc, unbroken = run_job(tmp_path / "unbroken", **settings)
    assert rc == 0, unbroken.stderr
    # Same weights as a run that was never stopped: same batches, optimizer state, masks.
    a = mx.load(str(broken / "out" / "adapters.safetensors"))
    b = mx.load(str(tmp_path / "unbroken" / "out" / "adapters.safetensors"))
    assert isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys()
    for key in a:
        assert mx.allclose(a[key], b[key], atol=1e-5).item(), key
    assert resumed.lines[-1]["val_loss"] == pytest.approx(unbroken.lines[-1]["val_loss"])
    # And the adapter loads in mlx-lm.
    assert Oracle(tiny_model_dir, broken / "out").greedy([0, 10], 3).tokens
