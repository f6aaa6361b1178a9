"""Images on /api/chat and /api/generate: a tiny Qwen2-VL run by mlx-vlm in the worker.

The oracle is in-process `mlx_vlm.stream_generate` on the same prompt and image, with
Ollama's default options (repeat penalty 1.0): the served tokens must equal it exactly.
"""

from __future__ import annotations

import base64
import io
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import ollama
import pytest

from tests.conftest import Server, require, start_server

require("mlx_vlm", "mlx-vlm is not installed (pip install 'ollmlx[vision]')")

from PIL import Image  # noqa: E402 (after the require above)

from tests.tinyvision import IMAGE_TOKENS, build_tiny_vision_model  # noqa: E402

MODEL = "tinyvl"
GREEDY = {"temperature": 0, "num_predict": 12}


def png(color: tuple[int, int, int], size: tuple[int, int] = (40, 30)) -> bytes:
    """A small PNG: a colour gradient, so every patch differs."""
    image = Image.new("RGB", size)
    image.putdata(
        [
            (color[0] * x // size[0], color[1] * y // size[1], color[2])
            for y in range(size[1])
            for x in range(size[0])
        ]
    )
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


RED, BLUE = png((255, 40, 40)), png((20, 60, 250), (64, 48))


@dataclass
class Expected:
    prompt_tokens: int
    tokens: list[int]
    text: str


class VisionOracle:
    def __init__(self, model_dir: Path) -> None:
        from mlx_vlm import load

        self.model, self.processor = load(str(model_dir))

    def greedy(self, messages: list[dict[str, Any]], max_tokens: int) -> Expected:
        from mlx_vlm import apply_chat_template, stream_generate

        images = [Image.open(io.BytesIO(i)) for m in messages for i in m.get("images", [])]
        turns = [
            {
                "role": m["role"],
                "content": [{"type": "image"} for _ in m.get("images", [])]
                + [{"type": "text", "text": m["content"]}],
            }
            for m in messages
        ]
        prompt = apply_chat_template(
            self.processor, self.model.config, turns, num_images=len(images)
        )
        tokens: list[int] = []
        text = ""
        prompt_tokens = 0
        for result in stream_generate(
            self.model,
            self.processor,
            prompt,
            image=images or None,
            max_tokens=max_tokens,
            temperature=0.0,
            # Ollama's default repeat_penalty is 1.0: no penalty, as the server applies it.
        ):
            prompt_tokens = result.prompt_tokens
            text += result.text
            if result.finish_reason is None:
                tokens.append(int(result.token))
        return Expected(prompt_tokens, tokens, text)


@pytest.fixture(scope="module")
def vision_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_vision_model(tmp_path_factory.mktemp("models") / "tinyvl")


@pytest.fixture(scope="module")
def oracle(vision_model_dir: Path) -> VisionOracle:
    return VisionOracle(vision_model_dir)


@pytest.fixture(scope="module")
def vision_server(
    tmp_path_factory: pytest.TempPathFactory, vision_model_dir: Path
) -> Iterator[Server]:
    srv = start_server(tmp_path_factory.mktemp("vision"), OLLAMA_KEEP_ALIVE="10m")
    with srv.client() as c:
        c.create(model=MODEL, from_=str(vision_model_dir))
    yield srv
    srv.stop()


@pytest.fixture
def vclient(vision_server: Server) -> Iterator[ollama.Client]:
    with vision_server.client() as c:
        yield c


def test_chat_with_an_image_streams_tokens_then_done(
    vclient: ollama.Client, oracle: VisionOracle
) -> None:
    messages = [{"role": "user", "content": "What is in this picture?", "images": [RED]}]
    parts = list(vclient.chat(model=MODEL, messages=messages, options=GREEDY, stream=True))
    expected = oracle.greedy(messages, 12)
    assert all(not p.done for p in parts[:-1])
    assert len(parts) > 2
    last = parts[-1]
    assert last.done and last.done_reason == "length"
    assert last.eval_count == len(expected.tokens) == 12
    assert last.prompt_eval_count == expected.prompt_tokens
    assert "".join(p.message.content for p in parts) == expected.text
    assert expected.text


def test_generate_with_an_image_equals_in_process_mlx_vlm(
    vclient: ollama.Client, oracle: VisionOracle
) -> None:
    result = vclient.generate(model=MODEL, prompt="Describe it.", images=[BLUE], options=GREEDY)
    expected = oracle.greedy([{"role": "user", "content": "Describe it.", "images": [BLUE]}], 12)
    assert result.response == expected.text
    assert result.done_reason == "length"
    assert result.context is not None
    # The context holds the prompt with one token per merged image patch, then the answer.
    assert len(result.context) == expected.prompt_tokens + 12
    assert list(result.context[expected.prompt_tokens :]) == expected.tokens


def test_the_image_changes_the_answer(vclient: ollama.Client, oracle: VisionOracle) -> None:
    answers = {
        vclient.chat(
            model=MODEL, messages=[{"role": "user", "content": "Name it.", **extra}], options=GREEDY
        ).message.content
        for extra in ({"images": [RED]}, {"images": [BLUE]}, {})
    }
    assert len(answers) == 3


def test_text_only_chat_to_a_vision_model(vclient: ollama.Client, oracle: VisionOracle) -> None:
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hello there."},
    ]
    result = vclient.chat(model=MODEL, messages=messages, options=GREEDY)
    expected = oracle.greedy(messages, 12)
    assert result.message.content == expected.text
    assert result.prompt_eval_count == expected.prompt_tokens
    assert result.eval_count == 12


def test_two_images_in_a_conversation(vclient: ollama.Client, oracle: VisionOracle) -> None:
    messages = [
        {"role": "user", "content": "First.", "images": [RED]},
        {"role": "assistant", "content": "A red thing."},
        {"role": "user", "content": "And these?", "images": [BLUE, RED]},
    ]
    result = vclient.chat(model=MODEL, messages=messages, options=GREEDY)
    expected = oracle.greedy(messages, 12)
    assert result.message.content == expected.text
    assert result.prompt_eval_count == expected.prompt_tokens


def test_stop_string_ends_a_vision_answer(vclient: ollama.Client, oracle: VisionOracle) -> None:
    messages = [{"role": "user", "content": "What is in this picture?", "images": [RED]}]
    full = oracle.greedy(messages, 12).text
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    assert stop.strip()
    result = vclient.chat(model=MODEL, messages=messages, options={**GREEDY, "stop": [stop]})
    assert result.message.content == full[: full.index(stop)]
    assert result.done_reason == "stop"


def test_requests_to_a_vision_model_queue_and_all_answer(
    vclient: ollama.Client, oracle: VisionOracle
) -> None:
    """Served one at a time: concurrent requests wait their turn, each answer exact."""
    prompts = [("Red?", RED), ("Blue?", BLUE), ("Nothing?", None)]
    answers: dict[str, str] = {}

    def ask(text: str, image: bytes | None) -> None:
        message: dict[str, Any] = {"role": "user", "content": text}
        if image:
            message["images"] = [image]
        result = vclient.chat(model=MODEL, messages=[message], options=GREEDY)
        answers[text] = result.message.content

    threads = [threading.Thread(target=ask, args=p) for p in prompts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for text, image in prompts:
        message: dict[str, Any] = {"role": "user", "content": text}
        if image:
            message["images"] = [image]
        assert answers[text] == oracle.greedy([message], 12).text


def test_format_constrains_a_vision_answer(vclient: ollama.Client) -> None:
    schema = {
        "type": "object",
        "properties": {"color": {"type": "string", "maxLength": 12}},
        "required": ["color"],
        "additionalProperties": False,
    }
    result = vclient.generate(
        model=MODEL,
        prompt="Which colour?",
        images=[RED],
        format=schema,
        options={"temperature": 0, "num_predict": 200},
    )
    assert set(json.loads(result.response)) == {"color"}
    assert result.done_reason == "stop"  # the grammar ended it, not the token limit


def test_vision_capability_and_image_token_count(
    vclient: ollama.Client, oracle: VisionOracle
) -> None:
    assert {"completion", "vision"} <= set(vclient.show(MODEL).capabilities or [])
    square = png((0, 200, 0), (30, 30))
    with_image = oracle.greedy([{"role": "user", "content": "x", "images": [square]}], 1)
    without = oracle.greedy([{"role": "user", "content": "x"}], 1)
    # start + pads + end around the image: a square one is resized to 56x56, 4 merged patches.
    assert with_image.prompt_tokens - without.prompt_tokens == IMAGE_TOKENS + 2


def test_bad_image_data_is_400(vision_server: Server) -> None:
    for image, error in (
        ("not base64!", "invalid image input: illegal base64 data"),
        (base64.b64encode(b"not an image").decode(), "invalid image input: cannot identify"),
    ):
        response = httpx.post(
            f"{vision_server.url}/api/chat",
            json={
                "model": MODEL,
                "messages": [{"role": "user", "content": "?", "images": [image]}],
                "stream": False,
            },
            timeout=60,
        )
        assert response.status_code == 400, response.text
        assert response.json()["error"].startswith(error)


def test_openai_image_parts_answer_as_native_images(
    vision_server: Server, vclient: ollama.Client
) -> None:
    import openai

    oai = openai.OpenAI(base_url=vision_server.url + "/v1", api_key="ollmlx")
    data_url = "data:image/png;base64," + base64.b64encode(RED).decode()
    reply = oai.chat.completions.create(
        model=MODEL,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in this picture?"},
                    {"type": "image_url", "image_url": {"url": data_url}},
                ],
            }
        ],
        temperature=0,
        max_tokens=12,
    )
    native = vclient.chat(
        model=MODEL,
        messages=[{"role": "user", "content": "What is in this picture?", "images": [RED]}],
        options=GREEDY,
    )
    assert reply.choices[0].message.content == native.message.content
    assert reply.usage is not None
    assert reply.usage.prompt_tokens == native.prompt_eval_count
    assert reply.choices[0].finish_reason == "length"


def test_anthropic_image_block_equals_in_process_mlx_vlm(
    vision_server: Server, oracle: VisionOracle
) -> None:
    anthropic = require("anthropic", "the anthropic SDK is not installed (make install)")
    image = {"type": "base64", "media_type": "image/png", "data": base64.b64encode(RED).decode()}
    content = [{"type": "image", "source": image}, {"type": "text", "text": "What is in this?"}]
    with anthropic.Anthropic(base_url=vision_server.url, api_key="x", max_retries=0) as claude:
        message = claude.messages.create(
            model=MODEL,
            max_tokens=12,
            messages=[{"role": "user", "content": content}],
            extra_body={"temperature": 0},
        )
    expected = oracle.greedy([{"role": "user", "content": "What is in this?", "images": [RED]}], 12)
    assert message.content[0].text == expected.text
    assert message.usage.output_tokens == len(expected.tokens) == 12
    assert message.usage.input_tokens == expected.prompt_tokens
