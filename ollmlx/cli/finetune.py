"""`ollmlx finetune NEW --from BASE --data train.jsonl`: a job on the server, with a progress bar.

    loading base
    data: 4 records (0 truncated), 2 for validation; 30 iterations, about 4.3 MB of memory
    training  40% ▕███████           ▏ 12/30  loss 2.314  val 2.551  95 it/s  0s left
    writing adapter
    success: created tuned:latest (train loss 1.064, val loss 1.102)

On a terminal the bar redraws in place; otherwise each report is a line of its own, so logs
stay readable. Ctrl-C closes the connection, which cancels the job on the server; its last
checkpoint stays there for `--resume`.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import ipaddress
import shutil
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from .client import Client, ClientError
from .pull_view import _duration, _size

BAR_WIDTH = 18
# Flags sent as request fields of the same name (when given).
FIELDS = (
    "method",
    "iters",
    "epochs",
    "learning_rate",
    "batch_size",
    "rank",
    "alpha",
    "dropout",
    "num_layers",
    "max_seq_length",
    "seed",
    "val_every",
    "save_every",
    "quantize",
)


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "finetune", help="fine-tune a model on your data (LoRA, DoRA or full) into a new model"
    )
    parser.add_argument("model", help="the new model's name")
    parser.add_argument("--from", dest="base", required=True, help="the model to start from")
    parser.add_argument("--data", required=True, help="train.jsonl, or a folder holding it")
    parser.add_argument("--valid", default=None, help="valid.jsonl (validation records)")
    parser.add_argument("--method", choices=("lora", "dora", "full"), default=None)
    steps = parser.add_mutually_exclusive_group()
    steps.add_argument("--iters", type=int, default=None, help="training steps (default 1000)")
    steps.add_argument("--epochs", type=float, default=None, help="passes over the data")
    parser.add_argument("--learning-rate", type=float, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--rank", type=int, default=None, help="LoRA rank (default 8)")
    parser.add_argument("--alpha", type=float, default=None, help="LoRA scale (default 20)")
    parser.add_argument("--dropout", type=float, default=None)
    parser.add_argument("--num-layers", type=int, default=None, help="top layers trained; -1 all")
    parser.add_argument("--max-seq-length", type=int, default=None)
    parser.add_argument("--mask-prompt", action="store_true", help="learn only the answers")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--val-every", type=int, default=None)
    parser.add_argument("--save-every", type=int, default=None, help="steps between checkpoints")
    parser.add_argument("--fuse", action="store_true", help="fuse the adapter into the weights")
    parser.add_argument("--quantize", default=None, help="quantize the fused model: 4, 8, q4_0")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint")


class FinetuneView:
    """Status lines, and one training bar redrawn in place (or printed per report)."""

    def __init__(self, out: TextIO, live: bool) -> None:
        self.out, self.live = out, live
        self.bar = ""  # the training bar as last drawn; "" while there is none
        self.total = 0
        self.val_loss: float | None = None
        self.checkpoint = 0  # the last checkpoint's iteration: what --resume continues from
        self._mark: tuple[float, int] | None = None  # (time, iteration) of a recent report
        self.rate = 0.0  # iterations per second, smoothed
        self._report: tuple[int, float | None] = (0, None)  # the last (iteration, loss)

    def handle(self, part: dict[str, Any], now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        status = str(part.get("status", ""))
        if status == "training":
            self._training(part, now)
        elif status == "validating":
            self.val_loss = part.get("val_loss")
            if self.live and self.bar:  # the report came first: show its validation too
                self._draw(self._render())
        elif status == "checkpoint":
            self.checkpoint = int(part.get("iteration") or 0)
        elif status == "data":
            self.total = int(part.get("iters") or 0)
            self._line(describe_data(part))
        elif status == "success":
            self._line(describe_success(part))
        elif status:
            self._line(status)

    def _training(self, part: dict[str, Any], now: float) -> None:
        iteration = int(part.get("iteration") or 0)
        self.total = int(part.get("total") or self.total)
        if self._mark is None:
            self.rate = float(part.get("iterations_per_second") or 0)
        elif now > self._mark[0] and iteration > self._mark[1]:
            # Wall time between reports: validations and checkpoints count too.
            instant = (iteration - self._mark[1]) / (now - self._mark[0])
            self.rate = 0.7 * self.rate + 0.3 * instant if self.rate else instant
        self._mark = (now, iteration)
        self._report = (iteration, part.get("train_loss"))
        if self.live:
            self._draw(self._render())
        else:
            self.bar = self._render()
            print(self.bar, file=self.out)

    def _render(self) -> str:
        iteration, loss = self._report
        return render_bar(iteration, self.total, loss, self.val_loss, self.rate)

    def _draw(self, bar: str) -> None:
        self.bar = bar
        columns = shutil.get_terminal_size((100, 24)).columns
        self.out.write("\r\x1b[2K" + bar[: columns - 1])
        self.out.flush()

    def _line(self, text: str) -> None:
        if self.live and self.bar:
            self.out.write("\n")  # keep the last bar on screen above what follows
            self.bar = ""
        print(text, file=self.out, flush=True)

    def close(self) -> None:
        if self.live and self.bar:
            self.out.write("\n")
            self.out.flush()
            self.bar = ""


def render_bar(
    iteration: int, total: int, loss: float | None, val_loss: float | None, rate: float
) -> str:
    fraction = min(iteration / total, 1.0) if total else 0.0
    filled = round(fraction * BAR_WIDTH)
    bar = "█" * filled + " " * (BAR_WIDTH - filled)
    text = f"training {fraction:4.0%} ▕{bar}▏ {iteration}/{total}"
    if loss is not None:
        text += f"  loss {loss:.3f}"
    if val_loss is not None:
        text += f"  val {val_loss:.3f}"
    if rate > 0:
        text += f"  {rate:.3g} it/s" if rate < 100 else f"  {rate:.0f} it/s"
        if iteration < total:
            text += f"  {_duration((total - iteration) / rate)} left"
    return text


def describe_data(part: dict[str, Any]) -> str:
    text = f"data: {part.get('train', 0)} records ({part.get('truncated', 0)} truncated)"
    if part.get("valid"):
        text += f", {part['valid']} for validation"
    text += f"; {part.get('iters', 0)} iterations"
    if part.get("memory_estimate"):
        text += f", about {_size(int(part['memory_estimate']))} of memory"
    return text


def describe_success(part: dict[str, Any]) -> str:
    losses = [
        f"{label} {part[key]:.3f}"
        for label, key in (("train loss", "train_loss"), ("val loss", "val_loss"))
        if isinstance(part.get(key), (int, float))
    ]
    suffix = f" ({', '.join(losses)})" if losses else ""
    return f"success: created {part.get('model', '')}{suffix}"


def request_body(client: Client, args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {"model": args.model, "from": args.base, "stream": True}
    body["data"] = data_reference(client, Path(args.data))
    if args.valid:
        body["valid"] = data_reference(client, Path(args.valid))
    for field in FIELDS:
        value = getattr(args, field)
        if value is not None:
            body[field] = int(value) if field == "quantize" and value.isdigit() else value
    for flag in ("fuse", "resume", "mask_prompt"):
        if getattr(args, flag):
            body[flag] = True
    return body


def is_local(host: str) -> bool:
    if host in ("localhost", "0.0.0.0", "::"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def data_reference(client: Client, path: Path) -> str:
    """How the server finds a local file: its path when the server runs here, else a blob."""
    path = path.expanduser().resolve()
    if not path.exists():
        raise ClientError(f"open {path}: no such file or directory")
    if is_local(client.settings.host):
        return str(path)
    if path.is_dir():
        raise ClientError(f"{path} is a folder: give its train.jsonl and valid.jsonl")
    return upload_blob(client, path)


def upload_blob(client: Client, path: Path) -> str:
    """Ollama's blob upload (HEAD, then POST /api/blobs/sha256:<hex>); the digest."""
    data = path.read_bytes()
    digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
    settings = client.settings
    conn = http.client.HTTPConnection(settings.host, settings.port, timeout=None)
    try:
        conn.request("HEAD", f"/api/blobs/{digest}")
        response = conn.getresponse()
        response.read()
        if response.status == 200:
            return digest
        conn.request("POST", f"/api/blobs/{digest}", body=data)
        response = conn.getresponse()
        response.read()
    except OSError as exc:
        raise ClientError(f"could not upload {path.name} to {settings.base_url}: {exc}") from None
    finally:
        conn.close()
    if response.status not in (200, 201):
        raise ClientError(f"the server did not take {path.name} (HTTP {response.status})")
    return digest


def cmd_finetune(client: Client, args: argparse.Namespace) -> None:
    view = FinetuneView(sys.stderr, live=sys.stderr.isatty())
    parts = client.stream("/api/finetune", request_body(client, args))
    try:
        for part in parts:
            view.handle(part)
    except KeyboardInterrupt:
        parts.close()  # the connection closes: the server cancels the job
        view.close()
        # The job may save another checkpoint before it stops: this one is the least.
        hint = (
            f": --resume continues from its last checkpoint (iteration {view.checkpoint} or later)"
            if view.checkpoint
            else ""
        )
        print(f"cancelled{hint}", file=sys.stderr)
        raise
    finally:
        view.close()
