"""What a soak run does and the bounds it is judged by."""

from __future__ import annotations

from dataclasses import dataclass, field

MIB = 1 << 20


@dataclass(frozen=True)
class Bounds:
    """How much a process may grow between the start snapshot (after a warm-up that has
    already run every kind of request, at full concurrency) and the end one (the same
    models loaded, the clients gone). Growth past these is a leak, not noise:

    - supervisor RSS: 48 MiB. It holds no per-request state once a request ends, so
      growth is allocator slack (Python keeps freed arenas) plus what a leak adds; at
      ~20 requests/s a leak of 1 KiB per request passes the bound in about 40 minutes,
      10 KiB in 4.
    - supervisor files and pipes (fds that are not sockets): 4. The same workers are
      loaded at both snapshots, so their pipes are as many; each leaked pipe or file shows.
    - supervisor sockets to workers: none to a worker that is gone (a killed worker's
      connections must be closed); to each live worker at most one per client plus 2 (the
      keep-alive pool holds at most as many as were ever busy at once: the chaos probe
      and the last round add one each). A leak grows with the requests, thousands.
    - long-lived worker RSS: 128 MiB (its prompt cache, OLLMLX_PROMPT_CACHE=64M in the
      soak, may fill, plus MLX's buffer cache), and its non-socket fds: 4.
    Workers that chaos replaced are reported, not bounded: they are younger than the run.
    """

    supervisor_rss: int = 48 * MIB
    supervisor_files: int = 4
    pooled_spare: int = 2  # sockets per live worker beyond one per client
    worker_rss: int = 128 * MIB
    worker_files: int = 4


@dataclass(frozen=True)
class SoakPlan:
    duration: float = 300.0  # seconds of traffic (warm-up and reports come on top)
    clients: int = 16
    seed: int = 11
    disconnect_rate: float = 0.15  # streams a client drops after 1-3 chunks
    bad_rate: float = 0.12  # requests that are client errors (each with its expected status)
    max_tokens: int = 12  # tokens per generation: 1..max_tokens
    request_timeout: float = 90.0  # a request still unanswered by then hangs (lost)
    # When chaos strikes the `chaos` model, as fractions of the duration.
    kill_at: float = 0.2
    stop_at: float = 0.45
    unload_at: float = 0.7
    bounds: Bounds = field(default_factory=Bounds)
    server_env: dict[str, str] = field(
        default_factory=lambda: {
            "OLLAMA_KEEP_ALIVE": "10m",
            "OLLMLX_PROMPT_CACHE": "64M",
            # Small, so over-limit bodies (413) are cheap to send; the limit logic is the same.
            "OLLMLX_MAX_BODY": "4M",
            # Room for the chaos model's replacement beside the three loaded models: at the
            # default (3) an unload makes the replacement evict an idle steady model.
            "OLLAMA_MAX_LOADED_MODELS": "4",
        }
    )


# The models: chaos strikes CHAOS only; bad inputs go to STEADY (never struck), so a 5xx
# answering one of them can never be excused by chaos.
CHAOS, STEADY, EMBEDDER = "tiny", "steady", "minilm"
