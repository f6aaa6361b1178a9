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
from .gofmt import go_duration, go_float32_list
from .pull_view import cmd_pull
from .terminal import Spinner, WordWrapper


def _think_value(raw: str | None) -> bool | str | None:
    if raw is None:
        return None
    lowered = raw.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("low", "medium", "high", "max"):
        return lowered
    raise ClientError(
        f'invalid value for --think: "{raw}" (must be true, false, high, medium, low, or max)'
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
    """Ollama's Metrics.Summary() (api/types.go): Go durations, and only the lines whose
    values are set; on stderr so that stdout holds only the answer."""
    total, load = final.get("total_duration", 0), final.get("load_duration", 0)
    prompt_count, prompt_ns = (
        final.get("prompt_eval_count", 0),
        final.get("prompt_eval_duration", 0),
    )
    eval_count, eval_ns = final.get("eval_count", 0), final.get("eval_duration", 0)
    lines = []
    if total > 0:
        lines.append(f"total duration:       {go_duration(total)}")
    if load > 0:
        lines.append(f"load duration:        {go_duration(load)}")
    if prompt_count > 0:
        lines.append(f"prompt eval count:    {prompt_count} token(s)")
    if prompt_ns > 0:
        lines.append(f"prompt eval duration: {go_duration(prompt_ns)}")
        lines.append(f"prompt eval rate:     {prompt_count / (prompt_ns / 1e9):.2f} tokens/s")
    if eval_count > 0:
        lines.append(f"eval count:           {eval_count} token(s)")
    if eval_ns > 0:
        lines.append(f"eval duration:        {go_duration(eval_ns)}")
        lines.append(f"eval rate:            {eval_count / (eval_ns / 1e9):.2f} tokens/s")
    if lines:
        print("\n".join(lines), file=sys.stderr, flush=True)


def terminal_width(args: argparse.Namespace) -> int:
    """Columns to wrap at; 0 (no wrap) with --nowordwrap or when stdout is not a terminal."""
    if args.nowordwrap or not sys.stdout.isatty():
        return 0
    return shutil.get_terminal_size().columns


def pull(client: Client, model: str) -> None:
    """Pull with `ollmlx pull`'s progress display."""
    cmd_pull(client, argparse.Namespace(model=model, insecure=False))


def convert_gguf(client: Client, model: str) -> None:
    """A GGUF model converts to MLX on its first use: ask for it now (the server's
    /api/pull does it, or says it is done), showing the progress while it runs."""
    live = sys.stderr.isatty()
    shown = False
    for part in client.stream("/api/pull", {"model": model}):
        if part.get("status") != "converting gguf" or not part.get("total"):
            continue
        line = f"converting GGUF to MLX: {part.get('completed', 0)}/{part['total']} tensors"
        if live:
            sys.stderr.write("\r\x1b[2K" + line)
        elif not shown:
            print("converting GGUF to MLX", file=sys.stderr)
        shown = True
    if shown and live:
        sys.stderr.write("\n")


def ensure_model(client: Client, model: str, ask: bool) -> dict[str, Any]:
    """The model's /api/show; a model the server does not have is pulled first (`ask`
    first in a terminal)."""
    try:
        shown = client.request("POST", "/api/show", {"model": model})
    except ClientError as exc:
        if exc.status != 404:
            raise
        not_found = exc
    else:
        if (shown.get("details") or {}).get("format") == "gguf":
            convert_gguf(client, model)
        return shown
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
    return client.request("POST", "/api/show", {"model": model})


# Ollama's thinking layout (cmd/cmd.go thinkingOutputOpeningText/ClosingText): on stdout,
# grey and bold in a terminal (readline.ColorGrey, ColorBold, ColorDefault).
GREY, BOLD, DEFAULT = "\x1b[38;5;245m", "\x1b[1m", "\x1b[0m"


def thinking_opening(plain: bool) -> str:
    return "Thinking...\n" if plain else f"{GREY}{BOLD}Thinking...\n{DEFAULT}{GREY}"


def thinking_closing(plain: bool) -> str:
    return "...done thinking.\n\n" if plain else f"{GREY}{BOLD}...done thinking.\n\n{DEFAULT}"


def stream_answer(
    client: Client,
    path: str,
    request: dict[str, Any],
    out: WordWrapper,
    show_thinking: bool,
    plain: bool = False,
) -> Iterator[dict[str, Any]]:
    """Print one streamed answer (a spinner until its first token); yield every chunk.

    Thinking goes to stdout before the answer, between "Thinking..." and "...done
    thinking.", as `ollama run` prints it; `plain` leaves out the colours.
    """
    spinner = Spinner().start()
    opened = closed = False
    thought_text = ""
    parts = client.stream(path, request)
    try:
        for part in parts:
            message = part.get("message", part)
            text = message.get("content", message.get("response", "")) or ""
            thought = message.get("thinking") or ""
            calls = message.get("tool_calls")
            if text or (thought and show_thinking) or part.get("done"):
                spinner.stop()
            if thought and show_thinking:
                if not opened:
                    out.write(thinking_opening(plain))
                    opened, closed = True, False
                thought_text += thought
                out.write(thought)
            if opened and not closed and (text or calls):
                if not thought_text.endswith("\n"):
                    out.write("\n")
                out.write(thinking_closing(plain))
                opened, closed = False, True
                out.reset()
            if text:
                out.write(text)
            yield part
    finally:
        spinner.stop()
        parts.close()  # closing the connection cancels the request on the server


def print_embedding(client: Client, args: argparse.Namespace, text: str) -> None:
    """`ollama run EMBEDDING_MODEL TEXT` (cmd/cmd.go generateEmbedding): the first vector,
    as Go's json.Marshal writes a []float32."""
    if not text:
        raise ClientError(
            f'embedding models require input text. Usage: ollmlx run {args.model} "your text here"'
        )
    request: dict[str, Any] = {"model": args.model, "input": text}
    if args.keepalive:
        request["keep_alive"] = args.keepalive
    if args.truncate is not None:
        request["truncate"] = args.truncate
    if args.dimensions > 0:
        request["dimensions"] = args.dimensions
    embeddings = client.request("POST", "/api/embed", request).get("embeddings") or []
    if not embeddings:
        raise ClientError("no embeddings returned")
    print(go_float32_list(embeddings[0]))


def run_once(client: Client, args: argparse.Namespace, prompt: str, width: int) -> None:
    """Scripts: print the answer (and its thinking, as Ollama lays it out) as it comes."""
    request = {**base_request(args), "prompt": prompt}
    out = WordWrapper(sys.stdout, width)
    final: dict[str, Any] = {}
    plain = not sys.stdout.isatty()  # Ollama's generate: colours only in a terminal
    show = not args.hidethinking
    for part in stream_answer(client, "/api/generate", request, out, show, plain):
        final = part
    if prompt:
        print("\n")
    if args.verbose:
        print_metrics(final)
