"""Speculative decoding end to end: a model created with DRAFT, served with batching on.

The pair (tests/draftmodel.py) agrees often, so rounds accept drafts and also reject
some: greedy answers must still be token for token in-process mlx-lm's without a draft,
alone, four at once, and beside a request that cannot use the draft (logprobs).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import pytest

from tests.conftest import Server, start_server
from tests.draftmodel import build_draft_pair
from tests.oracle import Oracle

GREEDY = {"temperature": 0, "num_predict": 40}
PROMPTS = [
    "the cat runs over the river",
    "a small robot paints the window quietly",
    "every teacher reads with the student in the morning",
    "the old mountain village is near the forest",
]
STATS = re.compile(r"speculative decoding: (\d+) tokens in (\d+) rounds, (\d+) of (\d+) drafts")


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("draftpair")
    return build_draft_pair(
        root / "target",
        root / "draft",
        damping=0.02,
        hidden_size=64,
        num_layers=4,
        num_heads=2,
        num_kv_heads=1,
        vocab_size=1024,  # not the tiny test model's: a draft of it is refused
    )


@pytest.fixture(scope="module")
def oracle(pair: tuple[Path, Path]) -> Oracle:
    return Oracle(pair[0])


@pytest.fixture(scope="module")
def spec_server(
    tmp_path_factory: pytest.TempPathFactory, pair: tuple[Path, Path]
) -> Iterator[Server]:
    target, draft = pair
    server = start_server(
        tmp_path_factory.mktemp("spec"), OLLAMA_DEBUG="1", OLLAMA_KEEP_ALIVE="10m"
    )
    modelfile = f"FROM {target}\nDRAFT {draft}\nPARAMETER draft_num_predict 3\n"
    reply = httpx.post(
        server.url + "/api/create",
        json={"model": "spec", "modelfile": modelfile, "stream": False},
        timeout=60,
    )
    assert reply.status_code == 200, reply.text
    yield server
    server.stop()


def _stats(server: Server) -> list[tuple[int, int, int, int]]:
    return [tuple(map(int, m.groups())) for m in STATS.finditer(server.log())]  # type: ignore[misc]


def _generate(client: ollama.Client, prompt: str, **extra: object) -> ollama.GenerateResponse:
    return client.generate(model="spec", prompt=prompt, raw=True, options=GREEDY, **extra)


def test_greedy_with_draft_equals_in_process_without_it(
    spec_server: Server, oracle: Oracle
) -> None:
    before = len(_stats(spec_server))
    with spec_server.client() as client:
        answer = _generate(client, PROMPTS[0])
    expected = oracle.greedy(oracle.tokenizer.encode(PROMPTS[0]), 40)
    assert answer.response == expected.text
    assert answer.eval_count == len(expected.tokens) == 40
    # The draft really ran: rounds emitted several tokens, some drafts were accepted and,
    # with this pair, some rejected.
    tokens, rounds, accepted, drafted = _stats(spec_server)[before]
    assert tokens == 40 and rounds < 40
    assert 0 < accepted < drafted


def test_concurrent_draft_streams_each_equal_their_single_answer(
    spec_server: Server, oracle: Oracle
) -> None:
    answers: dict[int, str] = {}
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            with spec_server.client() as client:
                answers[i] = _generate(client, PROMPTS[i]).response
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(PROMPTS))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    for i, prompt in enumerate(PROMPTS):
        assert answers[i] == oracle.greedy(oracle.tokenizer.encode(prompt), 40).text


def test_a_logprobs_request_runs_beside_draft_streams_without_the_draft(
    spec_server: Server, oracle: Oracle
) -> None:
    results: dict[str, ollama.GenerateResponse] = {}

    def run(name: str, prompt: str, **extra: object) -> None:
        with spec_server.client() as client:
            results[name] = _generate(client, prompt, **extra)

    before = len(_stats(spec_server))
    threads = [
        threading.Thread(target=run, args=("plain", PROMPTS[1]), kwargs={"logprobs": True}),
        threading.Thread(target=run, args=("draft", PROMPTS[2])),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert results["plain"].response == oracle.greedy(oracle.tokenizer.encode(PROMPTS[1]), 40).text
    assert results["draft"].response == oracle.greedy(oracle.tokenizer.encode(PROMPTS[2]), 40).text
    assert results["plain"].logprobs and len(results["plain"].logprobs) == 40
    assert len(_stats(spec_server)) == before + 1  # only one of them drafted


def test_stop_strings_and_the_prompt_cache_work_with_the_draft(
    spec_server: Server, oracle: Oracle
) -> None:
    import openai

    expected = oracle.greedy(oracle.tokenizer.encode(PROMPTS[3]), 40).text
    stop = expected[len(expected) // 2 :][:4]
    with spec_server.client() as client:
        stopped = client.generate(
            model="spec", prompt=PROMPTS[3], raw=True, options={**GREEDY, "stop": [stop]}
        )
    assert stopped.done_reason == "stop"
    assert stopped.response == expected[: expected.index(stop)]
    oai = openai.OpenAI(base_url=spec_server.url + "/v1", api_key="ollmlx")
    messages = [{"role": "user", "content": "tell me about the river " * 20}]
    first = oai.chat.completions.create(model="spec", messages=messages, **_oai_greedy())
    second = oai.chat.completions.create(
        model="spec",
        messages=[
            *messages,
            {"role": "assistant", "content": first.choices[0].message.content or ""},
            {"role": "user", "content": "and then?"},
        ],
        **_oai_greedy(),
    )
    assert second.usage is not None and second.usage.prompt_tokens_details is not None
    cached = second.usage.prompt_tokens_details.cached_tokens or 0
    assert cached > 100


def _oai_greedy() -> dict[str, object]:
    return {"temperature": 0, "max_tokens": 16}


def test_create_refuses_a_draft_of_another_vocabulary(
    spec_server: Server, pair: tuple[Path, Path], tiny_model_dir: Path
) -> None:
    modelfile = f"FROM {pair[0]}\nDRAFT {tiny_model_dir}\n"
    reply = httpx.post(
        spec_server.url + "/api/create",
        json={"model": "bad", "modelfile": modelfile, "stream": False},
        timeout=60,
    )
    assert reply.status_code == 400
    assert reply.json()["error"] == "the draft model's vocabulary does not match the model's"
    reply = httpx.post(
        spec_server.url + "/api/create",
        json={"model": "bad", "from": "spec", "parameters": {"draft_num_predict": 0}},
        timeout=60,
    )
    assert reply.status_code == 400
    assert reply.json()["error"] == "draft_num_predict must be between 1 and 32"


def test_a_copy_keeps_its_draft_and_shows_its_parameter(spec_server: Server) -> None:
    with spec_server.client() as client:
        client.copy("spec", "spec-copy")
        shown = client.show("spec-copy")
        assert shown.parameters is not None and "draft_num_predict" in shown.parameters
        before = len(_stats(spec_server))
        client.generate(model="spec-copy", prompt=PROMPTS[0], raw=True, options=GREEDY)
        assert len(_stats(spec_server)) == before + 1
        client.delete("spec-copy")
