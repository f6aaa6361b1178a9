"""In-process mlx-lm: the reference that tokens served through ollmlx must equal."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class Generation:
    prompt: list[int]
    tokens: list[int]
    text: str


class Oracle:
    def __init__(self, model_dir: Path, adapter_dir: Path | None = None) -> None:
        from mlx_lm import load

        adapter = str(adapter_dir) if adapter_dir else None
        self.model, self.tokenizer = load(str(model_dir), adapter_path=adapter)

    def chat_prompt(self, messages: list[dict[str, Any]]) -> list[int]:
        text = self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def greedy(self, prompt: list[int], max_tokens: int, repeat_penalty: float = 1.0) -> Generation:
        """Greedy decoding; Ollama's default repeat penalty is 1.0 (off), else over the
        last 64 tokens."""
        from mlx_lm import stream_generate
        from mlx_lm.sample_utils import make_logits_processors, make_sampler

        processors = make_logits_processors(
            repetition_penalty=repeat_penalty if repeat_penalty != 1.0 else None,
            repetition_context_size=64,
        )
        tokens: list[int] = []
        text = ""
        for response in stream_generate(
            self.model,
            self.tokenizer,
            prompt,
            max_tokens=max_tokens,
            sampler=make_sampler(temp=0.0),
            logits_processors=processors,
        ):
            if response.finish_reason == "stop":
                break  # the EOS token: not part of the answer
            tokens.append(response.token)
            text += response.text
        return Generation(prompt, tokens, text)

    def greedy_logprobs(
        self, prompt: list[int], max_tokens: int
    ) -> list[tuple[int, float, list[int]]]:
        """(token, its logprob, the 3 most likely tokens) for each greedy step."""
        import mlx.core as mx
        from mlx_lm import stream_generate
        from mlx_lm.sample_utils import make_logits_processors, make_sampler

        steps = []
        for response in stream_generate(
            self.model,
            self.tokenizer,
            prompt,
            max_tokens=max_tokens,
            sampler=make_sampler(temp=0.0),
            logits_processors=make_logits_processors(),  # repeat_penalty 1.0: none
        ):
            logprobs = response.logprobs
            top = mx.argsort(-logprobs)[:3].tolist()
            steps.append((response.token, logprobs[response.token].item(), top))
        return steps
