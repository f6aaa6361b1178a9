"""POST /api/finetune end to end: a real server trains tiny models in job processes, installs
the result, and serves it (the official `ollama` client asks it)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ollmlx.store.catalog import Store
from tests.conftest import Server, start_server
from tests.finetune_helpers import (
    OPTIONS,
    body,
    finetune,
    job_folders,
    of,
    prefix_and_rest,
    recites,
    served,
    text_records,
)
from tests.oracle import Oracle
from tests.test_training import SPACED_TEMPLATE
from tests.training_helpers import CHATS, TEXTS, chat_records, no_leftovers, with_template

LORA = dict(method="lora", rank=16, num_layers=-1, iters=40, learning_rate=5e-4, save_every=20)


@pytest.fixture(scope="module")
def ft_server(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[Server]:
    srv = start_server(tmp_path_factory.mktemp("finetune"))
    with srv.client() as client:
        client.create(model="tiny", from_=str(tiny_model_dir))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def lora_model(ft_server: Server) -> dict:
    """A LoRA fine-tune of tiny on TEXTS, asked with `stream: false`: its one answer."""
    response = httpx.post(
        ft_server.url + "/api/finetune",
        json=body("lora-tuned", **LORA, stream=False),
        timeout=180,
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    return response.json()


def test_a_full_fine_tune_learns_its_text_and_shows_how(ft_server: Server, tiny_model_dir: Path):
    oracle = Oracle(tiny_model_dir)
    with ft_server.client() as client:
        assert not any(recites(client, "tiny", oracle))
    lines = finetune(
        ft_server,
        body(
            "full-tuned",
            valid=text_records()[:2],
            method="full",
            iters=30,
            learning_rate=1e-3,
            report_every=5,
            val_every=10,
            save_every=10,
        ),
    )
    statuses = [line["status"] for line in lines]
    assert statuses[:3] == ["loading base", "data", "validating"]
    assert statuses[-3:] == ["writing model", "writing manifest", "success"]
    data = lines[1]
    assert (data["train"], data["valid"], data["truncated"], data["iters"]) == (4, 2, 0, 30)
    training = of(lines, "training")
    assert [t["iteration"] for t in training] == [5, 10, 15, 20, 25, 30]
    assert all(t["total"] == 30 and t["peak_memory"] > 0 for t in training)
    losses = [t["train_loss"] for t in training]
    assert losses[-1] < losses[0] / 4  # the streamed loss falls
    assert [v["iteration"] for v in of(lines, "validating")] == [0, 10, 20, 30]
    assert [c["iteration"] for c in of(lines, "checkpoint")] == [10, 20, 30]

    success = lines[-1]
    assert success["model"] == "full-tuned:latest" and success["result"] == "model"
    assert success["iterations"] == 30 and success["resumed_from"] == 0
    assert success["train_loss"] == losses[-1]
    assert success["val_loss"] == of(lines, "validating")[-1]["val_loss"]
    # The job's own estimate (real token counts) against MLX's measured peak.
    assert 0.75 < success["memory_estimate"] / success["peak_memory"] < 1.35

    with ft_server.client() as client:
        assert all(recites(client, "full-tuned", oracle))
        show = client.show("full-tuned")
        assert show.details is not None and show.details.parent_model == "tiny:latest"
        info = {k: v for k, v in (show.modelinfo or {}).items() if k.startswith("ollmlx.")}
    assert info == {
        "ollmlx.finetune.base": "tiny:latest",
        "ollmlx.finetune.method": "full",
        "ollmlx.finetune.result": "model",
        "ollmlx.finetune.iterations": 30,
        "ollmlx.finetune.batch_size": 4,
        "ollmlx.finetune.learning_rate": 1e-3,
        "ollmlx.finetune.num_layers": 2,
        "ollmlx.finetune.max_seq_length": 2048,
        "ollmlx.finetune.mask_prompt": False,
        "ollmlx.finetune.seed": 0,
        "ollmlx.finetune.train_records": 4,
        "ollmlx.finetune.valid_records": 2,
        "ollmlx.finetune.trained_tokens": success["trained_tokens"],
        "ollmlx.finetune.train_loss": success["train_loss"],
        "ollmlx.finetune.val_loss": success["val_loss"],
    }
    assert job_folders(ft_server) == []  # installed: the job folder and its checkpoints go
    assert no_leftovers(ft_server.models_dir) == []


def test_a_lora_model_serves_what_mlx_lm_computes_with_its_adapter(
    ft_server: Server, lora_model: dict, tiny_model_dir: Path
):
    assert lora_model["status"] == "success" and lora_model["result"] == "adapter"
    assert lora_model["model"] == "lora-tuned:latest" and lora_model["iterations"] == 40
    stored = Store(ft_server.models_dir).get("lora-tuned")
    assert stored is not None and stored.adapter_dir is not None
    assert stored.model_dir == Store(ft_server.models_dir).get("tiny").model_dir  # type: ignore[union-attr]
    config = json.loads((stored.adapter_dir / "adapter_config.json").read_text())
    assert config["fine_tune_type"] == "lora" and config["lora_parameters"]["rank"] == 16

    with_adapter = Oracle(tiny_model_dir, stored.adapter_dir)
    with ft_server.client() as client:
        for text in TEXTS:
            prompt, rest = prefix_and_rest(with_adapter, text)
            expected = with_adapter.greedy(prompt, 12)
            assert expected.tokens[: len(rest)] == rest  # it learned the text
            assert served(client, "lora-tuned", with_adapter, prompt, 12) == expected.text
        info = client.show("lora-tuned").modelinfo or {}
    assert info["ollmlx.finetune.rank"] == 16 and info["ollmlx.finetune.alpha"] == 20.0
    assert info["ollmlx.finetune.fused"] is False


def test_a_fused_lora_model_serves_the_same_tokens(
    ft_server: Server, lora_model: dict, tiny_model_dir: Path
):
    lines = finetune(ft_server, body("lora-fused", **LORA, fuse=True))
    assert [line["status"] for line in lines[-4:]] == [
        "fusing",
        "writing model",
        "writing manifest",
        "success",
    ]
    assert lines[-1]["result"] == "model"
    store = Store(ft_server.models_dir)
    fused, adapter = store.get("lora-fused"), store.get("lora-tuned")
    assert fused is not None and fused.adapter_dir is None
    assert adapter is not None and adapter.adapter_dir is not None
    with_adapter = Oracle(tiny_model_dir, adapter.adapter_dir)  # the same job, unfused
    with ft_server.client() as client:
        for text in TEXTS:
            prompt, _ = prefix_and_rest(with_adapter, text)
            expected = with_adapter.greedy(prompt, 12)
            assert served(client, "lora-fused", with_adapter, prompt, 12) == expected.text


def test_chat_records_with_a_masked_prompt_teach_the_answers(
    ft_server: Server, tmp_path: Path, tiny_model_dir: Path
):
    # A template whose generation prompt ends in a space: training must split the
    # prompt boundary as inference does, or the learned answers are never produced.
    spaced = with_template(tiny_model_dir, tmp_path / "spaced", SPACED_TEMPLATE)
    with ft_server.client() as client:
        client.create(model="spaced", from_=str(spaced))
        request = body("chatty", **{"from": "spaced"}, data=chat_records(), method="full")
        request |= dict(mask_prompt=True, iters=40, learning_rate=1e-3, save_every=100)
        assert finetune(ft_server, request)[-1]["status"] == "success"
        for question, answer in CHATS:
            messages = [{"role": "user", "content": question}]
            options = {**OPTIONS, "num_predict": 16}
            before = client.chat(model="spaced", messages=messages, options=options)
            after = client.chat(model="chatty", messages=messages, options=options)
            assert not before.message.content.startswith(answer), question
            assert after.message.content.startswith(answer), question


def bad_request(server: Server, request: dict) -> tuple[int, str]:
    response = httpx.post(server.url + "/api/finetune", json=request, timeout=30)
    return response.status_code, response.json()["error"]


def test_bad_data_is_a_400_naming_the_line(ft_server: Server, tmp_path: Path):
    logged = len(ft_server.log())
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"text": "a"}\n\n{"text": "b",}\n')
    roles = tmp_path / "data"
    roles.mkdir()
    (roles / "train.jsonl").write_text(
        json.dumps(chat_records()[0])
        + "\n"
        + json.dumps({"messages": [{"role": "robot", "content": "hi"}]})
        + "\n"
    )
    cases = [
        (
            {"data": str(bad_json)},
            "bad.jsonl line 3: invalid JSON (Expecting property name enclosed in double"
            " quotes at column 14)",
        ),
        (
            {"data": [{"text": "a"}, {"prompt": "x"}]},
            'train[1]: missing field "completion" (a completions record has both)',
        ),
        (
            {"data": str(roles)},
            "train.jsonl line 2: messages[0].role must be one of system, user, assistant,"
            ' tool, got "robot"',
        ),
        (
            {"data": text_records(), "valid": [{"messages": []}]},
            'valid[0]: "messages" is empty',
        ),
        (
            {"data": "train.jsonl"},
            "data: the path train.jsonl must be absolute (it is on the server)",
        ),
        (
            {"data": {"text": "a"}},
            "data must be a list of records, a path on the server or a blob digest",
        ),
        ({"data": str(tmp_path / "none.jsonl")}, f"{tmp_path / 'none.jsonl'} does not exist"),
    ]
    for fields, message in cases:
        assert bad_request(ft_server, body("bad", **fields)) == (400, message), fields
    assert "fine-tuning job pid" not in ft_server.log()[logged:]


def test_a_blob_digest_names_an_upload(ft_server: Server):
    blob = b"".join(json.dumps(r).encode() + b"\n" for r in text_records())
    digest = hashlib.sha256(blob).hexdigest()
    missing = bad_request(ft_server, body("blobbed", data=f"sha256:{digest}"))
    assert missing == (400, f"blob sha256:{digest} not found (upload it with POST /api/blobs)")
    blobs = ft_server.models_dir / "blobs"
    blobs.mkdir(exist_ok=True)
    (blobs / f"sha256-{digest}").write_bytes(blob)
    # Read and checked: its four records are too few for a batch of 8.
    refused = bad_request(ft_server, body("blobbed", data=f"sha256:{digest}", batch_size=8))
    assert refused == (400, "batch_size 8 is more than the 4 training records")
    bad = b'{"text": "a"}\n{"text": 1}\n'
    bad_digest = hashlib.sha256(bad).hexdigest()
    (blobs / f"sha256-{bad_digest}").write_bytes(bad)
    refused = bad_request(ft_server, body("blobbed", data=f"sha256:{bad_digest}"))
    assert refused == (400, 'train.jsonl line 2: "text" must be a string, got a number')


def test_bad_requests_are_4xx_before_any_job(ft_server: Server):
    logged = len(ft_server.log())
    cases = [
        ({"model": "x", "data": text_records()}, 400, '"from" is required: the model to fine-tune'),
        (body("x", **{"from": "nope"}), 404, "model 'nope' not found"),
        (body("bad name!"), 400, "invalid model name"),
        (body(""), 400, "model is required: the new model's name"),
        (body("x", method="qlora"), 400, "Invalid enum value 'qlora' - at `$.method`"),
        (body("x", iters=0), 400, "iters must be at least 1, got 0"),
        (body("x", iters=5, epochs=1), 400, "give iters or epochs, not both"),
        (
            body("x", quantize=4),
            400,
            "quantize applies to a whole model: set fuse (or method full)",
        ),
        (
            body("x", quantize="q5_x", fuse=True),
            400,
            "unsupported quantization type q5_x (supported: q4_k_m, q4_k_s, q4_0, q4_1, q8_0,"
            " mlx-4bit, mlx-8bit)",
        ),
        (body("x", num_layers=3), 400, "num_layers 3 is more than the model's 2 layers"),
        (
            body("x", mask_prompt=True),
            400,
            "mask_prompt needs chat or completions records (text has no prompt)",
        ),
        (
            body("x", data=None),
            400,
            "data is required: a list of records, a path to a JSONL"
            " file or a folder with train.jsonl, or a blob digest (sha256:...)",
        ),
    ]
    for request, status, message in cases:
        assert bad_request(ft_server, request) == (status, message), request
    assert "fine-tuning job pid" not in ft_server.log()[logged:]


def test_a_model_with_an_adapter_is_trained_on_from_its_adapter(
    ft_server: Server, lora_model: dict
):
    # Its adapter is continued, so it fixes the LoRA parameters.
    assert bad_request(ft_server, body("again", **{"from": "lora-tuned"}, rank=4)) == (
        400,
        "the base adapter has rank 16; training continues it, so rank cannot be 4",
    )
    request = body("again", **{"from": "lora-tuned"}, valid=text_records(), iters=2)
    lines = finetune(ft_server, {**request, "learning_rate": 1e-9})
    # It starts from what lora-tuned learned (an untrained tiny model is near 13).
    assert of(lines, "validating")[0]["val_loss"] < 3
    stored = Store(ft_server.models_dir).get("again")
    assert stored is not None and stored.adapter_dir is not None
    config = json.loads((stored.adapter_dir / "adapter_config.json").read_text())
    assert config["lora_parameters"]["rank"] == 16


def test_records_longer_than_max_seq_length_are_counted_before_training(
    ft_server: Server, tiny_model_dir: Path
) -> None:
    # The count comes with the data line, the first one after the base's tokenizer loads
    # (only it can say how long a record is), before any iteration.
    oracle = Oracle(tiny_model_dir)
    records = [*text_records(), {"text": "a much longer record " * 40}]
    lengths = [len(oracle.tokenizer.encode(r["text"])) for r in records]
    limit = 48
    assert any(n > limit for n in lengths) and any(n <= limit for n in lengths)
    lines = finetune(
        ft_server, body("cut", data=records, max_seq_length=limit, iters=2, batch_size=1)
    )
    statuses = [line["status"] for line in lines]
    assert statuses[:2] == ["loading base", "data"]
    assert statuses.index("data") < statuses.index("training")
    assert lines[1]["truncated"] == sum(n > limit for n in lengths)
    with ft_server.client() as client:
        client.delete("cut")
