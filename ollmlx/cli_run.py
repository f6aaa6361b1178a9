"""`ollmlx run MODEL [PROMPT]`: one answer for scripts, or an interactive chat."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from typing import Any

from .client import Client, ClientError

HELP = """Available Commands:
  /set parameter NAME VALUE   Set a parameter (e.g. temperature 0.2)
  /set system TEXT            Set the system message
  /set verbose                Show timings after each answer
  /set quiet                  Stop showing timings
  /show info                  Show details for this model
  /clear                      Clear the session context
  /load MODEL                 Load a different model
  /bye                        Exit
  /?, /help                   Help for a command

Use \"\"\" to begin a multi-line message.
"""


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
    def rate(count: int, duration: int) -> float:
        return count / (duration / 1e9) if duration else 0.0

    lines = [
        f"total duration:       {final.get('total_duration', 0) / 1e9:.6f}s",
        f"load duration:        {final.get('load_duration', 0) / 1e9:.6f}s",
        f"prompt eval count:    {final.get('prompt_eval_count', 0)} token(s)",
        f"prompt eval duration: {final.get('prompt_eval_duration', 0) / 1e9:.6f}s",
        "prompt eval rate:     "
        f"{rate(final.get('prompt_eval_count', 0), final.get('prompt_eval_duration', 0)):.2f}"
        " tokens/s",
        f"eval count:           {final.get('eval_count', 0)} token(s)",
        f"eval duration:        {final.get('eval_duration', 0) / 1e9:.6f}s",
        "eval rate:            "
        f"{rate(final.get('eval_count', 0), final.get('eval_duration', 0)):.2f} tokens/s",
    ]
    print("\n".join(lines), file=sys.stderr)


def run_once(client: Client, args: argparse.Namespace, prompt: str) -> None:
    """Scripts: print only the answer, streamed as it comes."""
    request = {**base_request(args), "prompt": prompt}
    final: dict[str, Any] = {}
    for part in client.stream("/api/generate", request):
        if part.get("thinking") and not args.hidethinking:
            print(part["thinking"], end="", file=sys.stderr, flush=True)
        print(part.get("response", ""), end="", flush=True)
        final = part
    print("\n")
    if args.verbose:
        print_metrics(final)


def chat_turn(client: Client, request: dict[str, Any], verbose: bool) -> str:
    """Stream one answer; Ctrl-C stops it without leaving the chat."""
    answer: list[str] = []
    final: dict[str, Any] = {}
    try:
        for part in client.stream("/api/chat", request):
            text = part.get("message", {}).get("content", "")
            answer.append(text)
            print(text, end="", flush=True)
            final = part
    except KeyboardInterrupt:
        print("\n(stopped)")
    print("\n")
    if verbose and final.get("done"):
        print_metrics(final)
    return "".join(answer)


def read_message() -> str | None:
    """One message from the terminal; a \"\"\" line starts and ends a multi-line one."""
    with contextlib.suppress(ImportError):
        import readline  # noqa: F401  (arrow keys and history for input())
    try:
        line = input(">>> ")
    except EOFError:
        return None
    if not line.startswith('"""'):
        return line
    lines = [line[3:]]
    while not lines[-1].endswith('"""'):
        try:
            lines.append(input("... "))
        except EOFError:
            return None
    lines[-1] = lines[-1][:-3]
    return "\n".join(lines).strip("\n")


def interactive(client: Client, args: argparse.Namespace) -> None:
    request = base_request(args)
    client.request("POST", "/api/chat", {**request, "messages": []})  # load first
    messages: list[dict[str, Any]] = []
    options: dict[str, Any] = {}
    system: str | None = None
    verbose = args.verbose
    while True:
        try:
            text = read_message()
        except KeyboardInterrupt:
            print("\nUse Ctrl + d or /bye to exit.")
            continue
        if text is None or text.strip() in ("/bye", "/exit"):
            return
        if not text.strip():
            continue
        words = text.split()
        if words[0] in ("/?", "/help"):
            print(HELP)
        elif words[:2] == ["/set", "parameter"] and len(words) >= 4:
            value = " ".join(words[3:])
            with contextlib.suppress(ValueError):
                value = json.loads(value)
            options[words[2]] = value
            print(f"Set parameter '{words[2]}' to '{words[3]}'")
        elif words[:2] == ["/set", "system"]:
            system = text.split(None, 2)[2] if len(words) > 2 else None
            print("Set system message.")
        elif words[:2] == ["/set", "verbose"]:
            verbose = True
        elif words[:2] == ["/set", "quiet"]:
            verbose = False
        elif words[:2] == ["/show", "info"]:
            from .cli import cmd_show

            cmd_show(
                client,
                argparse.Namespace(
                    model=request["model"],
                    **dict.fromkeys(
                        ("modelfile", "template", "system", "parameters", "license"), False
                    ),
                ),
            )
        elif words[0] == "/clear":
            messages.clear()
            print("Cleared session context")
        elif words[0] == "/load" and len(words) == 2:
            request["model"] = words[1]
            client.request("POST", "/api/chat", {**request, "messages": []})
            messages.clear()
            print(f"Loading model '{words[1]}'")
        elif words[0].startswith("/"):
            print(f"Unknown command '{words[0]}'. Type /? for help")
        else:
            messages.append({"role": "user", "content": text})
            sent = ([{"role": "system", "content": system}] if system else []) + messages
            answer = chat_turn(client, {**request, "messages": sent, "options": options}, verbose)
            messages.append({"role": "assistant", "content": answer})


def run(client: Client, args: argparse.Namespace) -> None:
    prompt = " ".join(args.prompt)
    if not sys.stdin.isatty():
        piped = sys.stdin.read()
        prompt = f"{piped} {prompt}".strip() if prompt else piped
    if prompt or not sys.stdin.isatty():
        run_once(client, args, prompt)
    else:
        interactive(client, args)
