"""Prompt-cache reuse: a chat's next turn prefills only what is new, with the same output."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Server, start_server, wait_for

GREEDY = {"temperature": 0, "num_predict": 16}


@pytest.fixture(scope="module")
def uncached(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[Server]:
    server = start_server(tmp_path_factory.mktemp("uncached"), OLLMLX_PROMPT_CACHE="0")
    with server.client() as client:
        client.create(model="tiny", from_=str(tiny_model_dir))
    yield server
    server.stop()


def history(turns: int) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": "You remember everything."}]
    for i in range(turns):
        messages.append({"role": "user", "content": f"Question {i}: " + "tell me more " * 8})
        messages.append({"role": "assistant", "content": f"Answer {i}: " + "the river " * 8})
    return messages


def test_second_turn_reuses_the_first_and_answers_the_same(
    server: Server, uncached: Server
) -> None:
    first = [*history(12), {"role": "user", "content": "first question"}]
    with server.client() as cached_client, uncached.client() as plain_client:
        turn1 = cached_client.chat(model="tiny", messages=first, options=GREEDY)
        second = [
            *first,
            {"role": "assistant", "content": turn1.message.content},
            {"role": "user", "content": "and then?"},
        ]
        turn2 = cached_client.chat(model="tiny", messages=second, options=GREEDY)
        reference = plain_client.chat(model="tiny", messages=second, options=GREEDY)
    assert turn1.prompt_eval_count is not None and turn1.prompt_eval_count > 400
    # The whole prompt is counted, as Ollama counts it, cache hits included...
    assert turn2.prompt_eval_count == reference.prompt_eval_count
    # ...and the answer is token for token what a server without a cache gives.
    assert turn2.message.content == reference.message.content
    assert turn2.eval_count == reference.eval_count


def test_cached_tokens_show_in_openai_usage(server: Server) -> None:
    """OpenAI's usage.prompt_tokens_details.cached_tokens says what was not evaluated."""
    import openai

    oai = openai.OpenAI(base_url=server.url + "/v1", api_key="ollmlx")
    messages = [*history(10), {"role": "user", "content": "one more"}]
    first = oai.chat.completions.create(
        model="tiny",
        messages=messages,
        max_tokens=4,
        temperature=0,  # type: ignore[arg-type]
    )
    again = oai.chat.completions.create(
        model="tiny",
        messages=messages,
        max_tokens=4,
        temperature=0,  # type: ignore[arg-type]
    )
    assert first.usage is not None and again.usage is not None
    assert again.usage.prompt_tokens == first.usage.prompt_tokens > 300
    assert again.usage.prompt_tokens_details is not None
    # An exact hit: all but the last token (recomputed for its logits) came from the cache.
    assert again.usage.prompt_tokens_details.cached_tokens == again.usage.prompt_tokens - 1
    assert again.choices[0].message.content == first.choices[0].message.content


def test_a_different_suffix_never_gets_another_prompts_state(
    server: Server, uncached: Server
) -> None:
    base = "a shared beginning " * 30
    with server.client() as cached_client, uncached.client() as plain_client:
        cached_client.generate(model="tiny", prompt=base + "ending one", options=GREEDY)
        cached = cached_client.generate(model="tiny", prompt=base + "ending two", options=GREEDY)
        plain = plain_client.generate(model="tiny", prompt=base + "ending two", options=GREEDY)
        again = cached_client.generate(model="tiny", prompt=base + "ending two", options=GREEDY)
    assert cached.context == plain.context
    assert again.context == plain.context  # an exact hit, too


def test_cache_stays_within_its_byte_bound(tmp_path: Path, tiny_model_dir: Path) -> None:
    server = start_server(tmp_path, OLLMLX_PROMPT_CACHE="96K", OLLAMA_DEBUG="1")
    try:
        with server.client() as client:
            client.create(model="tiny", from_=str(tiny_model_dir))
            for i in range(12):
                client.generate(model="tiny", prompt=f"{i} " + "filler " * 40, options=GREEDY)

        def logged() -> list[tuple[int, int]]:
            return [
                (int(m.group(1)), int(m.group(2)))
                for m in re.finditer(
                    r"prompt cache: \d+ entries, (\d+) bytes \(limit (\d+)\)", server.log()
                )
            ]

        # The worker files a finished request's cache after its answer went out, and its
        # log reaches the server's through a pipe: wait for the twelfth line.
        assert wait_for(lambda: len(logged()) == 12)
        sizes = logged()
        assert all(size <= limit == 96 * 1024 for size, limit in sizes)
        assert max(size for size, _ in sizes) > 48 * 1024  # it was used, not just empty
    finally:
        server.stop()
