"""The `ollmlx` command: `serve`, and client commands that talk to the server at OLLAMA_HOST."""

from __future__ import annotations

import argparse
import sys

from .. import __version__
from ..config import OLLAMA_API_VERSION, ConfigError, load_settings
from . import finetune
from .client import Client, ClientError
from .manage import cmd_copy, cmd_create, cmd_list, cmd_ps, cmd_rm, cmd_show, cmd_stop


def cmd_pull(client: Client, args: argparse.Namespace) -> None:
    from .pull_view import cmd_pull

    cmd_pull(client, args)


def cmd_finetune(client: Client, args: argparse.Namespace) -> None:
    finetune.cmd_finetune(client, args)


def cmd_run(client: Client, args: argparse.Namespace) -> None:
    """One answer for a prompt or piped input; otherwise an interactive chat."""
    from .chat import chat
    from .run import base_request, ensure_model, print_embedding, run_once, terminal_width

    base_request(args)  # a bad --think fails before anything else, as in Ollama
    prompt = " ".join(args.prompt)
    width = terminal_width(args)
    if not sys.stdin.isatty():
        piped = sys.stdin.read()
        prompt = " ".join(text for text in (piped, prompt) if text)
        width = 0  # Ollama does not wrap piped input's answers
    interactive = not prompt and sys.stdin.isatty() and sys.stdout.isatty()
    info = ensure_model(client, args.model, ask=interactive)
    if "embedding" in info.get("capabilities", []):
        print_embedding(client, args, prompt)  # before any chat, as `ollama run` checks it
        return
    if interactive:
        chat(client, args, width)
    else:
        run_once(client, args, prompt, width)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ollmlx", description="Large language models on MLX, with Ollama's API and CLI."
    )
    parser.add_argument("-v", "--version", action="store_true", help="show the version")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("serve", help="start the server")
    run = sub.add_parser("run", help="run a model")
    run.add_argument("model")
    run.add_argument("prompt", nargs="*")
    run.add_argument("--verbose", action="store_true", help="show timings for the response")
    run.add_argument("--format", default="", help='response format (e.g. "json")')
    run.add_argument("--keepalive", default=None, help="how long the model stays loaded")
    run.add_argument("--think", nargs="?", const="true", default=None)
    run.add_argument("--hidethinking", action="store_true")
    run.add_argument("--nowordwrap", action="store_true", help="don't wrap words to the terminal")
    run.add_argument("--insecure", action="store_true", help="accepted for Ollama compatibility")
    run.add_argument(
        "--truncate",
        nargs="?",
        const=True,
        default=None,
        type=lambda text: text.lower() not in ("false", "0"),
        help="embedding models: truncate inputs longer than the context (default true)",
    )
    run.add_argument(
        "--dimensions", type=int, default=0, help="embedding models: keep the first N values"
    )
    for name, helptext in (
        ("list", "list models"),
        ("ls", "list models"),
        ("ps", "running models"),
    ):
        sub.add_parser(name, help=helptext)
    show = sub.add_parser("show", help="show information for a model")
    show.add_argument("model")
    for flag in ("modelfile", "template", "system", "parameters", "license"):
        show.add_argument(f"--{flag}", action="store_true")
    create = sub.add_parser("create", help="create a model from a Modelfile")
    create.add_argument("model")
    create.add_argument("-f", "--file", default="Modelfile")
    create.add_argument("-q", "--quantize", default=None, help="quantize: q4_K_M, q4_0, q8_0")
    pull = sub.add_parser("pull", help="pull a model from Hugging Face")
    pull.add_argument("model")
    pull.add_argument("--insecure", action="store_true", help="accepted for Ollama compatibility")
    finetune.add_parser(sub)
    cp = sub.add_parser("cp", help="copy a model")
    cp.add_argument("source")
    cp.add_argument("destination")
    rm = sub.add_parser("rm", help="remove models")
    rm.add_argument("models", nargs="+")
    stop = sub.add_parser("stop", help="unload a running model")
    stop.add_argument("model")
    service = sub.add_parser("service", help="run the server in the background (launchd/systemd)")
    service.add_argument(
        "action", choices=("install", "uninstall", "start", "stop", "status", "logs")
    )
    service.add_argument("-n", "--lines", type=int, default=50, help="logs: lines to show")
    service.add_argument("-f", "--follow", action="store_true", help="logs: keep printing")
    return parser


COMMANDS = {
    "list": cmd_list,
    "ls": cmd_list,
    "ps": cmd_ps,
    "show": cmd_show,
    "create": cmd_create,
    "cp": cmd_copy,
    "rm": cmd_rm,
    "stop": cmd_stop,
    "run": cmd_run,
    "pull": cmd_pull,
    "finetune": cmd_finetune,
}


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        sys.exit(1)
    if args.version:
        print(f"ollmlx version is {__version__} (Ollama API {OLLAMA_API_VERSION})")
        return
    if args.command == "serve":
        from ..api.server import serve

        serve(settings)
        return
    if args.command is None:
        parser.print_help()
        return
    if args.command == "service":
        from .service import ServiceError
        from .service import main as service_main

        try:
            sys.exit(service_main(args))
        except (ServiceError, ClientError, OSError) as exc:
            print(f"Error: {exc}", file=sys.stderr)
            sys.exit(1)
    try:
        COMMANDS[args.command](Client(settings), args)
    except ClientError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
