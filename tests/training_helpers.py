"""Run `python -m ollmlx_worker.training` as the supervisor will: a real child process with a
job file, stdin a pipe, status lines read as they come."""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ollmlx.serving.openblas import find_openblas

TEXTS = [
    "The quick cat runs over the river.",
    "A small dog walks near the garden.",
    "Every teacher reads a book in the library.",
    "The robot builds a bright window.",
]

# Answers start with a word the BPE merges with its leading space (" the", " every").
CHATS = [
    ("Name a pet", "the quick cat runs"),
    ("Where is the book", "every teacher reads it"),
    ("What does the robot do", "a robot builds a bright window"),
    ("Say something", "some small dog walks near"),
]


def chat_records() -> list[dict]:
    return [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
        for q, a in CHATS
    ]


def no_leftovers(folder: Path) -> list[str]:
    """Temporary files or folders a job left behind."""
    return sorted(p.name for p in folder.rglob("*") if ".partial-" in p.name or ".tmp-" in p.name)


def job_env() -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    openblas = find_openblas()
    if openblas:  # as the supervisor's runner does: a far faster CPU matmul
        env["LD_PRELOAD"] = str(openblas)
    return env


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def with_template(base: Path, folder: Path, template: str) -> Path:
    """A copy of a tiny model whose chat template is `template`."""
    shutil.copytree(base, folder)
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["chat_template"] = template
    config_path.write_text(json.dumps(config, indent=2))
    return folder


@dataclass
class JobRun:
    proc: subprocess.Popen[bytes]
    lines: list[dict[str, Any]] = field(default_factory=list)
    _queue: queue.Queue[dict[str, Any] | None] = field(default_factory=queue.Queue)
    _stderr: list[bytes] = field(default_factory=list)

    @classmethod
    def start(cls, folder: Path, **job: Any) -> JobRun:
        """Write `folder`/job.json (job_dir and output default to folder's job/ and out/)."""
        job.setdefault("job_dir", str(folder / "job"))
        job.setdefault("output", str(folder / "out"))
        path = folder / "job.json"
        path.write_text(json.dumps(job))
        proc = subprocess.Popen(
            [sys.executable, "-m", "ollmlx_worker.training", str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=job_env(),
        )
        run = cls(proc)
        threading.Thread(target=run._read_stdout, daemon=True).start()
        threading.Thread(target=run._read_stderr, daemon=True).start()
        return run

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self._queue.put(json.loads(raw))
        self._queue.put(None)

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            self._stderr.append(raw)

    @property
    def stderr(self) -> str:
        return b"".join(self._stderr).decode(errors="replace")

    def next(self, timeout: float = 60) -> dict[str, Any] | None:
        line = self._queue.get(timeout=timeout)
        if line is not None:
            self.lines.append(line)
        return line

    def wait_for(self, status: str, timeout: float = 60, **match: Any) -> dict[str, Any]:
        """The next line of `status` whose fields are at least `match`."""
        deadline = time.monotonic() + timeout
        while True:
            line = self.next(max(0.01, deadline - time.monotonic()))
            if line is None:
                raise AssertionError(f"job ended before {status} {match}:\n{self.stderr}")
            if line["status"] == status and all(line.get(k, 0) >= v for k, v in match.items()):
                return line

    def finish(self, timeout: float = 120) -> int:
        """Read every line to the end; the exit status."""
        deadline = time.monotonic() + timeout
        while self.next(max(0.01, deadline - time.monotonic())) is not None:
            pass
        return self.proc.wait(max(0.01, deadline - time.monotonic()))

    def of(self, status: str) -> list[dict[str, Any]]:
        return [line for line in self.lines if line["status"] == status]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


def run_job(folder: Path, timeout: float = 120, **job: Any) -> tuple[int, JobRun]:
    run = JobRun.start(folder, **job)
    try:
        return run.finish(timeout), run
    finally:
        run.close()
