"""Reward servers on 127.0.0.1 for the remote-reward tests, started and stopped by the tests.

* :class:`ThreadServer`: runs an ASGI app with uvicorn in a thread on an ephemeral port (stop and
  start again on the same port, to play a server that dies and comes back);
* :func:`flow_factory_app`: a server written to Flow-Factory's ``reward_server/example_server.py``
  format (``POST /compute`` reading ``prompts``/``images``/``extra``, ``{"rewards": [...]}``);
* :func:`faulty_app`: a server whose answers a test switches (NaN, wrong count, HTML, 401, hang, 500);
* :func:`openai_app`: an OpenAI-compatible ``/v1/chat/completions`` with log-probs, as vLLM answers.
"""

from __future__ import annotations

import asyncio
import base64
import io
import math
import threading
import time
from typing import Any

import numpy as np
import uvicorn
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from PIL import Image

from treesdk_plugins.reward_server import bind


class ThreadServer:
    """``with ThreadServer(app) as server: server.url`` -- uvicorn in a thread on 127.0.0.1."""

    def __init__(self, app: Any, port: int = 0) -> None:
        self.app, self.port = app, port
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ThreadServer:
        sock = bind("127.0.0.1", self.port)
        self.port = sock.getsockname()[1]
        self._server = uvicorn.Server(uvicorn.Config(self.app, log_level="error", lifespan="on", timeout_graceful_shutdown=1))
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self._server.started:
            assert time.monotonic() < deadline, "server did not start within 20 s"
            time.sleep(0.01)
        self._sock = sock  # uvicorn serves on it; closed after it stops
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
            assert self._thread is not None
            self._thread.join(timeout=10)
            self._server = None
            self._sock.close()

    def __enter__(self) -> ThreadServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def image_from_b64(text: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(text))).convert("RGB")


def brightness(image: Image.Image) -> float:
    """The Flow-Factory server's score in these tests: mean pixel value in [0, 1]."""
    return float(np.asarray(image, dtype=np.float64).mean() / 255.0)


def flow_factory_app() -> FastAPI:
    """A reward server in the format of Flow-Factory's ``reward_server/example_server.py``."""
    app = FastAPI()

    def compute_reward(prompts: list[str], images: list[Image.Image] | None = None, **kwargs: Any) -> list[float]:
        return [brightness(img) + (0.5 if "bright" in p else 0.0) for p, img in zip(prompts, images or [])]

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/compute")
    async def compute(request: dict[str, Any]) -> dict[str, Any]:
        try:
            images = [image_from_b64(b) for b in request["images"]] if request.get("images") else None
            return {"rewards": compute_reward(prompts=request["prompts"], images=images, **(request.get("extra") or {}))}
        except Exception as e:  # noqa: BLE001
            raise HTTPException(status_code=500, detail=str(e)) from e

    return app


class Faults:
    """What :func:`faulty_app` answers next: ``mode`` one of ok, nan, count, html, text, 401, 500,
    hang; ``fail_first`` 500s before answering normally; ``calls`` counts /compute requests; with
    ``after`` (a path), the mode applies only once that file exists (ok before)."""

    def __init__(self, mode: str = "ok", after: Any = None) -> None:
        self.mode, self.after = mode, after
        self.fail_first = 0
        self.calls = 0
        self.hang_seconds = 5.0


def faulty_app(faults: Faults) -> FastAPI:
    app = FastAPI()

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/compute")
    async def compute(request: Request) -> Response:
        faults.calls += 1
        body = await request.json()
        n = len(body["prompts"])
        if faults.fail_first > 0:
            faults.fail_first -= 1
            return PlainTextResponse("overloaded", status_code=503)
        mode = faults.mode if faults.after is None or faults.after.exists() else "ok"
        if mode == "nan":
            return Response(b'{"rewards": [' + b", ".join([b"NaN"] * n) + b"]}", media_type="application/json")
        if mode == "count":
            return JSONResponse({"rewards": [0.5] * (n + 1)})
        if mode == "html":
            return HTMLResponse("<html><body><h1>502 Bad Gateway</h1></body></html>", status_code=200)
        if mode == "text":
            return PlainTextResponse("all good")
        if mode == "401":
            return JSONResponse({"detail": "unauthorised"}, status_code=401)
        if mode == "500":
            return PlainTextResponse("boom", status_code=500)
        if mode == "hang":
            await asyncio.sleep(faults.hang_seconds)
        return JSONResponse({"rewards": [0.25] * n})

    return app


def openai_app(model: str = "judge-1") -> FastAPI:
    """An OpenAI-compatible chat server: answers "Yes" with log P(yes) = log(brightness of the image)
    (log P(no) = log(1 - brightness)) in ``top_logprobs``, or "Score: <10 * brightness>" without
    ``logprobs``. Records every request body, in arrival order, in ``app.state.bodies`` (requests may
    arrive concurrently, so their order need not be the images' order)."""
    app = FastAPI()
    app.state.bodies = []

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": model, "object": "model"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> dict[str, Any]:
        body = await request.json()
        app.state.bodies.append(body)
        if body.get("model") != model:
            raise HTTPException(status_code=404, detail=f"model {body.get('model')!r} not found")
        parts = body["messages"][0]["content"]
        url = next(p["image_url"]["url"] for p in parts if p["type"] == "image_url")
        assert url.startswith("data:image/png;base64,")
        b = min(max(brightness(image_from_b64(url.split(",", 1)[1])), 1e-6), 1 - 1e-6)
        if body.get("logprobs"):
            top = [{"token": "Yes", "logprob": math.log(b * 0.9)}, {"token": " yes", "logprob": math.log(b * 0.1)},
                   {"token": "No", "logprob": math.log(1 - b)}, {"token": "Maybe", "logprob": -20.0}]
            choice = {"index": 0, "message": {"role": "assistant", "content": "Yes"},
                      "logprobs": {"content": [{"token": "Yes", "logprob": top[0]["logprob"], "top_logprobs": top}]},
                      "finish_reason": "length"}
        else:
            choice = {"index": 0, "message": {"role": "assistant", "content": f"Score: {10 * b:.4f} out of 10"}, "finish_reason": "stop"}
        return {"id": "cmpl-1", "object": "chat.completion", "model": model, "choices": [choice]}

    return app
