"""One request's generation state, shared by the text (batched) and the vision paths.

A `Sequence` turns each sampled token into the client's next event: text through the stop
matcher, then the response parser (content, thinking, tool calls), logprobs if asked, and
at the end the final event with Ollama's counts and timings. The runners only decide which
token comes next; everything a client sees of a token is decided here, once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ollmlx.protocol import DoneEvent, TokenEvent, TokenLogprob, WorkerEvent

from .parsing import Parsed, ResponseParser
from .prompts import starts_in_thinking
from .sampling import StopMatcher


def response_parser(tokenizer: Any, request: Any, prompt: list[int]) -> ResponseParser:
    """The parser for the markers mlx-lm found in this model's tokenizer and template."""
    think = (tokenizer.think_start, tokenizer.think_end) if tokenizer.has_thinking else None
    tool = (
        (tokenizer.tool_call_start, tokenizer.tool_call_end) if tokenizer.has_tool_calling else None
    )
    return ResponseParser(
        think=think,
        tool=tool,
        tool_parser=tokenizer.tool_parser,
        tools=request.tools,
        start_thinking=starts_in_thinking(tokenizer, prompt),
        keep_thinking=request.think is not False,
    )


class Sequence:
    """The client-facing side of one generation: its events, in order, exactly once."""

    def __init__(
        self,
        job: Any,  # engine.Job: the request and its thread-safe `emit`
        prompt: list[int],
        parser: ResponseParser,
        decode: Callable[[list[int]], str],
        reused: int = 0,
    ) -> None:
        self.job = job
        self.request = job.request
        self.prompt = prompt
        self.parser = parser
        self.stops = StopMatcher(self.request.sampling.stop)
        self._decode = decode
        self.reused = reused  # prompt tokens served from the prompt cache
        self.started = time.perf_counter_ns()
        self.first_token_at = 0
        self.generated: list[int] = []
        self.done = False
        self.grammar: Any = None  # constrain.GrammarProcessor of a `format` request

    @property
    def stopped(self) -> bool:
        """A stop string was seen: the sequence must end now."""
        return self.stops.stopped

    @property
    def cancelled(self) -> bool:
        return bool(self.job.cancelled.is_set())

    def emit(self, event: WorkerEvent) -> None:
        self.job.emit(event)

    def token(self, token: int, text: str, logprobs: Any = None) -> None:
        """A generated token and its decoded text (possibly empty, mid-character)."""
        if not self.first_token_at:
            self.first_token_at = time.perf_counter_ns()
        self.generated.append(token)
        visible = self.stops.feed(text)
        entries = self._logprobs(token, logprobs) if logprobs is not None else None
        self.emit(_token_event(self.parser.feed(visible), token, entries))

    def prompt_done(self) -> None:
        """The prompt is evaluated (for TTFT when the first token ends the answer)."""
        if not self.first_token_at:
            self.first_token_at = time.perf_counter_ns()

    def finish(self, reason: str, tail: str = "") -> None:
        """The last text (a detokenizer's tail), held-back text, then the final event."""
        if self.done:
            return
        self.done = True
        self.job.ended = True
        parsed = self.parser.feed(self.stops.feed(tail) + self.stops.flush())
        rest = self.parser.flush()
        parsed.content += rest.content
        parsed.thinking += rest.thinking
        parsed.tool_calls += rest.tool_calls
        if parsed:
            self.emit(_token_event(parsed, -1, None))
        finished = time.perf_counter_ns()
        first = self.first_token_at or finished
        self.emit(
            DoneEvent(
                done_reason=reason,
                # Ollama counts the whole prompt, cache hits included
                # (x/mlxrunner/pipeline.go: PromptEvalCount: len(request.Tokens)).
                prompt_eval_count=len(self.prompt),
                prompt_eval_duration=first - self.started,
                cached_count=self.reused,
                stop_sequence=self.stops.matched,
                eval_count=len(self.generated),
                eval_duration=finished - first,
                context=[*self.prompt, *self.generated] if self.request.return_context else None,
            )
        )

    def fail(self, message: str, status: int = 500) -> None:
        """End this sequence alone with an error line (no other sequence is touched)."""
        if self.done:
            return
        self.done = True
        self.job.fail(message, status)

    def _logprobs(self, token: int, logprobs: Any) -> list[TokenLogprob] | None:
        """The sampled token's log probability and the most likely alternatives."""
        if not self.request.logprobs and not self.request.top_logprobs:
            return None
        import mlx.core as mx

        top = None
        if self.request.top_logprobs:
            k = min(self.request.top_logprobs, logprobs.shape[-1])
            best = mx.argpartition(-logprobs, k - 1)[:k]
            pairs = zip(best.tolist(), logprobs[best].tolist(), strict=True)
            top = [self._entry(t, v) for t, v in sorted(pairs, key=lambda pair: -pair[1])]
        entry = self._entry(token, logprobs[token].item())
        entry.top_logprobs = top
        return [entry]

    def _entry(self, token: int, value: float) -> TokenLogprob:
        text = self._decode([token])
        return TokenLogprob(token=text, logprob=float(value), bytes=list(text.encode()))


def _token_event(parsed: Parsed, token: int, logprobs: list[TokenLogprob] | None) -> TokenEvent:
    return TokenEvent(
        text=parsed.content,
        token=token,
        logprobs=logprobs,
        thinking=parsed.thinking,
        tool_calls=parsed.tool_calls or None,
    )
