"""The grammar's mask on the logits: exactly the tokens llguidance allows keep their
logits, the others (and a vocab padded past the tokenizer's) become -inf."""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from transformers import PreTrainedTokenizerFast

from tests.tinymodel import train_tokenizer
from workers.constrain import GrammarProcessor, make_llg_tokenizer

SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}


class _Tokenizer:
    """What make_llg_tokenizer reads of mlx-lm's TokenizerWrapper."""

    def __init__(self, hf: PreTrainedTokenizerFast) -> None:
        self._tokenizer = hf
        self.eos_token_ids = {hf.eos_token_id}


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> _Tokenizer:
    folder: Path = tmp_path_factory.mktemp("tokenizer")
    train_tokenizer(folder, 300)
    return _Tokenizer(PreTrainedTokenizerFast.from_pretrained(str(folder)))


def _allowed(processor: GrammarProcessor, prompt: list[int], vocab: int) -> set[int]:
    logits = mx.arange(vocab, dtype=mx.float32)[None]
    masked = np.array(processor(mx.array(prompt), logits)[0])
    kept = np.isfinite(masked)
    assert (masked[kept] == np.arange(vocab)[kept]).all()  # allowed logits are untouched
    return set(np.flatnonzero(kept).tolist())


def test_the_mask_keeps_exactly_the_tokens_the_grammar_allows(tokenizer: _Tokenizer) -> None:
    llg = make_llg_tokenizer(tokenizer)
    vocab = llg.vocab_size + 40  # the model's vocab padded past the tokenizer's
    processor = GrammarProcessor(llg, SCHEMA, vocab)
    brace = tokenizer._tokenizer.encode("{", add_special_tokens=False)
    prompt = [1, 2, 3]
    allowed = _allowed(processor, prompt, vocab)
    # llguidance's own answer, token by token: a token is allowed if the matcher takes it.
    expected = {t for t in range(llg.vocab_size) if processor._matcher.validate_tokens([t]) == 1}
    assert allowed == expected
    assert set(brace) <= allowed and len(allowed) < llg.vocab_size / 2
    assert not allowed & set(range(llg.vocab_size, vocab))  # padding never sampled
    # After `{`, the mask moves on with the sequence (each new token is consumed once).
    after = _allowed(processor, [*prompt, *brace], vocab)
    assert after != allowed
    assert after == {
        t for t in range(llg.vocab_size) if processor._matcher.validate_tokens([t]) == 1
    }
