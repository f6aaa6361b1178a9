"""`ollmlx run MODEL [PROMPT]`: one answer for scripts, or an interactive chat.

As `ollama run`: prompt arguments, piped stdin or a redirected stdout mean one answer
(stdin is prepended to the arguments); otherwise a chat (chat.py). A missing model
is pulled first: without asking for scripts, after a question in a terminal.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Iterator
from typing import Any

from .client import Client, ClientError
from .pull_view import cmd_pull
from .terminal import Spinner, WordWrapper


def _think_value(raw: str | None) -> bool | str | None:
    if raw is None:
        return None
    lowered = raw.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("low", "medium", "high"):
        return lowered
    raise ClientError(
        f'invalid value for --think: "{raw}" (must be true, false, high, medium, or low)'
    )


def base_request(args: argparse.Namespace) -> dict[str, Any]:
    request: dict[str, Any] = {"model": args.model}
    if args.format:
        request["format"] = args.format
    if args.keepalive:
        request["keep_alive"] = args.keepalive
    think = _think_value(args.think)
    if think is not None:
        request["think"] = think
    return request


def print_metrics(final: dict[str, Any]) -> None:
    """Ollama's Metrics.Summary(), on stderr so that stdout holds only the answer."""

    def rate(count: int, duration: int) -> float:
        return count / (duration / 1e9) if duration else 0.0

    prompt_count, prompt_ns = (
        final.get("prompt_eval_count", 0),
        final.get("prompt_eval_duration", 0),
    )
    eval_count, eval_ns = final.get("eval_count", 0), final.get("eval_duration", 0)
    lines = [
        f"total duration:       {final.get('total_duration', 0) / 1e9:.6f}s",
        f"load duration:        {final.get('load_duration', 0) / 1e9:.6f}s",
        f"prompt eval count:    {prompt_count} token(s)",
        f"prompt eval duration: {prompt_ns / 1e9:.6f}s",
        f"prompt eval rate:     {rate(prompt_count, prompt_ns):.2f} tokens/s",
        f"eval count:           {eval_count} token(s)",
        f"eval duration:        {eval_ns / 1e9:.6f}s",
        f"eval rate:            {rate(eval_count, eval_ns):.2f} tokens/s",
    ]
    print("\n".join(lines), file=sys.stderr, flush=True)


def terminal_width(args: argparse.Namespace) -> int:
    """Columns to wrap at; 0 (no wrap) with --nowordwrap or when stdout is not a terminal."""
    if args.nowordwrap or not sys.stdout.isatty():
        return 0
    return shutil.get_terminal_size().columns


def pull(client: Client, model: str) -> None:
    """Pull with `ollmlx pull`'s progress display."""
    cmd_pull(client, argparse.Namespace(model=model, insecure=False))


def ensure_model(client: Client, model: str, ask: bool) -> None:
    """Pull a model the server does not have; `ask` first in a terminal, as the issue wants."""
    try:
        client.request("POST", "/api/show", {"model": model})
        return
    except ClientError as exc:
        if exc.status != 404:
            raise
        not_found = exc
    if ask:
        try:
            answer = input(f"model '{model}' not found. pull it? [y/N] ")
        except EOFError:
            answer = ""
        if answer.strip().lower() not in ("y", "yes"):
            raise not_found
    try:
        pull(client, model)
    except ClientError as exc:
        if str(exc) in ("404: Not Found", "405: Method Not Allowed"):
            raise not_found from None  # a server without /api/pull: the first error says it
        raise
    client.request("POST", "/api/show", {"model": model})


def stream_answer(
    client: Client,
    path: str,
    request: dict[str, Any],
    out: WordWrapper,
    show_thinking: bool,
) -> Iterator[dict[str, Any]]:
    """Print one streamed answer (a spinner until its first token); yield every chunk."""
    spinner = Spinner().start()
    thinking = False
    parts = client.stream(path, request)
    try:
        for part in parts:
            message = part.get("message", part)
            text = message.get("content", message.get("response", "")) or ""
            thought = message.get("thinking") or ""
            if text or thought or part.get("done"):
                spinner.stop()
            if thought and show_thinking:
                if not thinking:
                    sys.stderr.write("Thinking...\n")
                    thinking = True
                sys.stderr.write(thought)
                sys.stderr.flush()
            if text and thinking:
                sys.stderr.write("\n...done thinking.\n\n")
                thinking = False
            if text:
                out.write(text)
            yield part
    finally:
        spinner.stop()
        parts.close()  # closing the connection cancels the request on the server


def run_once(client: Client, args: argparse.Namespace, prompt: str, width: int) -> None:
    """Scripts: print only the answer, streamed as it comes; thinking goes to stderr."""
    request = {**base_request(args), "prompt": prompt}
    out = WordWrapper(sys.stdout, width)
    final: dict[str, Any] = {}
    for part in stream_answer(client, "/api/generate", request, out, not args.hidethinking):
        final = part
    if prompt:
        print("\n")
    if args.verbose:
        print_metrics(final)
