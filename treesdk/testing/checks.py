"""The conformance checks every backend passes, one function per property of the contract.

Each check takes a constructed backend (a :class:`~treesdk.interfaces.VelocityModel`), raises
:class:`ConformanceError` (an ``AssertionError``) saying what is wrong, and returns the numbers it
measured (max abs differences, counts) so a report can state them. Checks leave the backend as they
found it (trainable weights are restored). Use small models: every check runs a handful of
velocity calls.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from ..interfaces import VelocityModel, select_cond
from ..sampler import nfe_per_tree, sample_forest, sample_ode

__all__ = [
    "ConformanceError",
    "check_shapes",
    "check_gradients",
    "check_state_roundtrip",
    "check_batch_invariance",
    "check_adapter_on_off",
    "check_nfe",
    "check_ode_parity",
    "perturbed",
]


class ConformanceError(AssertionError):
    """A backend does not satisfy the contract."""


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConformanceError(message)


def _noise(backend: VelocityModel, batch: int, seed: int) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn((batch, *backend.latent_shape), generator=gen).to(backend.device)


def _velocity(backend: VelocityModel, x: Tensor, sigma: float | Sequence[float], cond: dict[str, Tensor]) -> Tensor:
    sig = torch.as_tensor(sigma, dtype=torch.float32, device=x.device)
    if sig.ndim == 0:
        sig = sig.expand(x.shape[0])
    with torch.no_grad():
        return backend.velocity(x, sig, cond)


@contextlib.contextmanager
def perturbed(backend: VelocityModel, scale: float = 0.05, seed: int = 0) -> Iterator[None]:
    """Seeded random values added to every trainable weight for the duration (a fresh LoRA has
    ``lora_B = 0`` and changes nothing); the saved state is loaded back afterwards."""
    saved = {k: v.clone() for k, v in backend.trainable_state_dict().items()}
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in backend.trainable_parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=torch.float32).to(p.device, p.dtype))
    try:
        yield
    finally:
        backend.load_trainable_state_dict(saved)


def check_shapes(backend: VelocityModel, prompts: Sequence[str], steps: int = 3) -> dict[str, Any]:
    """Shapes, dtypes and ranges of every contract method: ``latent_shape``, ``device``,
    ``encode`` (batch-first tensors, row selection), ``velocity`` (``x``'s shape and dtype, float32
    in and out), ``decode`` (``[B, 3, H, W]`` float in ``[0, 1]``), ``sigmas`` (float32 ``[T + 1]``,
    decreasing from at most 1 to 0), trainable parameters and state dict."""
    shape = tuple(backend.latent_shape)
    _require(len(shape) >= 1 and all(isinstance(n, int) and n > 0 for n in shape),
             f"latent_shape must be a tuple of positive ints, got {shape!r}")
    _require(isinstance(backend.device, torch.device), f"device must be a torch.device, got {backend.device!r}")
    prompts = list(prompts)
    b = len(prompts)
    cond = backend.encode(prompts)
    _require(isinstance(cond, dict) and bool(cond), f"encode() must return a non-empty dict of tensors, got {type(cond)}")
    for key, value in cond.items():
        _require(isinstance(value, Tensor) and value.ndim >= 1 and value.shape[0] == b,
                 f"encode() tensor {key!r} must have leading dimension {b}, got "
                 f"{tuple(value.shape) if isinstance(value, Tensor) else type(value)}")
    one = select_cond(cond, torch.tensor([b - 1]))
    _require(all(v.shape[0] == 1 for v in one.values()), "select_cond of one row must give leading dimension 1")

    x = _noise(backend, b, seed=0)
    v = _velocity(backend, x, [0.9 - 0.5 * i / max(1, b - 1) for i in range(b)], cond)
    _require(tuple(v.shape) == tuple(x.shape), f"velocity shape {tuple(v.shape)} != latents {tuple(x.shape)}")
    _require(v.dtype == x.dtype == torch.float32, f"velocity of float32 latents must be float32, got {v.dtype}")
    _require(bool(torch.isfinite(v).all()), "velocity has non-finite values")

    images = backend.decode(x)
    _require(images.ndim == 4 and images.shape[0] == b and images.shape[1] == 3,
             f"decode() must return [B, 3, H, W], got {tuple(images.shape)}")
    _require(images.is_floating_point(), f"decode() must return float images, got {images.dtype}")
    _require(float(images.min()) >= 0.0 and float(images.max()) <= 1.0, "decode() images must lie in [0, 1]")

    sigmas = backend.sigmas(steps)
    _require(sigmas.dtype == torch.float32 and tuple(sigmas.shape) == (steps + 1,),
             f"sigmas({steps}) must be float32 [{steps + 1}], got {sigmas.dtype} {tuple(sigmas.shape)}")
    _require(float(sigmas[0]) <= 1.0 + 1e-6 and float(sigmas[-1]) == 0.0 and bool((sigmas[1:] < sigmas[:-1]).all()),
             f"sigmas must decrease from at most 1 to exactly 0, got {sigmas.tolist()}")

    params = backend.trainable_parameters()
    _require(len(params) > 0 and all(isinstance(p, torch.nn.Parameter) and p.requires_grad for p in params),
             "trainable_parameters() must be a non-empty list of Parameters that require grad")
    state = backend.trainable_state_dict()
    _require(bool(state) and all(isinstance(k, str) and isinstance(t, Tensor) for k, t in state.items()),
             "trainable_state_dict() must map names to tensors")
    return {"latent_shape": list(shape), "image_shape": list(images.shape[1:]), "cond_keys": sorted(cond),
            "trainable_parameters": int(sum(p.numel() for p in params))}


def check_gradients(backend: VelocityModel, prompts: Sequence[str]) -> dict[str, Any]:
    """With gradients enabled, the velocity is differentiable w.r.t. the trainable parameters and
    only them (frozen parts get no gradient)."""
    params = backend.trainable_parameters()
    trainable = {id(p) for p in params}
    cond = backend.encode(list(prompts[:1]))
    x = _noise(backend, 1, seed=1)
    backend.train_mode(True)
    try:
        with perturbed(backend):
            v = backend.velocity(x, torch.full((1,), 0.6, device=x.device), cond)
            v.float().square().mean().backward()
            grads = [p.grad for p in params if p.grad is not None]
            nonzero = sum(int(g.abs().sum() > 0) for g in grads)
    finally:
        backend.train_mode(False)
        for p in params:
            p.grad = None
    _require(nonzero > 0, "velocity() with gradients enabled gave no gradient to any trainable parameter")
    leaked = []
    for module in (m for m in vars(backend).values() if isinstance(m, torch.nn.Module)):
        leaked += [n for n, p in module.named_parameters() if p.grad is not None and id(p) not in trainable]
    _require(not leaked, f"frozen parameters received gradients: {leaked[:5]}")
    return {"parameters_with_gradient": nonzero, "trainable_tensors": len(params)}


def check_state_roundtrip(backend: VelocityModel) -> dict[str, Any]:
    """``load_trainable_state_dict(trainable_state_dict())`` restores the weights exactly, and a
    state with a missing key is refused (``KeyError``/``ValueError``) without writing anything."""
    saved = {k: v.clone() for k, v in backend.trainable_state_dict().items()}
    with perturbed(backend, seed=3):
        changed = backend.trainable_state_dict()
        _require(any(not torch.equal(changed[k].cpu(), saved[k].cpu()) for k in saved),
                 "perturbing trainable_parameters() did not change trainable_state_dict()")
        broken = dict(saved)
        broken.pop(next(iter(broken)))
        try:
            backend.load_trainable_state_dict(broken)
        except (KeyError, ValueError):
            pass
        else:
            raise ConformanceError("load_trainable_state_dict accepted a state with a missing key")
        after = backend.trainable_state_dict()
        _require(all(torch.equal(after[k].cpu(), changed[k].cpu()) for k in changed),
                 "a refused load_trainable_state_dict still changed the weights")
    restored = backend.trainable_state_dict()
    _require(set(restored) == set(saved) and all(torch.equal(restored[k].cpu(), saved[k].cpu()) for k in saved),
             "load_trainable_state_dict(trainable_state_dict()) did not restore the weights exactly")
    return {"tensors": len(saved)}


def check_batch_invariance(backend: VelocityModel, prompts: Sequence[str], atol: float) -> dict[str, Any]:
    """A node's velocity does not depend on its batch mates: rows computed in one batch (different
    prompts and sigmas) equal the rows computed alone, within ``atol`` (max abs difference)."""
    prompts = list(prompts)
    b = len(prompts)
    cond = backend.encode(prompts)
    x = _noise(backend, b, seed=2)
    sigmas = [0.95 - 0.6 * i / max(1, b - 1) for i in range(b)]
    with perturbed(backend, seed=4):
        together = _velocity(backend, x, sigmas, cond)
        alone = torch.cat([_velocity(backend, x[i:i + 1], sigmas[i:i + 1], select_cond(cond, torch.tensor([i])))
                           for i in range(b)])
    diff = float((together - alone).abs().max())
    scale = float(alone.abs().max())
    _require(diff <= atol, f"velocity depends on batch mates: max abs diff {diff:.3g} > {atol:g} (|v| max {scale:.3g})")
    return {"max_abs_diff": diff, "velocity_max": scale, "atol": atol}


def check_adapter_on_off(backend: VelocityModel, prompts: Sequence[str]) -> dict[str, Any]:
    """``reference()`` gives the base policy exactly: with the trainable weights moved, the
    velocity inside ``reference()`` equals bit for bit the one before they moved, the velocity
    outside it differs, and leaving ``reference()`` restores the trained velocity exactly.
    Raises ``NotImplementedError`` for a backend without a reference policy (full fine-tune)."""
    cond = backend.encode(list(prompts[:2]))
    x = _noise(backend, len(prompts[:2]), seed=5)
    with backend.reference():
        base = _velocity(backend, x, 0.7, cond)
    with perturbed(backend, seed=6):
        trained = _velocity(backend, x, 0.7, cond)
        with backend.reference():
            off = _velocity(backend, x, 0.7, cond)
        on = _velocity(backend, x, 0.7, cond)
    moved = float((trained - base).abs().max())
    _require(moved > 0, "moving the trainable weights did not change the velocity")
    _require(torch.equal(off, base), f"velocity inside reference() is not the base policy: max abs diff "
                                     f"{float((off - base).abs().max()):.3g}")
    _require(torch.equal(on, trained), "leaving reference() did not restore the trained velocity exactly")
    return {"trained_vs_base": moved}


def check_nfe(backend: VelocityModel, prompts: Sequence[str], steps: int = 4, k: int = 2, depth: int = 2,
              window_start: int = 1) -> dict[str, Any]:
    """The sampler's count of velocity evaluations (``Forest.nfe``), the rows that really went
    through ``velocity()`` and the tree formula agree, for a k-ary tree of depth ``depth``."""
    prompts = list(prompts[:2])
    rows = 0
    original = backend.velocity

    def counting(x: Tensor, sigma: Tensor, cond: dict[str, Tensor]) -> Tensor:
        nonlocal rows
        rows += int(x.shape[0])
        return original(x, sigma, cond)

    backend.velocity = counting  # type: ignore[method-assign]
    try:
        forest = sample_forest(backend, prompts, list(range(len(prompts))), steps=steps, k=k, depth=depth,
                               window_start=window_start)
    finally:
        del backend.velocity
    expected = len(prompts) * nfe_per_tree(steps, window_start, depth, k)
    _require(forest.nfe == rows == expected,
             f"NFE mismatch: sampler reports {forest.nfe}, velocity() saw {rows} rows, tree formula gives {expected}")
    leaves = forest.leaves
    _require(tuple(leaves.shape) == (len(prompts) * k**depth, *backend.latent_shape),
             f"leaves have shape {tuple(leaves.shape)}")
    return {"nfe": rows, "formula": expected}


def check_ode_parity(backend: VelocityModel, reference: Callable[[list[str], int, int], Tensor],
                     prompts: Sequence[str], steps: int, atol: float, seed: int = 7) -> dict[str, Any]:
    """ODE sampling through treesdk (:func:`treesdk.sampler.sample_ode`: root noise
    ``randn((1, *latent_shape), generator=seed)``) equals ``reference(prompts, steps, seed)`` (the
    model's own sampler, e.g. the diffusers pipeline with ``output_type="latent"``), prompt by
    prompt, within ``atol`` (max abs difference)."""
    diffs, scale = [], 0.0
    for prompt in prompts:
        ours = sample_ode(backend, [prompt], [seed], steps).float().cpu()
        theirs = reference([prompt], steps, seed).float().cpu()
        _require(tuple(ours.shape) == tuple(theirs.shape),
                 f"reference sampler shape {tuple(theirs.shape)} != treesdk {tuple(ours.shape)}")
        diffs.append(float((ours - theirs).abs().max()))
        scale = max(scale, float(theirs.abs().max()))
    _require(scale > 0, "the reference sample is all zeros")
    _require(max(diffs) <= atol, f"ODE sampling differs from the reference sampler: max abs diff {max(diffs):.3g} > {atol:g}")
    return {"max_abs_diff": max(diffs), "sample_max": scale, "atol": atol, "steps": steps}
