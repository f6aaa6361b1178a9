"""Fine-tuning through a real server: requests, streamed lines, and what a model recites."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import ollama

from tests.conftest import Server
from tests.oracle import Oracle
from tests.training_helpers import TEXTS

OPTIONS = {"temperature": 0, "repeat_penalty": 1.0}


def text_records() -> list[dict[str, str]]:
    return [{"text": t} for t in TEXTS]


def body(model: str, **fields: Any) -> dict[str, Any]:
    """A /api/finetune request from `tiny` on TEXTS (the fields win)."""
    return {"model": model, "from": "tiny", "data": text_records(), **fields}


def finetune(server: Server, request: dict[str, Any], timeout: float = 180) -> list[dict[str, Any]]:
    """Every streamed line of a job that succeeds (an HTTP error raises)."""
    with httpx.stream(
        "POST", server.url + "/api/finetune", json=request, timeout=timeout
    ) as response:
        response.raise_for_status()
        lines = [json.loads(line) for line in response.iter_lines() if line.strip()]
    assert "error" not in lines[-1], lines[-1]
    return lines


def stream_lines(response: httpx.Response) -> Iterator[dict[str, Any]]:
    for line in response.iter_lines():
        if line.strip():
            yield json.loads(line)


def of(lines: list[dict[str, Any]], status: str) -> list[dict[str, Any]]:
    return [line for line in lines if line.get("status") == status]


def prefix_and_rest(oracle: Oracle, text: str, words: int = 3) -> tuple[list[int], list[int]]:
    """The first words of a training text as tokens, and the tokens that follow them."""
    prefix = " ".join(text.split()[:words])
    prompt = list(oracle.tokenizer.encode(prefix))
    full = list(oracle.tokenizer.encode(text))
    assert full[: len(prompt)] == prompt  # the cut is at a space: no merge across it
    return prompt, full[len(prompt) :]


def served(client: ollama.Client, model: str, oracle: Oracle, prompt: list[int], n: int) -> str:
    """The model's greedy text after `prompt` (raw: the prompt's tokens as they are)."""
    options = {**OPTIONS, "num_predict": n}
    prefix = oracle.tokenizer.decode(prompt)
    return client.generate(model=model, prompt=prefix, raw=True, options=options).response


def recites(client: ollama.Client, model: str, oracle: Oracle) -> list[bool]:
    """Per training text: does the served model continue its first words with the rest?"""
    out = []
    for text in TEXTS:
        prompt, rest = prefix_and_rest(oracle, text)
        # Streamed text starts without the first token's space, as mlx-lm's detokenizer does.
        want = oracle.tokenizer.decode(rest).lstrip()
        out.append(served(client, model, oracle, prompt, len(rest)).startswith(want))
    return out


def job_folders(server: Server) -> list[Path]:
    jobs = server.models_dir / "ollmlx-jobs"
    return sorted(jobs.iterdir()) if jobs.is_dir() else []
