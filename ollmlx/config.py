"""Every OLLAMA_*/OLLMLX_* variable, parsed once into a typed settings object."""

from __future__ import annotations

import importlib.metadata
import math
import os
import platform
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from .errors import ConfigError
from .hostfile import Hostfile, parse_hostfile

DEFAULT_PORT = 11434
# The Ollama release whose API contract ollmlx implements (its source was read for it;
# v0.33.0-rc2's API is the same). /api/version reports it: clients gate features on it.
OLLAMA_API_VERSION = "0.32.15"
# Memory the OS and other apps keep when no budget is set.
DEFAULT_BUDGET_FRACTION = 0.75


GIB = 1 << 30
# OLLAMA_KV_CACHE_TYPE and PARAMETER kv_cache_type, as Ollama names them (fs/ggml/ggml.go
# SupportsKVCacheType), and the bits of mlx-lm's quantized KV cache each maps to (0: the
# model's own float cache).
KV_CACHE_BITS = {"f16": 0, "q8_0": 8, "q4_0": 4}
KV_GROUP_SIZES = (64, 32)  # mlx-lm's default group first; 32 for heads of 32 or 96 values


def kv_group_size(head_dim: int) -> int:
    """The quantization group of a head of `head_dim` values; 0: it cannot be quantized."""
    return next((g for g in KV_GROUP_SIZES if head_dim and head_dim % g == 0), 0)


def kv_bytes_per_element(kv_cache_type: str, head_dim: int, float_bytes: int = 2) -> float:
    """Bytes one cached key or value element costs: packed bits plus a scale and a bias per
    group in the activations' dtype (`float_bytes`); a float cache costs `float_bytes`."""
    bits, group = KV_CACHE_BITS.get(kv_cache_type, 0), kv_group_size(head_dim)
    if not bits or not group:
        return float(float_bytes)
    return bits / 8 + 2 * float_bytes / group


_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


# Go's longest time.Duration (math.MaxInt64 nanoseconds), which Ollama uses for "forever".
MAX_DURATION = (2**63 - 1) / 1e9


def parse_duration(value: str | float | int) -> float:
    """Seconds from a number (seconds) or a Go duration ("5m", "1h30m", "300ms").

    Negative means forever and is returned as-is (the caller maps it to infinity). A
    number beyond Go's longest duration is forever too (`math.inf`), so no clock ever
    overflows; a duration string that long is an error, as Go's time.ParseDuration says.
    """
    if isinstance(value, bool):
        raise ValueError(f"invalid duration {value!r}")
    if isinstance(value, int | float):
        return _clamp(float(value), value)
    text = value.strip()
    try:
        return _clamp(float(text), value)
    except ValueError:
        pass
    sign = -1.0 if text.startswith("-") else 1.0
    body = text.lstrip("+-")
    pos, total = 0, 0.0
    for match in _DURATION_PART.finditer(body):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if pos != len(body) or not body or total > MAX_DURATION:
        raise ValueError(f"invalid duration {value!r}")
    return sign * total


def _clamp(seconds: float, value: object) -> float:
    if math.isnan(seconds):
        raise ValueError(f"invalid duration {value!r}")
    return math.inf if seconds > MAX_DURATION else seconds


def parse_host(value: str) -> tuple[str, int]:
    """(host, port) from OLLAMA_HOST: "host", "host:port", ":port", "http://host:port"."""
    text = value.strip()
    scheme_port = DEFAULT_PORT
    for scheme, port in (("http://", DEFAULT_PORT), ("https://", 443)):
        if text.startswith(scheme):
            text, scheme_port = text[len(scheme) :], port
    text = text.split("/", 1)[0]
    if text.startswith("["):  # [::1]:port
        host, _, rest = text[1:].partition("]")
        port_text = rest.lstrip(":")
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        host, port_text = text, ""
    host = host or "127.0.0.1"
    if not port_text:
        return host, scheme_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(f"OLLAMA_HOST: invalid port in {value!r}")
    return host, int(port_text)


def parse_size(value: str, total: int) -> int:
    """Bytes from "12G", "12GiB", "8000000000" or a percentage of `total` ("75%")."""
    text = value.strip().upper().replace(" ", "")
    if text.endswith("%"):
        return int(total * float(text[:-1]) / 100)
    units = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT]?)(I?B)?", text)
    if not match:
        raise ValueError(f"invalid size {value!r}")
    return int(float(match.group(1)) * units[match.group(2)])


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    models_dir: Path = field(default_factory=lambda: Path.home() / ".ollmlx" / "models")
    keep_alive: float = 300.0  # seconds; negative = forever
    load_timeout: float = 300.0  # a stall timeout, reset while the worker makes progress
    debug: int = 0
    num_parallel: int = 4  # batched in the worker: parallel requests cost little
    max_queue: int = 512
    max_loaded_models: int = 3
    memory_budget: int = 0  # bytes; 0 is filled in from physical memory
    context_length: int = 0  # OLLAMA_CONTEXT_LENGTH; 0: `default_num_ctx`, picked by memory
    default_num_ctx: int = 4096  # num_ctx when neither the request nor the model sets one
    backend: str = "cpu"  # where MLX runs: "metal", "cuda" or "cpu" (decided by platform)
    origins: tuple[str, ...] = ()
    shutdown_grace: float = 10.0
    prompt_cache_bytes: int = 1 << 30  # per worker; 0 turns prompt caching off
    prompt_cache_disk_bytes: int = 0  # per model: long prefixes kept on disk; 0: off
    worker_memory_limit: int = 0  # bytes one worker may use; 0: what the OS has free
    # A worker is asked this often whether it lives; one silent for `health_timeout` (or
    # whose engine died) is killed and replaced: a SIGSTOPped worker goes within ~5 s.
    health_interval: float = 2.0
    health_timeout: float = 3.0
    max_body_bytes: int = 64 << 20
    max_num_predict: int = 1 << 17
    max_num_ctx: int = 1 << 20
    log_file: Path | None = None  # rotating log file; None: readable lines on stderr
    log_max_bytes: int = 10 << 20  # rotate the log file past this size (5 old files kept)
    no_openblas: bool = False  # True: workers keep MLX's bundled BLAS (no OpenBLAS preload)
    no_cloud: bool = False  # OLLAMA_NO_CLOUD: only reported by /api/status (there is no cloud)
    hostfile: Hostfile | None = None  # OLLMLX_HOSTFILE: the hosts of a worker group
    # OLLMLX_DISTRIBUTED=auto: a model too large for this machine's budget but whose share
    # fits each host's is served by a group even without `PARAMETER distributed`.
    distributed_auto: bool = False
    # A group step that takes longer means a rank is hung (or its link is down): the
    # group goes down and the next request relaunches it.
    group_timeout: float = 60.0
    group_port: int = 0  # first port of the ring backend; 0: free ports of this machine
    kv_cache_type: str = "f16"  # OLLAMA_KV_CACHE_TYPE; a model's PARAMETER kv_cache_type wins
    no_prune: bool = False  # OLLAMA_NOPRUNE: keep unused blobs at start (Ollama's PruneLayers)

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


def detect_backend() -> str:
    """Where the workers' MLX runs, decided without importing MLX (the supervisor never
    does): Metal on Apple silicon macOS, CUDA when the `cuda` extra (mlx-cuda-*) is
    installed on Linux, else the CPU (`mlx[cpu]`)."""
    if sys.platform == "darwin" and platform.machine() == "arm64":
        return "metal"
    if sys.platform.startswith("linux"):
        names = {(d.metadata["Name"] or "").lower() for d in importlib.metadata.distributions()}
        if any(name.startswith("mlx-cuda") for name in names):
            return "cuda"
    return "cpu"


def gpu_memory(backend: str, total_memory: int) -> int:
    """Bytes of GPU memory, as Ollama counts it for its default context.

    Metal: Ollama reads the device's recommendedMaxWorkingSetSize (discover/
    gpu_info_darwin.m), which macOS sets to about 2/3 of RAM up to 36 GiB and 3/4 above
    (approximated here). CUDA: the GPUs' total memory (nvidia-smi). CPU: none, so Ollama's
    smallest default applies.
    """
    if backend == "metal":
        return total_memory * 2 // 3 if total_memory <= 36 * GIB else total_memory * 3 // 4
    if backend == "cuda" and shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
                capture_output=True,
                text=True,
                timeout=5,
                check=True,
            ).stdout
            return sum(int(line) for line in out.split() if line.isdigit()) << 20
        except (OSError, subprocess.SubprocessError, ValueError):
            return 0
    return 0


def default_context_length(gpu_bytes: int) -> int:
    """Ollama's default num_ctx by GPU memory (server/routes.go Serve): 47/23 GiB
    thresholds, slightly under 48/24 GiB to allow for what the driver reserves."""
    if gpu_bytes >= 47 * GIB:
        return 262144
    if gpu_bytes >= 23 * GIB:
        return 32768
    return 4096


DEFAULTS = Settings()  # the one place every default lives; load_settings reads them here


def _env(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name)
    return value if value not in (None, "") else None


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    text = _env(env, name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(f"{name}: expected an integer, got {text!r}") from None
    if value < minimum:
        raise ConfigError(f"{name}: must be at least {minimum}, got {value}")
    return value


def _duration(env: Mapping[str, str], name: str, default: float) -> float:
    text = _env(env, name)
    if text is None:
        return default
    try:
        return parse_duration(text)
    except ValueError:
        raise ConfigError(f"{name}: expected a duration like 5m or 300, got {text!r}") from None


def _size(env: Mapping[str, str], name: str, default: int, total: int) -> int:
    text = _env(env, name)
    if text is None:
        return default
    try:
        return parse_size(text, total)
    except ValueError:
        raise ConfigError(f"{name}: expected bytes (64M) or a percentage, got {text!r}") from None


def parse_kv_cache_type(value: str, name: str = "OLLAMA_KV_CACHE_TYPE") -> str:
    """One of KV_CACHE_BITS' names ("" is f16, Ollama's default); anything else is an error
    (Ollama falls back to f16 with a warning: a typo would quietly cost memory)."""
    text = value.strip().lower() or "f16"
    if text not in KV_CACHE_BITS:
        raise ConfigError(f"{name}: expected one of {', '.join(KV_CACHE_BITS)}, got {value!r}")
    return text


def _go_bool(text: str | None) -> bool:
    """envconfig.Bool: unset is false; a value Go's ParseBool rejects counts as true."""
    if text is None:
        return False
    return text.strip() not in ("0", "f", "F", "false", "FALSE", "False")


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Settings from the environment, with a clear ConfigError for a bad value."""
    env = os.environ if env is None else env
    host, port = parse_host(_env(env, "OLLAMA_HOST") or "127.0.0.1:11434")
    models = _env(env, "OLLMLX_MODELS") or _env(env, "OLLAMA_MODELS")
    total_memory = psutil.virtual_memory().total
    budget = _size(
        env, "OLLMLX_MEMORY_BUDGET", int(total_memory * DEFAULT_BUDGET_FRACTION), total_memory
    )
    max_loaded = _int(env, "OLLAMA_MAX_LOADED_MODELS", 0)
    log_file = _env(env, "OLLMLX_LOG_FILE")
    backend = detect_backend()
    origins = tuple(o.strip() for o in (_env(env, "OLLAMA_ORIGINS") or "").split(",") if o.strip())
    d = DEFAULTS
    hostfile_text = _env(env, "OLLMLX_HOSTFILE")
    hostfile = parse_hostfile(Path(hostfile_text).expanduser()) if hostfile_text else None
    distributed = (_env(env, "OLLMLX_DISTRIBUTED") or "off").strip().lower()
    if distributed not in ("off", "0", "false", "auto"):
        raise ConfigError(f"OLLMLX_DISTRIBUTED: expected auto or off, got {distributed!r}")
    if distributed == "auto" and hostfile is None:
        raise ConfigError("OLLMLX_DISTRIBUTED=auto needs OLLMLX_HOSTFILE (the group's hosts)")
    group_timeout = _duration(env, "OLLMLX_GROUP_TIMEOUT", d.group_timeout)
    if not group_timeout >= 2:  # idle ranks hear from rank 0 every second
        raise ConfigError(f"OLLMLX_GROUP_TIMEOUT: must be at least 2s, got {group_timeout:g}s")
    return Settings(
        host=host,
        port=port,
        models_dir=Path(models).expanduser() if models else d.models_dir,
        keep_alive=_duration(env, "OLLAMA_KEEP_ALIVE", d.keep_alive),
        load_timeout=_duration(env, "OLLAMA_LOAD_TIMEOUT", d.load_timeout),
        debug=_int(env, "OLLAMA_DEBUG", d.debug),
        num_parallel=_int(env, "OLLAMA_NUM_PARALLEL", d.num_parallel, minimum=1),
        max_queue=_int(env, "OLLAMA_MAX_QUEUE", d.max_queue, minimum=1),
        max_loaded_models=max_loaded or d.max_loaded_models,
        memory_budget=budget,
        context_length=_int(env, "OLLAMA_CONTEXT_LENGTH", 0),
        default_num_ctx=default_context_length(gpu_memory(backend, total_memory)),
        backend=backend,
        origins=origins,
        shutdown_grace=_duration(env, "OLLMLX_SHUTDOWN_GRACE", d.shutdown_grace),
        prompt_cache_bytes=_size(env, "OLLMLX_PROMPT_CACHE", d.prompt_cache_bytes, total_memory),
        prompt_cache_disk_bytes=_size(
            env, "OLLMLX_PROMPT_CACHE_DISK", d.prompt_cache_disk_bytes, total_memory
        ),
        worker_memory_limit=_size(
            env, "OLLMLX_WORKER_MEMORY_LIMIT", d.worker_memory_limit, total_memory
        ),
        health_interval=_duration(env, "OLLMLX_HEALTH_INTERVAL", d.health_interval),
        health_timeout=_duration(env, "OLLMLX_HEALTH_TIMEOUT", d.health_timeout),
        max_body_bytes=_size(env, "OLLMLX_MAX_BODY", d.max_body_bytes, total_memory),
        log_file=Path(log_file).expanduser() if log_file else None,
        log_max_bytes=max(1, _size(env, "OLLMLX_LOG_MAX_SIZE", d.log_max_bytes, total_memory)),
        no_openblas=(_env(env, "OLLMLX_NO_OPENBLAS") or "0").lower() not in ("0", "false"),
        no_cloud=_go_bool(_env(env, "OLLAMA_NO_CLOUD")),
        hostfile=hostfile,
        distributed_auto=distributed == "auto",
        group_timeout=group_timeout,
        group_port=_int(env, "OLLMLX_GROUP_PORT", d.group_port),
        kv_cache_type=parse_kv_cache_type(_env(env, "OLLAMA_KV_CACHE_TYPE") or ""),
        no_prune=_go_bool(_env(env, "OLLAMA_NOPRUNE")),
    )
