"""A quantized KV cache (OLLAMA_KV_CACHE_TYPE, PARAMETER kv_cache_type) with batching and
the prompt cache on, served by real workers and compared with in-process mlx-lm."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import ollama
import pytest

from ollmlx.config import ConfigError, load_settings
from tests.conftest import Server, start_server, wait_for

GREEDY = {"temperature": 0, "num_predict": 32}
PROMPTS = ["the cat runs over the river", "a robot paints", "every teacher reads " * 6]


@pytest.fixture(scope="module")
def kv_server(tmp_path_factory: pytest.TempPathFactory, kv_model_dir: Path) -> Iterator[Server]:
    server = start_server(
        tmp_path_factory.mktemp("kv"), OLLAMA_KV_CACHE_TYPE="q8_0", OLLAMA_KEEP_ALIVE="10m"
    )
    with server.client() as client:
        client.create(model="kv8", from_=str(kv_model_dir))  # the server's default
        client.create(model="kv4", from_="kv8", parameters={"kv_cache_type": "q4_0"})
        client.create(model="kv16", from_="kv8", parameters={"kv_cache_type": "f16"})
    yield server
    server.stop()


def in_process(model_dir: Path, prompt: str, bits: int, tokens: int = 32) -> str:
    """mlx-lm's own greedy decoding, with its quantized cache of `bits` (0: float)."""
    from mlx_lm import load, stream_generate
    from mlx_lm.models.cache import QuantizedKVCache
    from mlx_lm.sample_utils import make_sampler

    model, tokenizer = load(str(model_dir))
    cache = [QuantizedKVCache(64, bits) for _ in model.layers] if bits else None
    text = ""
    for response in stream_generate(
        model,
        tokenizer,
        tokenizer.encode(prompt),
        max_tokens=tokens,
        sampler=make_sampler(temp=0.0),
        prompt_cache=cache,
    ):
        text += response.text
    return text


@pytest.mark.parametrize(("model", "bits"), [("kv16", 0), ("kv8", 8), ("kv4", 4)])
def test_greedy_answers_equal_in_process_with_the_same_cache(
    kv_server: Server, kv_model_dir: Path, model: str, bits: int
) -> None:
    with kv_server.client() as client:
        answer = client.generate(model=model, prompt=PROMPTS[0], raw=True, options=GREEDY)
    assert answer.response == in_process(kv_model_dir, PROMPTS[0], bits)


def test_concurrent_quantized_streams_each_equal_their_single_answer(
    kv_server: Server, kv_model_dir: Path
) -> None:
    answers: dict[int, str] = {}

    def run(i: int) -> None:
        with kv_server.client() as client:
            answers[i] = client.generate(
                model="kv4", prompt=PROMPTS[i], raw=True, options=GREEDY
            ).response

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(PROMPTS))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert [answers[i] for i in range(len(PROMPTS))] == [
        in_process(kv_model_dir, prompt, 4) for prompt in PROMPTS
    ]


def test_prompt_cache_hits_with_a_quantized_cache(kv_server: Server) -> None:
    import openai

    oai = openai.OpenAI(base_url=kv_server.url + "/v1", api_key="ollmlx")
    messages = [{"role": "user", "content": "tell me about the river " * 20}]
    first = oai.chat.completions.create(model="kv4", messages=messages, max_tokens=8)
    follow = [
        *messages,
        {"role": "assistant", "content": first.choices[0].message.content or ""},
        {"role": "user", "content": "and then?"},
    ]
    second = oai.chat.completions.create(model="kv4", messages=follow, max_tokens=8)
    assert second.usage is not None and second.usage.prompt_tokens_details is not None
    assert (second.usage.prompt_tokens_details.cached_tokens or 0) > 100


def test_ps_shows_the_smaller_quantized_cache_held(kv_server: Server) -> None:
    """The same long prompt and answer held in each model's prompt cache: /api/ps (what
    the worker holds) shows the quantized ones smaller, by about the cache's size."""
    prompt = "the river runs under the old bridge " * 80  # ~560 tokens
    with kv_server.client() as client:
        for kind in ("f16", "q8_0", "q4_0"):  # fresh workers: empty prompt caches
            client.create(model=f"ps-{kind}", from_="kv8", parameters={"kv_cache_type": kind})
            client.generate(model=f"ps-{kind}", prompt=prompt, raw=True, options=GREEDY)

        def sizes() -> dict[str, int]:
            return {m.model.split(":")[0]: m.size for m in client.ps().models}

        # A float32 model: 2 layers x 1 head of 64, keys and values: 1 KiB a token in
        # float, 288 and 160 bytes quantized; ~590 tokens: 590, 170 and 95 KiB.
        def ordered() -> bool:
            held = sizes()
            return (
                held["ps-f16"] - held["ps-q8_0"] > 200_000
                and held["ps-q8_0"] - held["ps-q4_0"] > 35_000
            )

        assert wait_for(ordered, timeout=15), sizes()


def test_an_unknown_kv_cache_type_is_refused(kv_server: Server) -> None:
    with kv_server.client() as client, pytest.raises(ollama.ResponseError) as err:
        client.create(model="bad", from_="kv8", parameters={"kv_cache_type": "q5_1"})
    assert err.value.status_code == 400
    assert err.value.error == "kv_cache_type: expected one of f16, q8_0, q4_0, got 'q5_1'"
    with pytest.raises(ConfigError, match="OLLAMA_KV_CACHE_TYPE: expected one of"):
        load_settings({"OLLAMA_KV_CACHE_TYPE": "q4_1"})
    assert load_settings({"OLLAMA_KV_CACHE_TYPE": "Q8_0"}).kv_cache_type == "q8_0"
    assert load_settings({}).kv_cache_type == "f16"
