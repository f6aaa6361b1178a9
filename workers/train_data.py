"""Checked records -> (tokens, prompt length) pairs, tokenized as inference will see them.

mlx-lm tokenizes a chat's whole text and takes the prompt length from tokenizing the
prompt alone. A byte-level BPE can split the boundary differently in the two (a prompt
ending in " " or "\\n\\n" merges with the answer's first word), so the mask is off and the
model learns a prompt it never sees at inference. Here the prompt is rendered and encoded
alone, exactly as the serving worker does (`prompts.render_chat` + `encode_text`), and the
rest of the text is encoded after it: the training sequence starts with the very tokens
of the inference prompt.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


class BadRecord(Exception):
    """A record the tokenizer or chat template cannot turn into a training sample."""

    def __init__(self, split: str, index: int, message: str) -> None:
        super().__init__(message)
        self.split = split
        self.index = index  # 0-based: line index + 1 of the job's <split>.jsonl


Sample = tuple[list[int], int]  # token ids, and how many of them are prompt (masked)


@dataclass
class Tokenized:
    samples: list[Sample] = field(default_factory=list)
    truncated: int = 0  # samples longer than max_seq_length (the trainer cuts them)
    tokens: int = 0  # token count before truncation
    longest: int = 0  # the longest sample, in tokens
    unaligned: int = 0  # chats whose full text does not start with the rendered prompt


def _encode(tokenizer: Any, text: str) -> list[int]:
    # A rendered template carries its own special tokens (as prompts.encode_text does).
    return list(tokenizer.encode(text, add_special_tokens=False))


def _render(tokenizer: Any, messages: list[dict[str, Any]], prompt: bool, tools: Any) -> str:
    options = {"tools": tools} if tools else {}
    return str(
        tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=prompt, **options
        )
    )


def chat_sample(
    tokenizer: Any, messages: list[dict[str, Any]], tools: Any, mask_prompt: bool
) -> tuple[Sample, bool]:
    """The sample of a chat whose last message is the assistant's; True if aligned."""
    prompt = _render(tokenizer, messages[:-1], True, tools)
    full = _render(tokenizer, messages, False, tools)
    head = _encode(tokenizer, prompt)
    if full.startswith(prompt):
        tokens = head + _encode(tokenizer, full[len(prompt) :])
        aligned = True
    else:
        # A template that renders the last turn differently (e.g. drops a thinking block
        # from the prompt): the prompt is not a prefix, so mask only what both share.
        tokens = _encode(tokenizer, full)
        common = 0
        for a, b in zip(head, tokens, strict=False):
            if a != b:
                break
            common += 1
        head = head[:common]
        aligned = False
    return (tokens, len(head) if mask_prompt else 0), aligned


def text_sample(tokenizer: Any, text: str) -> Sample:
    """mlx-lm's TextDataset: the text with the tokenizer's own specials, then EOS."""
    tokens = list(tokenizer.encode(text))
    eos = tokenizer.eos_token_id
    if eos is not None and (not tokens or tokens[-1] != eos):
        tokens.append(eos)
    return tokens, 0


def sample_of(
    record: dict[str, Any], fmt: str, tokenizer: Any, mask_prompt: bool
) -> tuple[Sample, bool]:
    if fmt == "text":
        return text_sample(tokenizer, record["text"]), True
    if fmt == "completions":
        # As mlx-lm's CompletionsDataset: a user turn and an assistant turn.
        messages = [
            {"role": "user", "content": record["prompt"]},
            {"role": "assistant", "content": record["completion"]},
        ]
    else:
        messages = record["messages"]
    return chat_sample(tokenizer, messages, record.get("tools"), mask_prompt)


def has_chat_template(tokenizer: Any) -> bool:
    builtin = getattr(tokenizer, "_chat_template", None)
    return bool(builtin or getattr(tokenizer, "chat_template", None))


def tokenize(
    split: str,
    records: list[dict[str, Any]],
    fmt: str,
    tokenizer: Any,
    *,
    mask_prompt: bool,
    max_seq_length: int,
    check: Callable[[], None] = lambda: None,
) -> Tokenized:
    """Tokenize every record once, up front: so bad records and lengths are known before
    training (and the trainer's batches sort by real token length)."""
    if fmt != "text" and not has_chat_template(tokenizer):
        raise BadRecord(split, 0, f"the model has no chat template for {fmt} records; use text")
    out = Tokenized()
    for index, record in enumerate(records):
        if index % 256 == 0:
            check()
        try:
            (tokens, offset), aligned = sample_of(record, fmt, tokenizer, mask_prompt)
        except Exception as exc:  # a template's own error (raise_exception, bad keys...)
            raise BadRecord(split, index, f"the chat template cannot render it: {exc}") from exc
        learnable = min(len(tokens), max_seq_length) - max(offset, 1)
        if learnable < 1:
            if offset >= max_seq_length:
                why = f"its prompt fills max_seq_length ({max_seq_length} tokens)"
            else:
                why = "it has no tokens after the prompt"
            raise BadRecord(split, index, f"nothing to learn: {why}")
        out.samples.append((tokens, offset))
        out.tokens += len(tokens)
        out.longest = max(out.longest, len(tokens))
        out.truncated += len(tokens) > max_seq_length
        out.unaligned += not aligned
    return out
