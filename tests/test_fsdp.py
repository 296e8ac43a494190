"""``treesdk train --fsdp``: FSDP2 ``fully_shard`` of a full fine-tune over 2 CPU ranks (gloo).

One 1-process run without FSDP (the reference, 3 iterations, a checkpoint after each) and two
2-process ``--fsdp`` runs of the digits backend through the real CLI and torchrun: 2 iterations,
then ``--resume`` up to 3. Both take the same global batch (2 trees), so they sample the same trees
(seeds belong to batch slots) and take the same optimiser steps.

Tolerance (:data:`FSDP_ATOL`): the runs differ only in float32 summation order (one process sums
both trees' gradients in one backward; under FSDP each rank backpropagates its tree and the
reduce-scatter adds the halves), so gradients agree to ~1e-7 relative and the weights (|w| < 2, so
one float32 ulp is <= 2.4e-7) to a few ulps (observed 1.9e-7). 2e-6 is ~10x that and 10000x
below the weight change of the run (> 1e-2, checked), so a lost rank's gradient, a gradient
summed twice, a wrong shard on resume or a stale optimiser state cannot pass.
AdamW's ``eps`` is raised to 1e-3 (above this model's gradients, ~1e-4) for these runs: with the
default 1e-8 the first Adam step is ``lr * sign(g)`` elementwise, which turns summation noise on
the few gradient elements that are ~0 into ±lr jumps (observed 1e-3 with 1e-8) and would make any
comparison of two summation orders meaningless; with eps=1e-3 the step is linear in ``g``.
"""

from __future__ import annotations

import subprocess
import sys
import types

import pytest
import torch
from _dist_common import TESTS, env
from analytic import MixtureFlow
from safetensors.torch import load_file

from treesdk.training.run_folder.checkpoint import load_checkpoint
from treesdk.training.parallel.distributed import DistributedContext, FullyShardedTraining

FSDP_ATOL = 2e-6
ARGS = ["train", "--backend", "digits", "--steps", "4", "--k", "2", "--d", "2", "--batch", "2", "--lr", "0.01",
        "--set", "optim.eps=1e-3", "--checkpoint-every", "1", "--seed", "3"]


def _run(args: list[str], nproc: int = 1, timeout: float = 150) -> subprocess.CompletedProcess:
    launch = ["--nproc-per-node", str(nproc)] if nproc > 1 else []
    done = subprocess.run([sys.executable, "-m", "treesdk", *args, *launch], env=env(), capture_output=True,
                          text=True, timeout=timeout, check=False, cwd=str(TESTS.parent))
    assert done.returncode == 0, f"exit {done.returncode}\n--- stdout\n{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-5000:]}"
    return done


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("fsdp")
    _run([*ARGS, "--iters", "3", "--out", str(root / "plain")])
    first = _run([*ARGS, "--iters", "2", "--fsdp", "--out", str(root / "fsdp")], nproc=2)
    assert (root / "fsdp" / "checkpoints" / "iter_000002").is_dir()
    (root / "fsdp2").mkdir()  # keep the 2-iteration result: the resumed run rewrites the folder
    for name in ("trainable.safetensors", "optimizer.safetensors"):
        (root / "fsdp2" / name).write_bytes((root / "fsdp" / "checkpoints" / "iter_000002" / name).read_bytes())
    resumed = _run([*ARGS, "--iters", "3", "--fsdp", "--resume", "--out", str(root / "fsdp")], nproc=2)
    return root, first, resumed


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert sorted(a) == sorted(b)
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def test_fsdp_runs_on_two_ranks_and_equal_one_plain_rank(runs):
    root, first, _ = runs
    assert "ranks=2 (gloo) fsdp" in first.stdout
    plain = load_file(str(root / "plain" / "checkpoints" / "iter_000002" / "trainable.safetensors"))
    sharded = load_file(str(root / "fsdp2" / "trainable.safetensors"))
    from treesdk_backends.digits import DigitsBackend

    start = DigitsBackend().trainable_state_dict()
    assert _max_diff(plain, start) > 1e-2  # the run really moved the weights
    assert _max_diff(sharded, plain) < FSDP_ATOL
    # the optimiser state is gathered to full tensors in the single-process format too
    opt_plain = {k: v for k, v in load_file(str(root / "plain" / "checkpoints" / "iter_000002" / "optimizer.safetensors")).items()
                 if not k.startswith("rng.")}
    opt_fsdp = {k: v for k, v in load_file(str(root / "fsdp2" / "optimizer.safetensors")).items() if not k.startswith("rng.")}
    assert _max_diff(opt_fsdp, opt_plain) < FSDP_ATOL


def test_fsdp_checkpoint_is_full_and_loads_into_a_plain_backend(runs):
    root, _, _ = runs
    from treesdk_backends.digits import DigitsBackend

    trainable, optim_state, state = load_checkpoint(root / "fsdp")
    backend = DigitsBackend()
    expected = backend.trainable_state_dict()
    assert {k: tuple(v.shape) for k, v in trainable.items()} == {k: tuple(v.shape) for k, v in expected.items()}
    backend.load_trainable_state_dict(trainable)  # a plain 1-process backend, no process group
    params = backend.trainable_parameters()
    optimizer = torch.optim.AdamW(params, lr=0.01, eps=1e-3)
    optimizer.load_state_dict(optim_state)
    assert all(optimizer.state[p]["exp_avg"].shape == p.shape for p in params)
    assert state["iteration"] == 3
    # the exported policy (written by rank 0 from the final full checkpoint) is the same network
    exported = load_file(str(root / "fsdp" / "export" / "digits.safetensors"))
    assert _max_diff({k: exported[k] for k in trainable}, trainable) == 0.0


def test_fsdp_resume_reshards_and_continues_like_the_plain_run(runs):
    root, _, resumed = runs
    assert "(resuming)" in resumed.stdout
    plain = load_file(str(root / "plain" / "checkpoints" / "iter_000003" / "trainable.safetensors"))
    after = load_file(str(root / "fsdp" / "checkpoints" / "iter_000003" / "trainable.safetensors"))
    two = load_file(str(root / "fsdp2" / "trainable.safetensors"))
    assert _max_diff(after, two) > 1e-3  # iteration 3 did train
    assert _max_diff(after, plain) < FSDP_ATOL


def test_backends_without_fsdp_support_get_a_clear_error():
    plan = FullyShardedTraining(DistributedContext())
    with pytest.raises(ValueError, match=r"backend 'mixture' does not support FSDP"):
        plan.shard(MixtureFlow())


def test_lora_runs_reject_fsdp_and_full_fine_tunes_name_their_blocks():
    from treesdk_backends.diffusers_common import DiffusersBackend

    blocks = torch.nn.ModuleList([torch.nn.Linear(2, 2) for _ in range(2)])
    transformer = torch.nn.Module()
    transformer.transformer_blocks = blocks
    lora = types.SimpleNamespace(name="flux", lora_rank=8, lora_config=object(), transformer=transformer)
    with pytest.raises(ValueError, match=r"backend 'flux' trains a LoRA adapter \(lora_rank=8\).*--fsdp"):
        DiffusersBackend.fsdp_modules(lora)
    full = types.SimpleNamespace(name="flux", lora_rank=0, lora_config=None, transformer=transformer)
    assert DiffusersBackend.fsdp_modules(full) == [blocks[0], blocks[1], transformer]


def test_digits_names_its_blocks_then_the_root():
    from treesdk_backends.digits import DigitsBackend

    backend = DigitsBackend()
    modules = backend.fsdp_modules()
    assert modules[-1] is backend.net and len(modules) == 6
    assert all(backend._base is not m for m in modules)
