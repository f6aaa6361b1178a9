"""The handle on one worker process: spawn, health wait, streaming, stop.

Nothing else in the supervisor spawns processes or talks to workers (HTTP for health and
embeddings, the link for completions).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import msgspec

from ..errors import StatusError
from ..protocol import (
    EVENT_PREFIX,
    REFUSED_PREFIX,
    SECRET_ENV,
    SECRET_HEADER,
    CompletionRequest,
    DoneEvent,
    EmbedRequest,
    EmbedResponse,
    ErrorEvent,
    Health,
    WorkerEvent,
    embed_response_decoder,
    encoder,
    event_decoder,
    health_decoder,
)
from .link import LinkBroken, QuietWatch, WorkerLink
from .openblas import with_openblas

if TYPE_CHECKING:
    from .group import GroupPlan

log = logging.getLogger("ollmlx.runner")

STOP_TIMEOUT = 5.0
CONNECT_TIMEOUT = 5.0
# The longest Unix socket path every platform takes (sun_path: 104 bytes on macOS).
SOCKET_PATH_MAX = 100
RUNNER_STOPPED = (
    "model runner has unexpectedly stopped, this may be due to resource limitations "
    "or an internal error, check ollama server logs for details"
)


class WorkerGone(StatusError):
    """The worker was gone before it received the request: it is safe to send it again
    (to a replacement), since nothing of it was computed or answered."""

    def __init__(self) -> None:
        super().__init__(RUNNER_STOPPED, 500)


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker needs to load one model."""

    name: str
    model_dir: Path
    adapter_dir: Path | None = None
    prompt_cache_dir: Path | None = None  # the disk tier of its prompt cache, if any
    group: GroupPlan | None = None  # served by a group of ranks (group.GroupProcess)
    draft_dir: Path | None = None  # a draft model: speculative decoding
    draft_num_predict: int = 4  # tokens the draft proposes per round
    kv_cache_type: str = "f16"  # f16, q8_0 or q4_0


@dataclass(frozen=True)
class WorkerConfig:
    """How every worker is run: the settings that reach the worker process."""

    load_timeout: float = 300.0  # a stall timeout, reset while the worker makes progress
    debug: int = 0
    memory_limit: int = 0  # bytes one worker may use; 0: what the OS has free
    prompt_cache_bytes: int = 0
    use_openblas: bool = True
    max_body: int = 64 << 20  # the worker accepts what the supervisor accepted
    health_interval: float = 2.0  # a silent stream asks the worker this often if it lives
    health_timeout: float = 3.0  # how long that question may take
    prompt_cache_disk: int = 0  # bytes of the prompt cache's disk tier; 0: off
    group_timeout: float = 60.0  # a group step longer than this: a rank stalled
    group_port: int = 0  # a group's first ring port; 0: free ports of this machine


class WorkerProcess:
    """One model's worker subprocess (Ollama's LlamaServer, in Python)."""

    def __init__(
        self,
        spec: WorkerSpec,
        session: aiohttp.ClientSession,
        config: WorkerConfig | None = None,
    ) -> None:
        self.spec = spec
        self._session = session
        self.config = config or WorkerConfig()
        self._load_timeout = self.config.load_timeout
        self._secret = secrets.token_urlsafe(32)
        self._proc: asyncio.subprocess.Process | None = None
        self._stderr_tail: deque[str] = deque(maxlen=20)
        # Set when the worker announces on stdout that loading ended (ok or error): the
        # health poll then runs at once instead of at its next backoff step.
        self._announced = asyncio.Event()
        self._readers: list[asyncio.Task[None]] = []
        self.port = 0
        self.worker_pid = 0  # the process that serves HTTP (under mlx.launch: not `pid`)
        self.memory_bytes = 0  # at load: weights (and what loading left allocated)
        self.held_bytes = 0  # at the last health check: what MLX holds, cache included
        self.rank_memory: list[int] = []  # a group: bytes of weights of each rank
        self.context_length = 0
        self.stopping = False  # stop() was called: an exit from now on is expected
        self._link_dir: str | None = None  # holds the link's Unix socket, if it has one
        self._link_address: str | int = ""  # the link's socket path, or its port
        self._link: WorkerLink | None = None
        self._link_lock = asyncio.Lock()
        self._watch: QuietWatch | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def has_exited(self) -> bool:
        return self._proc is None or self._proc.returncode is not None

    @property
    def stderr_tail(self) -> str:
        return "\n".join(self._stderr_tail)

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode if self._proc else None

    async def wait_exit(self) -> int:
        """Until the process exits (reaped), for whatever reason; its exit code."""
        assert self._proc is not None
        code = await self._proc.wait()
        self.release()  # a worker killed by the OS could not remove its socket
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._readers[0]), 1.0)
        return code

    def kill(self) -> None:
        """SIGKILL: the only signal a stopped (SIGSTOP) or hung process cannot ignore."""
        if self._proc is not None and self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()

    def worker_command(self) -> list[str]:
        """The worker program and its arguments (a group runs it under mlx.launch)."""
        config = self.config
        args = [sys.executable, "-m", "ollmlx_worker", "--model-dir", str(self.spec.model_dir)]
        if self.spec.adapter_dir:
            args += ["--adapter-dir", str(self.spec.adapter_dir)]
        if self.spec.draft_dir:
            args += ["--draft-dir", str(self.spec.draft_dir)]
            args += ["--draft-num-predict", str(self.spec.draft_num_predict)]
        if self.spec.kv_cache_type != "f16":
            args += ["--kv-cache-type", self.spec.kv_cache_type]
        args += ["--log-level", "DEBUG" if config.debug else "INFO"]
        if config.memory_limit:
            args += ["--memory-limit", str(config.memory_limit)]
        link_socket = self._link_socket()
        if link_socket:
            args += ["--link-socket", link_socket]
        args += ["--prompt-cache-bytes", str(config.prompt_cache_bytes)]
        args += ["--max-body", str(config.max_body)]
        if config.prompt_cache_disk and self.spec.prompt_cache_dir is not None:
            args += ["--prompt-cache-dir", str(self.spec.prompt_cache_dir)]
            args += ["--prompt-cache-disk", str(config.prompt_cache_disk)]
        return args

    def _link_socket(self) -> str:
        """Where the worker's completion link listens: a Unix socket in a folder only we
        can enter; "" (a loopback port) where the platform has none or the path is too long."""
        if not hasattr(socket, "AF_UNIX") or sys.platform == "win32":  # asyncio's Proactor
            return ""
        if self._link_dir is None:
            self._link_dir = tempfile.mkdtemp(prefix="ollmlx-")
        path = os.path.join(self._link_dir, "link.sock")
        return path if len(path.encode()) <= SOCKET_PATH_MAX else ""

    def command(self) -> list[str]:
        """What is spawned: the worker itself."""
        return self.worker_command()

    def environment(self) -> dict[str, str]:
        env = {**os.environ, SECRET_ENV: self._secret, "PYTHONUNBUFFERED": "1"}
        return with_openblas(env) if self.config.use_openblas else env

    async def start(self) -> None:
        env = self.environment()
        args = self.command()
        # Own session: a terminal's Ctrl-C reaches the supervisor, which stops workers in
        # order. The stdin pipe tells the worker when the supervisor is gone.
        self._proc = await asyncio.create_subprocess_exec(
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            start_new_session=True,
        )
        log.info("spawned worker pid=%d for %s", self._proc.pid, self.spec.name)
        self._readers.append(asyncio.create_task(self._read_stderr()))

    async def wait_until_ready(self) -> None:
        """Poll /health with exponential backoff until the model is loaded.

        The stall deadline (OLLAMA_LOAD_TIMEOUT) resets whenever the worker reports
        progress; an exited worker fails at once with the tail of its stderr.
        """
        started = time.monotonic()
        stall_deadline = started + self._load_timeout
        self.port = await self._read_port(stall_deadline)
        delay, attempt, progress = 0.05, 0, -1.0
        while True:
            attempt += 1
            try:
                health = await self.ping(timeout=1.0)
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                log.debug("worker %s not ready (attempt %d): %s", self.spec.name, attempt, exc)
            else:
                log.debug(
                    "worker %s status=%s (attempt %d)", self.spec.name, health.status, attempt
                )
                if health.status == "ok":
                    self.memory_bytes = health.memory_bytes
                    self.rank_memory = list(health.rank_memory)
                    self.context_length = health.context_length
                    log.info(
                        "worker pid=%s for %s ready in %.2fs (%d MiB)",
                        self.pid,
                        self.spec.name,
                        time.monotonic() - started,
                        self.memory_bytes >> 20,
                    )
                    return
                if health.status == "error":
                    await self.stop()
                    raise StatusError(f"error loading model: {health.error}")
                if health.progress > progress:
                    progress, stall_deadline = (
                        health.progress,
                        time.monotonic() + self._load_timeout,
                    )
            if time.monotonic() > stall_deadline:
                await self.stop()
                raise StatusError(
                    f"timed out waiting for model {self.spec.name} to load after "
                    f"{self._load_timeout:g}s{self._tail_suffix()}"
                )
            await self._sleep_unless_exited(delay)
            delay = min(delay * 2, 1.0)

    async def ping(self, timeout: float = 2.0) -> Health:
        if self.has_exited:
            raise StatusError(self._exit_message())
        async with self._session.get(
            self._url("/health"),
            headers={SECRET_HEADER: self._secret},
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as response:
            health = health_decoder.decode(await response.read())
        if health.status == "ok":
            self.held_bytes = health.active_bytes + health.cache_bytes
        return health

    async def health_problem(self, timeout: float) -> str | None:
        """None when the worker answers its health check with "ok"; else what is wrong
        (the monitor's and a quiet stream's question)."""
        try:
            health = await self.ping(timeout=timeout)
        except (aiohttp.ClientError, asyncio.TimeoutError):
            return f"no answer to its health check within {timeout:g}s"
        except StatusError as exc:
            return exc.message
        except (OSError, msgspec.DecodeError) as exc:  # a reset, or garbage for an answer
            return f"a broken health answer: {exc}"
        if health.status != "ok":
            return f"its engine reports {health.status}: {health.error or 'no detail'}"
        return None

    async def stream(self, request: CompletionRequest) -> AsyncIterator[WorkerEvent | bytes]:
        """The worker's events for one request, as they are decoded; with `stream_as`, its
        token lines come as bytes, ready for the client.

        While streams are open and the worker is quiet (a long prefill, or a hung worker),
        it is asked every `health_interval` whether it still lives; a worker that does not
        answer, or answers that its engine is gone, ends its streams with an error instead
        of a wait forever (`QuietWatch`).
        """
        link = await self._open_link()
        try:
            stream = link.send(encoder.encode(request))
        except LinkBroken as exc:  # it closed before it could see the request
            await self._wait_exit(0.5)
            raise WorkerGone() from exc
        assert self._watch is not None
        self._watch.arm()
        ended = False
        try:
            while True:
                ready = bytearray()  # finished client lines (`stream_as`)
                for line in await stream.take():
                    if line.startswith(EVENT_PREFIX):
                        if ready:
                            yield bytes(ready)
                            ready.clear()
                        event = event_decoder.decode(line)
                        ended = isinstance(event, DoneEvent | ErrorEvent)
                        yield event
                    elif line.startswith(REFUSED_PREFIX):
                        ended = True
                        await self._refused(line)
                    else:
                        ready += line
                        ready += b"\n"
                if ready:  # the lines that came together go out in one write
                    yield bytes(ready)
        except LinkBroken as exc:
            await self._wait_exit(0.5)
            log.warning("worker %s stream broke: %s", self.spec.name, exc)
            raise StatusError(RUNNER_STOPPED) from exc
        finally:
            link.forget(stream, cancel=not ended)

    async def _open_link(self) -> WorkerLink:
        """The completion link, connected at the first request (and again if it broke);
        WorkerGone if the worker cannot be reached: nothing was sent, so it is safe to
        send the request to a replacement."""
        async with self._link_lock:
            if self._link is None or self._link.closed:
                try:
                    if self.has_exited:
                        raise ConnectionRefusedError("the worker has exited")
                    self._link = await WorkerLink.open(
                        self._link_address, self._secret, CONNECT_TIMEOUT
                    )
                except (OSError, asyncio.TimeoutError) as exc:
                    await self._wait_exit(0.5)  # reaped: the scheduler sees it is gone
                    log.warning("worker %s is gone (%s)", self.spec.name, exc)
                    raise WorkerGone() from exc
                if self._watch is not None:
                    self._watch.close()
                self._watch = QuietWatch(self._link, self.config.health_interval, self._stalled)
            return self._link

    async def _stalled(self) -> StatusError | None:
        """The quiet link's question: None while the worker answers its health check."""
        problem = await self.health_problem(self.config.health_timeout)
        if problem is None:
            return None
        log.warning("worker %s stalled mid-stream: %s", self.spec.name, problem)
        return StatusError(f"{RUNNER_STOPPED} ({problem})")

    async def _refused(self, line: bytes) -> None:
        """The worker refused a request before it started; 503: it takes no more work
        (its engine died, or it is stopping). A broken one is killed here so that a
        replacement serves this request."""
        status, _, message = line[len(REFUSED_PREFIX) :].partition(b" ")
        text = str(json.loads(message))
        if int(status) != 503:
            raise StatusError(text, int(status))
        if not self.stopping:
            log.warning("worker %s refused work: %s", self.spec.name, text[:200])
            self.kill()
        await self._wait_exit(2.0)
        raise WorkerGone()

    async def embed(self, request: EmbedRequest) -> EmbedResponse:
        """Vectors for `request.inputs`; a worker error keeps its status (400: too long)."""
        try:
            async with self._session.post(
                self._url("/embed"),
                data=encoder.encode(request),
                headers={SECRET_HEADER: self._secret, "Content-Type": "application/json"},
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=5),
            ) as response:
                body = await response.read()
                if response.status != 200:
                    raise StatusError(_error_text(body.decode(errors="replace")), response.status)
                return embed_response_decoder.decode(body)
        except aiohttp.ClientError as exc:
            await self._wait_exit(0.5)
            log.warning("worker %s embed request broke: %s", self.spec.name, exc)
            raise StatusError(RUNNER_STOPPED) from exc

    def release(self) -> None:
        """What the process leaves behind goes with it: the link and its socket's folder."""
        if self._watch is not None:
            self._watch.close()
        if self._link is not None:
            self._link.close()
        if self._link_dir is not None:
            shutil.rmtree(self._link_dir, ignore_errors=True)
            self._link_dir = None

    async def stop(self) -> None:
        """SIGTERM, wait, SIGKILL, and always reap so no zombie is left."""
        self.stopping = True
        proc = self._proc
        if proc is None:
            return
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), STOP_TIMEOUT)
            except asyncio.TimeoutError:
                log.warning("worker pid=%d ignored SIGTERM; killing", proc.pid)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
            log.info(
                "stopped worker pid=%d for %s (exit code %s)",
                proc.pid,
                self.spec.name,
                proc.returncode,
            )
        else:
            await proc.wait()
        self.release()
        for task in self._readers:
            task.cancel()
        if proc.stdin:
            proc.stdin.close()

    def _url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def _read_port(self, deadline: float) -> int:
        assert self._proc is not None and self._proc.stdout is not None
        try:
            hello = await asyncio.wait_for(self._hello(), max(deadline - time.monotonic(), 0.1))
        except asyncio.TimeoutError:
            await self.stop()
            raise StatusError(
                f"timed out waiting for the worker of {self.spec.name} to start"
            ) from None
        if hello is None:
            await self._wait_exit(2.0)
            raise StatusError(self._exit_message())
        self._readers.append(asyncio.create_task(self._drain_stdout()))
        self.worker_pid = int(hello.get("pid") or self._proc.pid)
        self._link_address = hello["link"]
        return int(hello["port"])

    async def _hello(self) -> dict[str, Any] | None:
        """The worker's first line, `{"port": N, "pid": P}`; None if it exits first. Other
        lines before it are output too (a group's remote ranks write theirs to stdout:
        `ssh -tt` merges their streams)."""
        assert self._proc is not None and self._proc.stdout is not None
        while line := await self._proc.stdout.readline():
            text = line.decode(errors="replace").strip()
            try:
                hello = json.loads(text)
            except ValueError:
                hello = None
            if isinstance(hello, dict) and "port" in hello:
                return hello
            self._output(text)
        return None

    async def _read_stderr(self) -> None:
        assert self._proc is not None and self._proc.stderr is not None
        while line := await self._proc.stderr.readline():
            self._output(line.decode(errors="replace").rstrip())

    def _output(self, text: str) -> None:
        self._stderr_tail.append(text)
        self.output_line(text)
        log.debug("[%s] %s", self.spec.name, text)

    def output_line(self, text: str) -> None:
        """One line the worker wrote (a group reads its ranks' pids here)."""

    async def _drain_stdout(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        while line := await self._proc.stdout.readline():
            text = line.decode(errors="replace").strip()
            if not text.startswith("{"):  # not an announcement: a remote rank's output
                self._output(text)
            self._announced.set()

    async def _sleep_unless_exited(self, seconds: float) -> None:
        """Wait `seconds`, less if the worker announces the end of loading or exits."""
        assert self._proc is not None
        waiters = {
            asyncio.ensure_future(self._announced.wait()),
            asyncio.ensure_future(self._proc.wait()),
        }
        _, pending = await asyncio.wait(
            waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED
        )
        for waiter in pending:
            waiter.cancel()
        if self._proc.returncode is not None:
            await self._wait_exit(1.0)  # collects the last stderr lines
            raise StatusError(self._exit_message())

    async def _wait_exit(self, seconds: float) -> bool:
        assert self._proc is not None
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._proc.wait()), seconds)
        if self._proc.returncode is not None:
            # Let the stderr reader catch the last lines before they are quoted.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._readers[0]), 1.0)
            return True
        return False

    def _exit_message(self) -> str:
        code = self._proc.returncode if self._proc else None
        return f"model runner for {self.spec.name} exited with code {code}{self._tail_suffix()}"

    def _tail_suffix(self) -> str:
        tail = self.stderr_tail
        return f": {tail}" if tail else ""


def _error_text(body: str) -> str:
    try:
        return str(json.loads(body)["error"])
    except (ValueError, KeyError, TypeError):
        return body.strip() or "worker error"
