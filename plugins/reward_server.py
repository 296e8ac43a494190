"""Serve any registered reward over HTTP in the wire format of :mod:`treesdk_plugins.reward_wire`
(FastAPI on uvicorn; ``pip install 'treesdk[serve]'``). The command is ``treesdk serve-reward``.

Endpoints: ``GET /health`` -> ``{"status": "ok", "reward": NAME}``; ``POST /compute`` -> ``{"rewards":
[...]}``. Concurrent requests are gathered by a small async batcher (:class:`Batcher`): requests that
arrive within ``max_wait`` seconds of each other are scored together, up to ``max_batch`` images
per call of the reward, in one worker thread (so a GPU model runs one batch at a time); each
request gets back its own scores in its own order, exactly what the reward gives in process on
the decoded (8-bit) images. A body over ``max_body_bytes`` is refused with 413 before it is read
in full; a bad request gets 400 with the reason, a reward that fails 500; with a token, requests
without ``Authorization: Bearer <token>`` get 401.
"""

# no ``from __future__ import annotations``: FastAPI reads the endpoints' annotations at definition
import asyncio
import hmac
import json
import logging
import socket
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from treesdk.interfaces import RewardModel

from .common import require
from .reward_wire import WireFormatError, read_request

_log = logging.getLogger("treesdk")

#: default request size limit: 64 MiB of JSON (several hundred 1024^2 PNGs)
MAX_BODY_BYTES = 64 * 1024 * 1024


@dataclass
class _Job:
    images: list[Tensor]
    prompts: list[str]
    future: asyncio.Future[list[float]] = field(repr=False)


class Batcher:
    """Gathers concurrent scoring requests into batches for one reward.

    :meth:`score` queues a request and waits for its scores. A loop takes the first queued request,
    then every request arriving within ``max_wait`` seconds while the batch holds fewer than
    ``max_batch`` images, groups them by image size, and calls ``reward.score`` once per size in a
    single worker thread. When a batch of several requests fails, they are scored one by one, so
    only a request the reward rejects gets its error.
    """

    def __init__(self, reward: RewardModel, max_batch: int = 64, max_wait: float = 0.005) -> None:
        self.reward, self.max_batch, self.max_wait = reward, max(1, int(max_batch)), max(0.0, float(max_wait))
        self.batches = 0  # reward calls made (for tests and logs)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start batching on the running event loop (again after :meth:`stop`: a restarted server)."""
        self._queue: asyncio.Queue[_Job] = asyncio.Queue()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="treesdk-serve")
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def score(self, images: list[Tensor], prompts: list[str]) -> list[float]:
        future: asyncio.Future[list[float]] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Job(images, prompts, future))
        return await future

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = [await self._queue.get()]
            size = len(jobs[0].images)
            deadline = loop.time() + self.max_wait
            while size < self.max_batch:
                remaining = deadline - loop.time()
                try:
                    job = await asyncio.wait_for(self._queue.get(), remaining) if remaining > 0 else self._queue.get_nowait()
                except (asyncio.TimeoutError, asyncio.QueueEmpty):
                    break
                jobs.append(job)
                size += len(job.images)
            await self._run(loop, jobs)

    async def _run(self, loop: asyncio.AbstractEventLoop, jobs: list[_Job]) -> None:
        # one reward call per image size: a batch must stack
        by_shape: dict[tuple[int, ...], list[tuple[int, int]]] = {}
        for j, job in enumerate(jobs):
            for i, image in enumerate(job.images):
                by_shape.setdefault(tuple(image.shape), []).append((j, i))
        results: list[list[float]] = [[0.0] * len(job.images) for job in jobs]
        try:
            for members in by_shape.values():
                images = torch.stack([jobs[j].images[i] for j, i in members])
                prompts = [jobs[j].prompts[i] for j, i in members]
                values = await loop.run_in_executor(self._pool, _score, self.reward, images, prompts)
                self.batches += 1
                for (j, i), value in zip(members, values):
                    results[j][i] = value
        except Exception as exc:  # noqa: BLE001 - every request of the batch gets the reward's error
            if len(jobs) > 1:  # score the requests one by one: only the one the reward rejects fails
                for job in jobs:
                    await self._run(loop, [job])
                return
            if not jobs[0].future.done():
                jobs[0].future.set_exception(exc)
            return
        for job, values in zip(jobs, results):
            if not job.future.done():
                job.future.set_result(values)


def _score(reward: RewardModel, images: Tensor, prompts: Sequence[str]) -> list[float]:
    with torch.no_grad():
        values = torch.as_tensor(reward.score(images, list(prompts))).detach().float().cpu().reshape(-1)
    if values.shape[0] != images.shape[0]:
        raise RuntimeError(f"reward {reward.name!r} returned {values.shape[0]} scores for {images.shape[0]} images")
    return [float(v) for v in values.tolist()]


def create_app(reward: RewardModel, name: str | None = None, *, max_batch: int = 64, max_wait: float = 0.005,
               max_body_bytes: int = MAX_BODY_BYTES, token: str | None = None) -> Any:
    """The FastAPI application serving ``reward`` (registered as ``name``, default ``reward.name``)."""
    fastapi = require("fastapi", "serve", "serve-reward")
    from fastapi.responses import JSONResponse

    name = name or reward.name
    batcher = Batcher(reward, max_batch=max_batch, max_wait=max_wait)

    @asynccontextmanager
    async def lifespan(_app: Any):  # noqa: ANN202
        batcher.start()
        yield
        await batcher.stop()

    app = fastapi.FastAPI(title=f"treesdk reward server: {name}", lifespan=lifespan)
    app.state.batcher = batcher

    def refuse(status: int, detail: str) -> Any:
        return JSONResponse({"detail": detail}, status_code=status)

    def authorised(request: Any) -> bool:
        if token is None:
            return True
        given = request.headers.get("authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {token}".encode())

    @app.get("/health")
    async def health(request: fastapi.Request) -> Any:
        if not authorised(request):
            return refuse(401, "missing or wrong bearer token")
        return {"status": "ok", "reward": name}

    @app.post("/compute")
    async def compute(request: fastapi.Request) -> Any:
        if not authorised(request):
            return refuse(401, "missing or wrong bearer token")
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_body_bytes:
            return refuse(413, f"request body of {declared} bytes is over the limit of {max_body_bytes} bytes; send smaller batches")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_body_bytes:
                return refuse(413, f"request body is over the limit of {max_body_bytes} bytes; send smaller batches")
            chunks.append(chunk)
        try:
            body = json.loads(b"".join(chunks))
            images, prompts = read_request(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return refuse(400, f"the body is not JSON ({exc})")
        except WireFormatError as exc:
            return refuse(400, str(exc))
        if not images:
            return {"rewards": []}
        try:
            values = await batcher.score(images, prompts)
        except ValueError as exc:  # the reward rejected its input (a prompt it cannot read, ...)
            return refuse(400, f"reward {name!r} rejected the batch: {exc}")
        except Exception as exc:  # noqa: BLE001 - reported to the client, logged here
            _log.exception("reward %r failed", name)
            return refuse(500, f"reward {name!r} failed: {type(exc).__name__}: {exc}")
        return {"rewards": values}

    return app


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: a free one; read it from ``getsockname()``)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def server(app: Any, log_level: str = "warning") -> Any:
    """A ``uvicorn.Server`` for ``app`` (run it with ``server.run(sockets=[bind(host, port)])``)."""
    uvicorn = require("uvicorn", "serve", "serve-reward")
    return uvicorn.Server(uvicorn.Config(app, log_level=log_level, lifespan="on", timeout_graceful_shutdown=2))
