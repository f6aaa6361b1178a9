"""The job key a fine-tuning request resumes by, and how /api/finetune reads `quantize`."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import pytest

from ollmlx.api.finetune import _bits
from ollmlx.errors import StatusError
from ollmlx.finetune_data import load_training_data
from ollmlx.finetune_plan import parse_job, resolve
from ollmlx.serving.training import TrainingRequest, job_key
from ollmlx.store.catalog import StoredModel
from ollmlx.store.names import parse_name
from ollmlx.store.spec import ModelSpec


def request(name: str = "tuned", digest: str = "d1", texts: tuple[str, ...] = ("a", "b"), **fields):
    base = StoredModel(
        name=parse_name("tiny"),
        manifest=ModelSpec(),
        model_dir=Path("/nonexistent"),
        adapter_dir=None,
        digest=digest,
        modified_at=datetime.now(timezone.utc),
    )
    job = parse_job({"model": "", "job_dir": "", "output": "", **fields})
    data = load_training_data([{"text": t} for t in texts])
    plan = resolve(job, n_layers=2, n_train=len(texts), formats=["text"])
    return TrainingRequest(parse_name(name).display, base, job, plan, data, 1)


def test_a_repeated_request_finds_its_job_folder():
    key = job_key(request(iters=10))
    assert key.startswith("tuned-latest-") and len(key) == len("tuned-latest-") + 16
    # What may change on a resume: iters, the result's form, the reporting cadence.
    same = request(iters=50, fuse=True, quantize=4, save_every=5, report_every=1, resume=True)
    assert job_key(same) == key
    assert job_key(request(iters=10, rank=8)) == key  # the default, spelled out


@pytest.mark.parametrize(
    "other",
    [
        {"name": "other"},
        {"digest": "d2"},  # the base model changed
        {"texts": ("a", "c")},
        {"learning_rate": 1e-4},
        {"rank": 4},
        {"method": "dora"},
        {"seed": 1},
        {"batch_size": 1},
    ],
)
def test_another_request_gets_another_job_folder(other: dict):
    assert job_key(request(**other)) != job_key(request())


def test_a_valid_set_is_part_of_the_key():
    plain = request()
    with_valid = replace(plain, data=load_training_data([{"text": "a"}], [{"text": "v"}]))
    assert job_key(with_valid) != job_key(plain)


def test_quantize_takes_bits_or_ollama_types():
    assert [_bits(4), _bits("q4_K_M"), _bits("q8_0"), _bits("mlx-4bit")] == [4, 4, 8, 4]
    with pytest.raises(StatusError) as bad:
        _bits("fp4")
    assert bad.value.status == 400
