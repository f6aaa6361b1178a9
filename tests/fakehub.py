"""A local Hugging Face Hub for tests: the endpoints and headers huggingface_hub uses.

- GET /api/models/{org}/{repo}[/revision/{rev}]: model info with `sha` and `siblings`
  (size, blobId, lfs.sha256 for LFS files), as `HfApi.model_info(files_metadata=True)` reads.
- GET /api/models?author=&search=&sort=downloads&limit=: the models listing
  (`HfApi.list_models`), the served repos and `listed` ones, most downloaded first.
- HEAD/GET /{org}/{repo}/resolve/{rev}/{file}: X-Repo-Commit, ETag, X-Linked-Etag and
  X-Linked-Size for LFS files, Content-Length, Accept-Ranges; GET honours `Range: bytes=N-`.
Faults on demand: cut a connection mid-file (once or for good), serve corrupted bytes,
hold weight downloads until released, advertise a huge size.
It runs in a thread with its own event loop; every request is logged for assertions.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

REPO = "org/tiny"  # where the tests' hub serves the tiny model


def _git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class FakeRepo:
    repo_id: str
    files: dict[str, bytes]
    commit: str = ""
    sizes: dict[str, int] = field(default_factory=dict)  # advertised sizes that lie

    def __post_init__(self) -> None:
        listing = "".join(f"{n}:{_git_blob_id(d)}" for n, d in sorted(self.files.items()))
        self.commit = hashlib.sha1(listing.encode()).hexdigest()

    def is_lfs(self, name: str) -> bool:
        return name.endswith((".safetensors", ".bin"))

    def sibling(self, name: str) -> dict[str, Any]:
        data = self.files[name]
        size = self.sizes.get(name, len(data))
        item: dict[str, Any] = {"rfilename": name, "size": size, "blobId": _git_blob_id(data)}
        if self.is_lfs(name):
            sha = hashlib.sha256(data).hexdigest()
            item["lfs"] = {"size": size, "sha256": sha, "pointerSize": 134}
        return item


@dataclass
class Request:
    method: str
    repo: str
    filename: str
    range: str
    bytes_sent: int = 0


class FakeHub:
    def __init__(self) -> None:
        self.repos: dict[str, FakeRepo] = {}
        self.requests: list[Request] = []
        self.cut_once: set[str] = set()  # cut the next GET of these files halfway
        self.cut_always: set[str] = set()  # cut, then refuse every later GET
        self.corrupt: set[str] = set()  # serve these with one byte flipped
        self.listed: dict[str, int] = {}  # repo id -> downloads: found by searches only
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._hold: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.port = 0

    # -- setup --------------------------------------------------------------------------
    def add_repo(self, repo_id: str, folder: Path, **overrides: Any) -> FakeRepo:
        """Serve every file of `folder`; `overrides` replace keys of config.json."""
        files = {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}
        if overrides:
            config = json.loads(files["config.json"])
            config.update(overrides)
            files["config.json"] = json.dumps(config).encode()
        return self.add_files(repo_id, files)

    def add_files(self, repo_id: str, files: dict[str, bytes]) -> FakeRepo:
        repo = FakeRepo(repo_id, files)
        self.repos[repo_id.lower()] = repo
        return repo

    def start(self) -> FakeHub:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def hold_weights(self) -> None:
        """Make GETs of weight files wait until release()."""
        self._hold = asyncio.Event()

    def release(self) -> None:
        hold = self._hold
        if hold is not None:
            self._loop.call_soon_threadsafe(hold.set)

    def served(self, filename: str, method: str = "GET") -> list[Request]:
        return [r for r in self.requests if r.filename == filename and r.method == method]

    # -- server -------------------------------------------------------------------------
    async def _start(self) -> None:
        app = web.Application()
        app.router.add_get("/api/models", self._list)
        app.router.add_get("/api/models/{org}/{repo}", self._info)
        app.router.add_get("/api/models/{org}/{repo}/revision/{rev}", self._info)
        app.router.add_route("*", "/{org}/{repo}/resolve/{rev}/{filename:.+}", self._resolve)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    def _repo(self, request: web.Request) -> FakeRepo:
        repo_id = f"{request.match_info['org']}/{request.match_info['repo']}"
        repo = self.repos.get(repo_id.lower())
        if repo is None:
            raise web.HTTPNotFound(
                headers={"X-Error-Code": "RepoNotFound"}, text="Repository not found"
            )
        rev = request.match_info.get("rev", "main")
        if rev not in ("main", repo.commit):
            raise web.HTTPNotFound(
                headers={"X-Error-Code": "RevisionNotFound"}, text="Invalid rev id"
            )
        return repo

    async def _list(self, request: web.Request) -> web.Response:
        """The Hub's search: `author` is the namespace, `search` a case-insensitive
        substring of the id; sorted by downloads (the Hub sorts descending)."""
        query = request.query
        self.requests.append(Request("GET", "(list)", query.get("search", ""), ""))
        downloads = {repo.repo_id: 0 for repo in self.repos.values()} | self.listed
        author, search = query.get("author", ""), query.get("search", "").lower()
        found = [
            {"id": repo_id, "modelId": repo_id, "downloads": count, "private": False}
            for repo_id, count in downloads.items()
            if (not author or repo_id.split("/")[0] == author) and search in repo_id.lower()
        ]
        if query.get("sort") == "downloads":
            found.sort(key=lambda item: -item["downloads"])
        limit = int(query.get("limit", "1000"))
        return web.json_response(found[:limit])

    async def _info(self, request: web.Request) -> web.Response:
        self.requests.append(Request("GET", request.match_info["repo"], "(info)", ""))
        repo = self._repo(request)
        body = {
            "id": repo.repo_id,
            "modelId": repo.repo_id,
            "sha": repo.commit,
            "private": False,
            "siblings": [repo.sibling(name) for name in sorted(repo.files)],
        }
        return web.json_response(body)

    async def _resolve(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["filename"]
        log = Request(
            request.method, request.match_info["repo"], name, request.headers.get("Range", "")
        )
        self.requests.append(log)
        repo = self._repo(request)
        if name not in repo.files:
            raise web.HTTPNotFound(
                headers={"X-Error-Code": "EntryNotFound", "X-Repo-Commit": repo.commit}
            )
        data = repo.files[name]
        headers = {"X-Repo-Commit": repo.commit, "Accept-Ranges": "bytes"}
        if repo.is_lfs(name):
            sha = hashlib.sha256(data).hexdigest()
            headers.update(
                {
                    "ETag": f'"{sha}"',
                    "X-Linked-Etag": f'"{sha}"',
                    "X-Linked-Size": str(repo.sizes.get(name, len(data))),
                }
            )
        else:
            headers["ETag"] = f'"{_git_blob_id(data)}"'
        if request.method == "HEAD":
            headers["Content-Length"] = str(len(data))
            return web.Response(status=200, headers=headers)
        if self._hold is not None and repo.is_lfs(name):
            await self._hold.wait()
        if name in self.corrupt:
            data = data[:-1] + bytes([data[-1] ^ 0xFF])
        start = 0
        if log.range.startswith("bytes="):
            start = int(log.range[6:].split("-")[0])
        status = 206 if start else 200
        if start:
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        body = data[start:]
        if name in self.cut_always and start:
            raise web.HTTPServiceUnavailable(text="the hub went away")
        if name in self.cut_once or name in self.cut_always:
            self.cut_once.discard(name)
            return await self._cut(request, status, headers, body, log)
        log.bytes_sent = len(body)
        return web.Response(status=status, headers=headers, body=body)

    async def _cut(
        self,
        request: web.Request,
        status: int,
        headers: dict[str, str],
        body: bytes,
        log: Request,
    ) -> web.StreamResponse:
        """Send half of the body, then drop the connection."""
        response = web.StreamResponse(status=status, headers=headers)
        response.content_length = len(body)
        await response.prepare(request)
        half = len(body) // 2
        await response.write(body[:half])
        log.bytes_sent = half
        assert request.transport is not None
        request.transport.close()
        return response


def hub_env(hub: FakeHub, hf_home: Path, offline: bool = False) -> dict[str, str]:
    """Server environment that pulls from `hub` into a Hugging Face cache at `hf_home`."""
    return {
        "HF_ENDPOINT": hub.url,
        "HF_HOME": str(hf_home),
        "HF_HUB_OFFLINE": "1" if offline else "0",
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }
