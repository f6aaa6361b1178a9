"""The job schema, its defaults and checks, and the memory estimate (no MLX)."""

from __future__ import annotations

import json

import pytest

from ollmlx.finetune_memory import estimate_memory, padded_length
from ollmlx.finetune_plan import JobError, Plan, parse_job, resolve

PATHS = {"model": "/m", "job_dir": "/j", "output": "/o"}
LLAMA = {
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "num_hidden_layers": 16,
    "vocab_size": 128256,
    "torch_dtype": "bfloat16",
}


def plan_of(n_layers: int = 16, n_train: int = 100, fmt: str = "chat", **job) -> Plan:
    return resolve(parse_job({**PATHS, **job}), n_layers=n_layers, n_train=n_train, formats=[fmt])


def test_defaults_are_mlx_lm_lora_defaults():
    plan = plan_of(n_layers=32)
    assert (plan.method, plan.iters, plan.batch_size, plan.num_layers) == ("lora", 1000, 4, 16)
    assert (plan.rank, plan.scale, plan.dropout, plan.learning_rate) == (8, 20.0, 0.0, 1e-5)
    assert (plan.val_every, plan.save_every, plan.report_every) == (200, 100, 10)
    assert plan.result == "adapter" and not plan.fuse


def test_defaults_fit_a_small_model_and_dataset():
    plan = plan_of(n_layers=2, n_train=3)
    assert plan.num_layers == 2 and plan.batch_size == 3


def test_epochs_count_whole_batches():
    assert plan_of(n_train=10, batch_size=4, epochs=3).iters == 6  # 2 batches a pass
    assert plan_of(n_train=10, batch_size=4, epochs=0.5).iters == 1


def test_full_and_fuse_give_a_model():
    assert plan_of(method="full").result == "model"
    assert plan_of(fuse=True, quantize=4).result == "model"


@pytest.mark.parametrize(
    ("job", "message"),
    [
        ({"iters": 0}, "iters must be at least 1, got 0"),
        ({"iters": 5, "epochs": 1}, "give iters or epochs, not both"),
        ({"learning_rate": 2.0}, "learning_rate must be between 0 and 1, got 2.0"),
        ({"method": "qlora"}, "Invalid enum value 'qlora' - at `$.method`"),
        ({"rank": "8"}, "Expected `int | null`, got `str` - at `$.rank`"),
        ({"dropout": 1.0}, "dropout must be in [0, 1), got 1.0"),
        ({"num_layers": 0}, "num_layers must be at least 1 (or -1 for all), got 0"),
        ({"quantize": 7}, "quantize must be one of (2, 3, 4, 5, 6, 8) bits, got 7"),
    ],
)
def test_bad_values_are_400s(job, message):
    with pytest.raises(JobError) as info:
        parse_job({**PATHS, **job})
    assert str(info.value) == message and info.value.status == 400


def test_missing_paths_and_bad_json_are_400s():
    with pytest.raises(JobError, match="Object missing required field `output`"):
        parse_job({"model": "/m", "job_dir": "/j"})
    with pytest.raises(JobError, match="not valid JSON"):
        parse_job(b"{")
    assert parse_job(json.dumps({**PATHS, "unknown": 1}).encode()).model == "/m"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_layers": 20}, "num_layers 20 is more than the model's 16 layers"),
        ({"batch_size": 8, "n_train": 5}, "batch_size 8 is more than the 5 training records"),
        ({"mask_prompt": True, "fmt": "text"}, "mask_prompt needs chat or completions records"),
        ({"quantize": 4}, "quantize applies to a whole model: set fuse (or method full)"),
    ],
)
def test_impossible_jobs_are_400s(kwargs, message):
    with pytest.raises(JobError, match=message.replace("(", r"\(").replace(")", r"\)")):
        plan_of(**kwargs)


def test_full_fine_tuning_refuses_quantized_weights():
    with pytest.raises(JobError, match="full fine-tuning needs unquantized weights"):
        resolve(
            parse_job({**PATHS, "method": "full"}),
            n_layers=4,
            n_train=4,
            formats=["text"],
            model_quantized=True,
        )


def test_a_continued_adapter_keeps_its_parameters():
    adapter = {
        "fine_tune_type": "dora",
        "num_layers": -1,
        "lora_parameters": {"rank": 4, "scale": 10.0, "dropout": 0.1},
    }

    def plan(**job) -> Plan:
        return resolve(
            parse_job({**PATHS, "adapter": "/a", **job}),
            n_layers=6,
            n_train=4,
            formats=["chat"],
            adapter_config=adapter,
        )

    got = plan()
    assert (got.method, got.num_layers, got.rank, got.scale, got.dropout) == (
        "dora",
        6,
        4,
        10.0,
        0.1,
    )
    assert got.continues_adapter
    assert plan(rank=4, method="dora").rank == 4  # repeating a value is fine
    with pytest.raises(JobError, match=r"the base adapter has rank 4; .* cannot be 16"):
        plan(rank=16)
    with pytest.raises(JobError, match="method must be dora"):
        plan(method="lora")
    full = plan(method="full", rank=16)  # full folds the adapter in first: fresh values
    assert not full.continues_adapter and full.rank == 16


def test_padding_follows_mlx_lm():
    assert padded_length(19, 2048) == 33
    assert padded_length(32, 2048) == 33
    assert padded_length(33, 2048) == 65
    assert padded_length(5000, 2048) == 2048


def test_memory_estimate_grows_with_the_job():
    weights = 2_500_000_000
    lora = estimate_memory(LLAMA, plan_of(), weights, seq_len=512)
    assert lora.weights == weights
    # rank-8 adapters on 16 blocks: 5.6M float32 values, five copies.
    assert lora.trainable == 16 * 8 * (2 * 4096 + 2 * 2560 + 3 * 10240) * 4 * 5
    longer = estimate_memory(LLAMA, plan_of(), weights, seq_len=2048)
    assert longer.activations > 4 * lora.activations and longer.logits > 3.9 * lora.logits
    full = estimate_memory(LLAMA, plan_of(method="full"), weights, seq_len=512)
    assert full.trainable > 10 * lora.trainable
    checkpointed = estimate_memory(LLAMA, plan_of(grad_checkpoint=True), weights, seq_len=512)
    assert checkpointed.activations < lora.activations / 4
    unbounded = estimate_memory(LLAMA, plan_of(), weights)  # no seq_len: max_seq_length
    assert unbounded.total == longer.total


def test_seq_len_guess_leans_high_and_is_bounded():
    from ollmlx.finetune_memory import format_bytes, seq_len_guess

    assert seq_len_guess(300, 2048) == 132  # 100 tokens at 3 bytes each, plus a template
    assert seq_len_guess(10**6, 2048) == 2048
    assert format_bytes(1000) == "1000 B"
    assert format_bytes(3 * 1024**3) == "3.0 GiB"
