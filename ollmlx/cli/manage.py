"""Model management commands: list, ps, show, create, cp, rm, stop."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..errors import StatusError
from ..store.modelfile import parse_modelfile
from .client import Client, ClientError


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


def processor(size: int, vram: int) -> str:
    """Ollama's PROCESSOR column (cmd/cmd.go ListRunningHandler)."""
    if vram == 0:
        return "100% CPU"
    if vram == size:
        return "100% GPU"
    if vram > size or size == 0:
        return "Unknown"
    cpu = int((size - vram) / size * 100 + 0.5)  # Go math.Round: halves away from zero
    return f"{cpu}%/{100 - cpu}% CPU/GPU"


def cmd_ps(client: Client, args: argparse.Namespace) -> None:
    models = client.request("GET", "/api/ps")["models"]
    rows = [["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"]]
    for m in models:
        rows.append(
            [
                m["name"],
                m["digest"][:12],
                human_size(m["size"]),
                processor(m["size"], m.get("size_vram", 0)),
                str(m["context_length"]),
                human_until(m["expires_at"]),
            ]
        )
    print_table(rows)


FINETUNE = "ollmlx.finetune."  # model_info keys of a fine-tuned model (how it was trained)


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
    tuned = {k[len(FINETUNE) :]: v for k, v in model_info.items() if k.startswith(FINETUNE)}
    if tuned:
        print("\n  Fine-tuning")
        for key, value in tuned.items():
            text = f"{value:.4g}" if isinstance(value, float) else str(value)
            print(f"    {key.replace('_', ' '):<20}{text}")
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
    if parsed.draft:
        request["draft"] = local(parsed.draft) or parsed.draft
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
    except StatusError as exc:
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
