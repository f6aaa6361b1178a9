"""What the /v1 test modules share: the openai client fixture, the scripted agent model,
the mlx-lm oracle, and raw SSE readers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import Server
from tests.oracle import Oracle
from tests.scriptedmodel import build_scripted_model

ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
THINKING = "The user wants the weather."
STORY = [{"role": "user", "content": "tell me a story"}]


@pytest.fixture(scope="module")
def oracle(tiny_model_dir: Path) -> Oracle:
    return Oracle(tiny_model_dir)


@pytest.fixture
def oai(server: Server) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=server.url + "/v1", api_key="ollmlx", max_retries=0) as c:
        yield c


@pytest.fixture(scope="module")
def agent(server: Server, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The scripted model: thinks, says "Let me check." and calls get_weather(Paris)."""
    model_dir = build_scripted_model(tmp_path_factory.mktemp("scripted") / "agent")
    with server.client() as client:
        client.create(model="oai-agent", from_=str(model_dir))
    return "oai-agent"


def sse(server: Server, path: str, body: dict[str, Any]) -> list[str]:
    """The raw lines of an SSE answer (blank separators dropped)."""
    with httpx.stream("POST", server.url + path, json=body, timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["Content-Type"] == "text/event-stream"
        return [line for line in response.iter_lines() if line]


def data_chunks(lines: list[str]) -> list[dict[str, Any]]:
    """`data: {...}` lines, checking that the stream ends with `data: [DONE]`."""
    assert lines[-1] == "data: [DONE]"
    assert all(line.startswith("data: ") for line in lines)
    return [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
