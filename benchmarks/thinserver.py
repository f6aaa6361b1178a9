"""The thinnest server there can be: the ceiling of any server's ratio on this machine.

In-process mlx-lm generation (the very loop the in-process system runs) writes each
token as Ollama's NDJSON line straight onto the socket of the official `ollama` client,
which runs in a child process as a real client does. No supervisor, no worker hop, no
HTTP framework: only the client's own CPU and one `sendall` a token stand between it and
the in-process figures. Whatever this loses against in-process, every server loses too.
"""

from __future__ import annotations

import json
import select
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .systems import InProcess, Messages, Stream

HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n"
)
# The child: the official client, timing each answer as Ollmlx.stream does.
CLIENT = r"""
import json, sys, time
from concurrent.futures import ThreadPoolExecutor
import ollama
client = ollama.Client(host=sys.argv[1])
def one(job):
    messages, tokens = job
    options = {"temperature": 0, "num_predict": tokens}
    started, ttft, count = time.perf_counter(), 0.0, 0
    for chunk in client.chat("thin", messages, stream=True, options=options):
        if not chunk.done:
            ttft = ttft or time.perf_counter() - started
        else:
            count = int(chunk.eval_count or 0)
    return [ttft, time.perf_counter() - started, count]
pool = ThreadPoolExecutor(16)
for line in sys.stdin:
    jobs = json.loads(line)
    print(json.dumps(list(pool.map(one, jobs))), flush=True)
"""


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _line(text: str) -> bytes:
    message = {"role": "assistant", "content": text}
    body = {"model": "thin", "created_at": "", "message": message, "done": False}
    return _chunk(json.dumps(body).encode() + b"\n")


def _last(count: int) -> bytes:
    body = {"model": "thin", "created_at": "", "done": True, "done_reason": "length"}
    body.update(message={"role": "assistant", "content": ""}, eval_count=count)
    return _chunk(json.dumps(body).encode() + b"\n") + b"0\r\n\r\n"


class _Connection:
    """One keep-alive connection of the client: requests in, chunked answers out."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buffer = b""

    def request(self) -> dict[str, Any] | None:
        """The next request's body; None when the client closed the connection."""
        while b"\r\n\r\n" not in self._buffer:
            data = self.sock.recv(65536)
            if not data:
                return None
            self._buffer += data
        head, self._buffer = self._buffer.split(b"\r\n\r\n", 1)
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        while len(self._buffer) < length:
            self._buffer += self.sock.recv(65536)
        body, self._buffer = self._buffer[:length], self._buffer[length:]
        return json.loads(body)


class ThinServer(InProcess):
    """In-process generation streamed to the official client over one socket each."""

    name = "thinnest server"

    def start(self, model_dir: Path) -> None:
        super().start(model_dir)
        self._listener = socket.create_server(("127.0.0.1", 0))
        port = self._listener.getsockname()[1]
        self._client = subprocess.Popen(
            [sys.executable, "-c", CLIENT, f"http://127.0.0.1:{port}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self._connections: list[_Connection] = []

    def _ask(self, prompts: list[Messages], max_tokens: int) -> list[Any]:
        """Send the jobs to the client; serve them; the client's own timings."""
        assert self._client.stdin is not None and self._client.stdout is not None
        self._client.stdin.write(json.dumps([[m, max_tokens] for m in prompts]) + "\n")
        self._client.stdin.flush()
        self._serve(len(prompts))
        return list(json.loads(self._client.stdout.readline()))

    def _take(self, count: int) -> list[tuple[_Connection, dict[str, Any]]]:
        """`count` requests, on the client's pooled connections or on new ones."""
        taken: list[tuple[_Connection, dict[str, Any]]] = []
        waiting = list(self._connections)
        while len(taken) < count:
            ready = [c for c in waiting if _readable(c.sock)] if waiting else []
            if ready:
                conn = ready[0]
                waiting.remove(conn)
            else:
                self._listener.settimeout(0.005)
                try:
                    sock, _ = self._listener.accept()
                except TimeoutError:
                    continue
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                conn = _Connection(sock)
                self._connections.append(conn)
            body = conn.request()
            if body is None:  # the client's pool let it go
                self._connections.remove(conn)
                conn.sock.close()
                continue
            taken.append((conn, body))
        return taken

    def _serve(self, count: int) -> None:
        taken = self._take(count)
        if count == 1:
            conn, body = taken[0]
            conn.sock.sendall(HEAD)
            n = 0
            for response in self._generate(body):
                conn.sock.sendall(_line(response.text))
                n += 1
            conn.sock.sendall(_last(n))
            return
        self._serve_batch(taken)

    def _generate(self, body: dict[str, Any]) -> Any:
        from mlx_lm import stream_generate

        tokens = self.encode(body["messages"])
        limit = int(body["options"]["num_predict"])
        return stream_generate(self.model, self.tokenizer, tokens, max_tokens=limit)

    def _serve_batch(self, taken: list[tuple[_Connection, dict[str, Any]]]) -> None:
        from mlx_lm.generate import BatchGenerator

        generator = BatchGenerator(
            self.model, stop_tokens=[[t] for t in self.tokenizer.eos_token_ids]
        )
        prompts = [self.encode(body["messages"]) for _, body in taken]
        limits = [int(body["options"]["num_predict"]) for _, body in taken]
        uids = generator.insert(prompts, max_tokens=limits)
        conns = [conn for conn, _ in taken]
        # Each answer's connection, detokenizer and token count.
        by_uid = {
            uid: (conn, self.tokenizer.detokenizer, [0])
            for uid, conn in zip(uids, conns, strict=True)
        }
        for conn, _ in taken:
            conn.sock.sendall(HEAD)
        while by_uid:
            _, responses = generator.next()
            for response in responses:
                conn, detokenizer, count = by_uid[response.uid]
                detokenizer.add_token(response.token)
                count[0] += 1
                conn.sock.sendall(_line(detokenizer.last_segment))
                if response.finish_reason is not None:
                    conn.sock.sendall(_last(count[0]))
                    del by_uid[response.uid]
        generator.close()

    def stream(
        self, messages: Messages, max_tokens: int, prompt: Any = None, cache: Any = None
    ) -> Stream:
        ttft, total, count = self._ask([messages], max_tokens)[0]
        return Stream(ttft, total, count, "")

    def concurrent(self, prompts: list[Messages], max_tokens: int) -> tuple[float, int]:
        started = time.perf_counter()
        answers = self._ask(prompts, max_tokens)
        return time.perf_counter() - started, sum(int(a[2]) for a in answers)

    def stop(self) -> None:
        if self._client.stdin is not None:
            self._client.stdin.close()
        self._client.wait(10)
        for conn in self._connections:
            conn.sock.close()
        self._listener.close()


def _readable(sock: socket.socket) -> bool:
    return bool(select.select([sock], [], [], 0)[0])
