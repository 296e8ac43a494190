"""A run folder of treesdk's first release (0.1, commit 8b5b010), for the upgrade tests.

``tests/data/first_release_run`` holds the small files of a real 0.1 run, verbatim: a 2-iteration
digits run (``treesdk train --iters 2 --batch 2 --checkpoint-every 1``) gave ``config.json``,
``metrics.jsonl`` and ``checkpoints/iter_000002/state.json``. Its two safetensors files (1.6 MB of
weights, 3.3 MB of optimiser state) are too big for test data: :func:`first_release_run` writes them
here as 0.1's ``save_checkpoint`` did (``safetensors.torch.save`` with ``{"iteration": "2"}``
metadata; ``state.<param index>.<name>`` for AdamW's state plus ``rng.cpu``; no ``files`` record in
``state.json``), with values that are a pure function of the packaged digits weights (no RNG):
``base + 0.01 sin(i)`` for the weights, ``exp_avg = 1e-4 cos(i)``, ``exp_avg_sq = 1e-8 (1 + sin(i)^2)``,
``step = 2``. The expected numbers in the tests were computed by 0.1 itself on exactly these files.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save

DATA = Path(__file__).parent / "data" / "first_release_run"
BASE_WEIGHTS = Path(__file__).resolve().parents[1] / "backends" / "weights" / "digits_flow.safetensors"
ITERATION = 2


def _wave(t: torch.Tensor, fn) -> torch.Tensor:
    return fn(torch.arange(t.numel(), dtype=torch.float64)).reshape(t.shape).to(t.dtype)


def first_release_trainable() -> dict[str, torch.Tensor]:
    """The checkpoint's weights: the packaged digits weights plus ``0.01 sin(i)`` (i: flat index)."""
    base = load_file(str(BASE_WEIGHTS))
    return {k: v + 0.01 * _wave(v, torch.sin) for k, v in base.items()}


def _optimizer_tensors() -> dict[str, torch.Tensor]:
    from treesdk_backends.digits import DigitsBackend

    params = DigitsBackend(model=str(BASE_WEIGHTS)).trainable_parameters()  # AdamW's param order
    tensors: dict[str, torch.Tensor] = {}
    for i, p in enumerate(params):
        ref = p.detach()
        tensors[f"state.{i}.exp_avg"] = 1e-4 * _wave(ref, torch.cos)
        tensors[f"state.{i}.exp_avg_sq"] = 1e-8 * (1 + _wave(ref, torch.sin) ** 2)
        tensors[f"state.{i}.step"] = torch.tensor(float(ITERATION))
    generator_state = torch.get_rng_state()
    torch.manual_seed(0)
    tensors["rng.cpu"] = torch.get_rng_state()
    torch.set_rng_state(generator_state)
    return tensors


def first_release_run(dest: Path) -> Path:
    """A complete 0.1 run folder at ``dest``: the data files, the base weights path of this checkout
    in ``config.json`` (0.1 recorded its install's path), and the checkpoint's safetensors files."""
    shutil.copytree(DATA, dest)
    config_file = dest / "config.json"
    config = json.loads(config_file.read_text())
    config["backend"]["describe"]["model"] = str(BASE_WEIGHTS)
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")  # as 0.1 wrote it
    ckpt = dest / "checkpoints" / f"iter_{ITERATION:06d}"
    meta = {"iteration": str(ITERATION)}
    (ckpt / "trainable.safetensors").write_bytes(save(first_release_trainable(), metadata=meta))
    (ckpt / "optimizer.safetensors").write_bytes(save(_optimizer_tensors(), metadata=meta))
    return dest
