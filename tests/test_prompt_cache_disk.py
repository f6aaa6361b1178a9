"""The prompt cache's disk tier (OLLMLX_PROMPT_CACHE_DISK): long prefixes survive restarts.

Cache hits are read from OpenAI's `usage.prompt_tokens_details.cached_tokens` (the
whole prompt is counted in `prompt_tokens`, as Ollama counts it); the answers must equal
those of a server with no cache at all.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.conftest import Server, start_server, wait_for

SYSTEM = "You are a careful assistant. " + " ".join(f"rule {i}: be exact." for i in range(120))


def ask(server: Server, question: str, model: str = "tiny") -> tuple[str, int, int]:
    """(answer, prompt tokens, cached tokens) of a greedy chat with the long system prompt."""
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="ollmlx")
    reply = client.chat.completions.create(
        model=model,
        messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}],
        max_tokens=8,
        temperature=0,
    )
    usage = reply.usage
    assert usage is not None
    cached = usage.prompt_tokens_details.cached_tokens if usage.prompt_tokens_details else 0
    return reply.choices[0].message.content or "", usage.prompt_tokens, cached or 0


def unload(server: Server, model: str = "tiny") -> None:
    with server.client() as client:
        client.generate(model=model, prompt="", keep_alive=0)
    assert wait_for(lambda: not server.workers())


@pytest.fixture
def disk_server(tmp_path: Path, tiny_model_dir: Path) -> Iterator[Server]:
    server = start_server(tmp_path / "disk", OLLMLX_PROMPT_CACHE_DISK="64M")
    with server.client() as client:
        client.create(model="tiny", from_=str(tiny_model_dir))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[Server]:
    server = start_server(tmp_path_factory.mktemp("plain"), OLLMLX_PROMPT_CACHE="0")
    with server.client() as client:
        client.create(model="tiny", from_=str(tiny_model_dir))
    yield server
    server.stop()


def folders(server: Server) -> list[Path]:
    base = server.models_dir / "ollmlx" / "prompt-cache"
    return sorted(p for p in base.iterdir() if p.is_dir()) if base.is_dir() else []


def test_a_long_prefix_is_served_from_disk_after_a_restart(
    disk_server: Server, plain: Server
) -> None:
    _, prompt_tokens, cached = ask(disk_server, "first question")
    assert cached == 0 and prompt_tokens > 400
    unload(disk_server)  # the worker stops: its prefixes go to disk
    answer, _, cached = ask(disk_server, "second question")
    # The system prompt (and the template around it) came from disk, the question did not.
    assert cached > 400
    assert answer == ask(plain, "second question")[0]


def test_the_tier_survives_a_server_restart(tmp_path: Path, tiny_model_dir: Path) -> None:
    server = start_server(tmp_path / "one", OLLMLX_PROMPT_CACHE_DISK="64M")
    with server.client() as client:
        client.create(model="tiny", from_=str(tiny_model_dir))
    ask(server, "warm it up")
    server.stop()  # stops its worker, which writes the prefix down
    env = {"OLLMLX_PROMPT_CACHE_DISK": "64M", "OLLMLX_MODELS": str(server.models_dir)}
    second = start_server(tmp_path / "two", **env)
    try:
        _, _, cached = ask(second, "after the restart")
        assert cached > 400
    finally:
        second.stop()


def test_never_served_for_another_model(disk_server: Server, other_model_dir: Path) -> None:
    with disk_server.client() as client:
        client.create(model="other", from_=str(other_model_dir))
    ask(disk_server, "fill the cache")
    unload(disk_server)
    _, _, cached = ask(disk_server, "same prefix, other weights", model="other")
    assert cached == 0
    assert len(folders(disk_server)) == 2  # one folder per model's weights


def test_the_folder_goes_with_the_model(disk_server: Server) -> None:
    ask(disk_server, "fill the cache")
    unload(disk_server)
    assert len(folders(disk_server)) == 1
    with disk_server.client() as client:
        client.copy("tiny", "twin")
        client.delete("tiny")
        assert len(folders(disk_server)) == 1  # the twin still uses the same weights
        client.delete("twin")
    assert folders(disk_server) == []


def test_the_tier_stays_within_its_bound(tmp_path: Path, tiny_model_dir: Path) -> None:
    # Each answer's KV cache is ~0.9 MiB (1.8k tokens x 512 bytes): the 64 KiB memory
    # tier spills every one to disk, where only two fit in 2 MiB.
    server = start_server(tmp_path, OLLMLX_PROMPT_CACHE_DISK="2M", OLLMLX_PROMPT_CACHE="64K")
    try:
        with server.client() as client:
            client.create(model="tiny", from_=str(tiny_model_dir))
        for i in range(6):
            ask(server, f"question {i}")
        unload(server)
        (folder,) = folders(server)
        files = list(folder.glob("*.safetensors"))
        assert 1 <= len(files) <= 2
        assert sum(f.stat().st_size for f in files) <= 2 << 20
    finally:
        server.stop()
