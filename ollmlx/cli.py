"""The `ollmlx` command: `serve`, and client commands that talk to the server at OLLAMA_HOST."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from . import __version__
from .client import Client, ClientError
from .config import ConfigError, load_settings
from .modelfile import ModelfileError, parse_modelfile


def human_size(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"


def human_ago(stamp: str) -> str:
    when = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    seconds = (datetime.now(timezone.utc) - when).total_seconds()
    for unit, length in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= length:
            count = int(seconds // length)
            return f"{count} {unit}{'s' if count > 1 else ''} ago"
    return "Less than a minute ago" if seconds >= 1 else "Less than a second ago"


def human_until(stamp: str) -> str:
    when = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    seconds = (when - datetime.now(timezone.utc)).total_seconds()
    if seconds > 365 * 86400:
        return "Forever"
    if seconds <= 0:
        return "Stopping..."
    for unit, length in (("hour", 3600), ("minute", 60)):
        if seconds >= length:
            count = int(seconds // length)
            return f"{count} {unit}{'s' if count > 1 else ''} from now"
    return f"{int(seconds)} seconds from now"


def print_table(rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("    ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def cmd_list(client: Client, args: argparse.Namespace) -> None:
    models = client.request("GET", "/api/tags")["models"]
    rows = [["NAME", "ID", "SIZE", "MODIFIED"]]
    for m in models:
        rows.append(
            [m["name"], m["digest"][:12], human_size(m["size"]), human_ago(m["modified_at"])]
        )
    print_table(rows)


def cmd_ps(client: Client, args: argparse.Namespace) -> None:
    models = client.request("GET", "/api/ps")["models"]
    rows = [["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"]]
    for m in models:
        rows.append(
            [
                m["name"],
                m["digest"][:12],
                human_size(m["size"]),
                "100% GPU",
                str(m["context_length"]),
                human_until(m["expires_at"]),
            ]
        )
    print_table(rows)


def cmd_show(client: Client, args: argparse.Namespace) -> None:
    info = client.request("POST", "/api/show", {"model": args.model})
    for flag in ("modelfile", "template", "system", "parameters", "license"):
        if getattr(args, flag):
            print(info.get(flag, ""))
            return
    details, model_info = info.get("details", {}), info.get("model_info", {})
    arch = model_info.get("general.architecture", "")
    print("  Model")
    for label, value in (
        ("architecture", arch),
        ("parameters", details.get("parameter_size", "")),
        ("context length", model_info.get(f"{arch}.context_length", "")),
        ("embedding length", model_info.get(f"{arch}.embedding_length", "")),
        ("quantization", details.get("quantization_level", "")),
    ):
        if value != "":
            print(f"    {label:<20}{value}")
    print("\n  Capabilities")
    for capability in info.get("capabilities", []):
        print(f"    {capability}")
    if info.get("parameters"):
        print("\n  Parameters")
        for line in info["parameters"].splitlines():
            print(f"    {line}")
    if info.get("system"):
        print(f"\n  System\n    {info['system']}")
    if info.get("license"):
        print(f"\n  License\n    {info['license'].splitlines()[0]}")
    print()


def create_request(name: str, modelfile_path: Path) -> dict[str, Any]:
    """A /api/create request from a Modelfile; paths are relative to the Modelfile."""
    parsed = parse_modelfile(modelfile_path.read_text())
    base = modelfile_path.resolve().parent

    def local(value: str) -> str | None:
        path = Path(value).expanduser()
        path = path if path.is_absolute() else base / path
        return str(path.resolve()) if path.exists() else None

    request: dict[str, Any] = {"model": name, "from": local(parsed.from_) or parsed.from_}
    if parsed.adapter:
        request["adapters"] = {"adapter": local(parsed.adapter) or parsed.adapter}
    if parsed.template is not None:
        request["template"] = parsed.template
    if parsed.system is not None:
        request["system"] = parsed.system
    if parsed.parameters:
        request["parameters"] = parsed.parameters
    if parsed.messages:
        request["messages"] = [{"role": m.role, "content": m.content} for m in parsed.messages]
    if parsed.license:
        request["license"] = parsed.license
    return request


def cmd_create(client: Client, args: argparse.Namespace) -> None:
    path = Path(args.file)
    if not path.exists():
        raise ClientError(f"open {path}: no such file or directory")
    try:
        request = create_request(args.model, path)
    except ModelfileError as exc:
        raise ClientError(str(exc)) from None
    if args.quantize:
        request["quantize"] = args.quantize
    for part in client.stream("/api/create", request):
        print(part.get("status", ""), file=sys.stderr)


def cmd_copy(client: Client, args: argparse.Namespace) -> None:
    client.request("POST", "/api/copy", {"source": args.source, "destination": args.destination})
    print(f"copied '{args.source}' to '{args.destination}'")


def cmd_rm(client: Client, args: argparse.Namespace) -> None:
    for model in args.models:
        client.request("DELETE", "/api/delete", {"model": model})
        print(f"deleted '{model}'")


def cmd_stop(client: Client, args: argparse.Namespace) -> None:
    client.request("POST", "/api/generate", {"model": args.model, "keep_alive": 0})


def cmd_pull(client: Client, args: argparse.Namespace) -> None:
    from .cli_pull import cmd_pull

    cmd_pull(client, args)


def cmd_run(client: Client, args: argparse.Namespace) -> None:
    from .cli_run import run

    run(client, args)


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
        print(f"ollmlx version is {__version__}")
        return
    if args.command == "serve":
        from .server import serve

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
