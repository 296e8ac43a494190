"""Helpers shared by test_distributed.py and test_resume_faults.py: launching the driver
(``tests/_dist_driver.py``) under torchrun or as plain processes, and one cached reference run.

Every subprocess gets ``OMP_NUM_THREADS=1`` and ``HF_HUB_OFFLINE=1``; the process-group timeout
is short (``TREESDK_DIST_TIMEOUT``) so a broken test fails instead of hanging.
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

TESTS = Path(__file__).resolve().parent
DRIVER = TESTS / "_dist_driver.py"

# Tolerance of "2 ranks == 1 rank". The two runs sample the same trees (seeds belong to batch
# slots) and take the same optimiser steps; only the float32 summation order of the gradient
# differs (one process accumulates all trees of a minibatch in one backward; two ranks each sum
# their half, then all_reduce adds the halves and divides by 2). Each step may so differ in the
# last bits of the gradient (relative ~1e-7), and 8 AdamW steps of lr 0.05 carry that into the
# weights at a few float32 ulps (observed: 1.5e-8 on weights ~0.2). 1e-6 is 40x that and 50000x
# below one optimiser step (~0.05), so a real error (a lost minibatch or rank's gradient, a wrong
# slot or seed, an unsynchronised rank) cannot pass. A gradient summed instead of averaged would
# pass here (AdamW is invariant to the gradient's scale); the collective self-test checks the mean.
TWO_RANK_ATOL = 1e-6


def env(**extra: str) -> dict[str, str]:
    out = dict(os.environ)
    out.update(
        PYTHONPATH=os.pathsep.join([str(TESTS), out.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TREESDK_DIST_TIMEOUT="60", PYTHONUNBUFFERED="1",
    )
    out.update(extra)
    return out


def torchrun_cmd(args: list[str], nproc: int = 2, launcher: tuple[str, ...] = ()) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            *launcher, str(DRIVER), *args]


def run_torchrun(args: list[str], nproc: int = 2, launcher: tuple[str, ...] = (), timeout: float = 150) -> subprocess.CompletedProcess:
    done = subprocess.run(torchrun_cmd(args, nproc, launcher), env=env(), capture_output=True, text=True, timeout=timeout, check=False)
    return done


def check(done: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert done.returncode == 0, f"exit {done.returncode}\n--- stdout\n{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-5000:]}"
    return done


def result(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scratch(name: str) -> Path:
    """A temporary folder removed when the test session ends."""
    folder = Path(tempfile.mkdtemp(prefix=f"treesdk-{name}-"))
    atexit.register(shutil.rmtree, folder, True)
    return folder


@functools.cache
def straight_two_rank_run() -> dict:
    """The reference: 2 ranks (torchrun, gloo), 4 iterations straight, a checkpoint every iteration,
    root noise recorded per rank, collective self-test. Run once per test session."""
    root = scratch("straight")
    done = check(run_torchrun([
        "--out", str(root / "run"), "--iters", "4", "--result", str(root / "result.json"),
        "--record-noise", str(root / "noise"), "--selftest", str(root / "selftest"),
    ]))
    return {"root": root, "run": root / "run", "result": result(root / "result.json"), "stdout": done.stdout}


def in_process_run(out_dir: Path | None = None, iters: int = 4, resume: bool = False, record: list | None = None,
                   model=None) -> tuple[object, object]:
    """The driver's training in this process, one rank: ``(run, model)``."""
    from _dist_driver import PROMPTS, build_recipe
    from analytic import BrightnessReward, MixtureFlow

    from treesdk import train

    model = model or MixtureFlow()
    if record is not None:
        original = model.velocity

        def recording(x, sigma, cond):
            if not record:
                record.append(x.detach().clone())
            return original(x, sigma, cond)

        model.velocity = recording
    run = train(build_recipe(), model, {"brightness": BrightnessReward()}, PROMPTS, iters=iters, batch=4, seed=7,
                out_dir=out_dir, checkpoint_every=1 if out_dir else 0, resume=resume)
    return run, model


def hexes(values) -> list[str]:
    return [float(v).hex() for v in torch.as_tensor(values, dtype=torch.float64).flatten()]
