"""What a remote reward costs the digits default run, and what overlapping it with sampling wins back.

The README's first run (digits backend, its default recipe, batch 8) with the ``digit-classifier``
reward scored four ways, each for ``--iters`` iterations on the same seed:

* ``in-process``: the reward in the training process (the baseline);
* ``remote``: served by ``treesdk serve-reward``'s app in a child process over loopback, with
  ``--latency`` seconds (default 0 and 0.2) of artificial delay added to every HTTP request (an
  ASGI wrapper that sleeps before answering, as a far or busy server would), scored synchronously
  (``overlap=false``), overlapped (each group of trees scored while the next is sampled, one request
  at a time) or overlapped with ``in_flight=4`` (every group's request may wait at once).

Reported per configuration: the mean iteration time (``seconds``), and the share of it spent
waiting for scores once sampling was done (``seconds_reward / seconds``), over the iterations after
the first (warm-up). The runs' rewards are checked equal between sync and overlapped (in_flight=1).

    OMP_NUM_THREADS=1 python benchmarks/remote_reward.py --iters 4 --out benchmarks/results/remote/remote-reward.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

import treesdk


def serve(latency: float) -> None:
    """Child mode: serve digit-classifier on a free loopback port with ``latency`` s per request."""
    torch.set_num_threads(1)
    from treesdk_plugins.reward_server import bind, create_app, server

    inner = create_app(treesdk.load_reward("digit-classifier"), "digit-classifier")

    async def delayed(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and latency > 0:
            await asyncio.sleep(latency)
        await inner(scope, receive, send)

    sock = bind("127.0.0.1", 0)
    print(f"serving reward digit-classifier at http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
    server(delayed).run(sockets=[sock])


def start_server(latency: float) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, __file__, "--serve", str(latency)], stdout=subprocess.PIPE, text=True, env=env)
    line = proc.stdout.readline()
    if " at " not in line:
        proc.kill()
        raise SystemExit(f"the reward server did not start: {line!r}")
    return proc, line.split(" at ")[1].strip()


def run(reward: Any, iters: int, batch: int, seed: int) -> list[dict[str, Any]]:
    backend = treesdk.load_backend("digits")
    recipe = treesdk.load_algorithm(backend.default_recipe)
    result = treesdk.train(recipe, backend, {"reward": reward}, backend.default_prompts(), iters=iters, batch=batch, seed=seed)
    return result.history


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    timed = rows[1:] or rows  # the first iteration warms up
    seconds = [r["seconds"] for r in timed]
    waiting = [r["seconds_reward"] / r["seconds"] for r in timed]
    return {"iterations_timed": len(timed), "seconds_per_iteration": statistics.mean(seconds),
            "seconds_per_iteration_each": seconds, "waiting_share": statistics.mean(waiting),
            "seconds_reward_mean": statistics.mean(r["seconds_reward"] for r in timed),
            "seconds_sampling_mean": statistics.mean(r["seconds_sampling"] for r in timed),
            "reward_mean_each": [r["reward_mean"] for r in rows]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--serve", type=float, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--iters", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--latency", type=float, nargs="+", default=[0.0, 0.2])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.serve is not None:
        serve(args.serve)
        return
    torch.set_num_threads(1)

    results: dict[str, Any] = {"in-process": summary(run(treesdk.load_reward("digit-classifier"), args.iters, args.batch, args.seed))}
    print(json.dumps({"in-process": results["in-process"]["seconds_per_iteration"]}), flush=True)
    for latency in args.latency:
        proc, url = start_server(latency)
        try:
            for overlap, in_flight in ((False, 1), (True, 1), (True, 4)):
                reward = treesdk.load_reward("remote", url=url, overlap=overlap, in_flight=in_flight)
                mode = ("overlapped" if in_flight == 1 else f"overlapped in_flight={in_flight}") if overlap else "sync"
                key = f"remote latency={latency:g}s {mode}"
                results[key] = summary(run(reward, args.iters, args.batch, args.seed))
                print(json.dumps({key: results[key]["seconds_per_iteration"], "waiting": results[key]["waiting_share"]}), flush=True)
        finally:
            proc.terminate()
            proc.wait(timeout=10)
        sync, over = (results[f"remote latency={latency:g}s {m}"] for m in ("sync", "overlapped"))
        assert sync["reward_mean_each"] == over["reward_mean_each"], "overlap changed the rewards"

    report = {
        "what": "digits default run (default recipe, batch %d), digit-classifier reward: in process vs served over "
                "loopback (treesdk serve-reward app in a child process) with artificial per-request latency, "
                "scored synchronously vs overlapped with sampling" % args.batch,
        "iters": args.iters, "batch": args.batch, "seed": args.seed,
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "cpu_threads": torch.get_num_threads(),
                    "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "platform": platform.platform(),
                    "note": "2 shared CPU cores, other jobs running: timings are indicative"},
        "results": results,
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
