"""``accelerate launch`` starts treesdk workers like torchrun does: two CPU processes (gloo) give the
weights of one process.

accelerate's multi-process launcher (``--multi_gpu``; with ``--cpu`` it starts a single process
unless an MPI hostfile is given) runs ``torch.distributed.run`` and so sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``: what
:func:`treesdk.distributed.init_distributed` reads. Without GPUs it joins with gloo.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
import torch
from _dist_common import DRIVER, TWO_RANK_ATOL, check, env, free_port, in_process_run, result, scratch

pytestmark = pytest.mark.skipif(importlib.util.find_spec("accelerate") is None, reason="accelerate not installed")


def accelerate_cmd(args: list[str], nproc: int = 2) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", f"--num_processes={nproc}",
            "--num_machines=1", "--mixed_precision=no", "--dynamo_backend=no", f"--main_process_port={free_port()}",
            str(DRIVER), *args]


def test_accelerate_launch_with_two_cpu_processes_equals_one_process():
    root = scratch("accelerate")
    done = subprocess.run(accelerate_cmd(["--out", str(root / "run"), "--iters", "4", "--result", str(root / "r.json")]),
                          env=env(CUDA_VISIBLE_DEVICES=""), capture_output=True, text=True, timeout=200, check=False)
    check(done)
    two = result(root / "r.json")
    assert two["world_size"] == 2, two
    _, model = in_process_run()
    one = model.logits.detach()
    logits = torch.tensor(two["logits"])
    assert torch.allclose(logits, one, rtol=0, atol=TWO_RANK_ATOL), f"accelerate 2 ranks {logits.tolist()} vs 1 {one.tolist()}"
    assert one.abs().max() > 0.05  # training moved the weights
