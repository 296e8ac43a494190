"""``treesdk serve-reward NAME``: serve a registered reward over HTTP for remote training runs.

The server speaks the JSON wire format of :mod:`treesdk_plugins.reward_wire` (Flow-Factory's
reward-server format) on FastAPI + uvicorn (``pip install 'treesdk[serve]'``); a run points at it
with ``--reward remote --reward-opt remote:url=http://HOST:PORT``. The first line on stdout is
``serving reward NAME at http://HOST:PORT`` (with the real port when ``--port 0`` asked for a free one).
"""

from __future__ import annotations

from typing import Annotated

import typer

from treesdk.errors import UserError

from .common import clean_errors, parse_reward_options


def serve_reward(
    name: Annotated[str, typer.Argument(help="a registered reward (see `treesdk plugins`)")],
    reward_opt: Annotated[list[str] | None, typer.Option("--reward-opt", help="NAME:KEY=VALUE option of the reward (repeatable)")] = None,
    host: Annotated[str, typer.Option("--host", help="interface to listen on (0.0.0.0: every interface)")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port (0: a free one, printed on the first line)")] = 8000,
    device: Annotated[str | None, typer.Option("--device", help="device of the reward model (default: the reward's own)")] = None,
    max_batch: Annotated[int, typer.Option("--max-batch", min=1, help="most images per call of the reward")] = 64,
    max_wait_ms: Annotated[float, typer.Option("--max-wait-ms", min=0.0, help="how long to gather concurrent requests into one batch")] = 5.0,
    max_body_mb: Annotated[float, typer.Option("--max-body-mb", min=0.001, help="largest request body accepted (larger: HTTP 413)")] = 64.0,
    token_env: Annotated[str | None, typer.Option("--token-env", help="environment variable holding a bearer token clients must send")] = None,
) -> None:
    """Serve a registered reward over HTTP (JSON with base64 PNG images, Flow-Factory's format)."""
    with clean_errors():
        import treesdk
        from treesdk_plugins.http_client import token_from_env
        from treesdk_plugins.reward_server import bind, create_app, server

        options = parse_reward_options(reward_opt)
        unknown = sorted(set(options) - {name})
        if unknown:
            raise UserError(f"--reward-opt names {unknown}, but the reward served is {name!r}; write {name}:KEY=VALUE")
        token = token_from_env(token_env, name, "--token-env")
        if not 0 <= port <= 65535:
            raise UserError(f"--port {port} is not a TCP port; give 0..65535")
        reward = treesdk.load_reward(name, **options.get(name, {}))
        reward = reward.to(device) if device else reward
        app = create_app(reward, name, max_batch=max_batch, max_wait=max_wait_ms / 1000.0,
                         max_body_bytes=int(max_body_mb * 1024 * 1024), token=token)
        try:
            sock = bind(host, port)
        except OSError as exc:
            raise UserError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); pick another --port or --host") from None
        bound = sock.getsockname()[1]
        shown = f"[{host}]" if ":" in host else host
        typer.echo(f"serving reward {name} at http://{shown}:{bound}", color=False)
        import sys

        sys.stdout.flush()
        server(app).run(sockets=[sock])


def register(app: typer.Typer) -> None:
    app.command("serve-reward")(serve_reward)
