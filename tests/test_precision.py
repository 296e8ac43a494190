"""--precision (autocast with the weights dtype kept) and CPU defaults (treesdk.training.loop.precision)."""

from __future__ import annotations

import pytest
import torch

import treesdk
from treesdk.training.loop.precision import Autocast, cpu_defaults, cpu_threads, parse_precision, with_precision


@pytest.fixture(scope="module")
def digits():
    return treesdk.load_backend("digits")


def test_precision_names():
    assert parse_precision("fp32") is None and parse_precision(None) is None and parse_precision("no") is None
    assert parse_precision("bf16") is torch.bfloat16 and parse_precision("float16") is torch.float16
    with pytest.raises(ValueError, match="fp32, bf16, fp16"):
        parse_precision("fp8")


def test_autocast_runs_velocity_in_bf16_and_keeps_fp32_master_weights(digits):
    mixed = with_precision(digits, "bf16")
    assert isinstance(mixed, Autocast) and with_precision(digits, "fp32") is digits
    assert mixed.name == digits.name and mixed.latent_shape == digits.latent_shape
    x = torch.randn(2, *digits.latent_shape, generator=torch.Generator().manual_seed(0))
    cond = digits.encode(["the digit three", "the digit five"])
    sigma = torch.tensor([0.7, 0.4])
    seen = []
    handle = digits.net.register_forward_hook(lambda m, i, o: seen.append(torch.get_autocast_dtype("cpu")
                                                                         if torch.is_autocast_enabled("cpu") else None))
    try:
        full = digits.velocity(x, sigma, cond)
        low = mixed.velocity(x, sigma, cond)
    finally:
        handle.remove()
    assert seen == [None, torch.bfloat16]
    assert not torch.equal(full.float(), low.float())  # computed in bf16 ...
    assert torch.allclose(full.float(), low.float(), atol=0.1)  # ... but the same function
    assert all(p.dtype == torch.float32 for p in mixed.trainable_parameters())  # master weights stay fp32
    loss = mixed.velocity(x, sigma, cond).float().square().mean()
    loss.backward()
    assert all(p.grad is None or p.grad.dtype == torch.float32 for p in digits.trainable_parameters())
    digits.net.zero_grad(set_to_none=True)


def test_cpu_defaults_pick_threads_and_fp32_with_a_note(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    try:
        options: dict = {}
        note = cpu_defaults("cpu", options, {"dtype", "model"}, local_world_size=1)
        assert options == {"dtype": "float32"}
        assert note.startswith("cpu: ") and "float32 weights" in note and "OMP_NUM_THREADS" in note
        assert torch.get_num_threads() == cpu_threads(1)
        kept = {"dtype": "bfloat16"}
        cpu_defaults("cpu", kept, {"dtype"})
        assert kept == {"dtype": "bfloat16"}  # the user's dtype wins
        no_dtype: dict = {}
        cpu_defaults("cpu", no_dtype, {"model"})
        assert no_dtype == {}  # a backend without a dtype option gets none
        assert cpu_defaults("cuda", {}, None) is None
    finally:
        torch.set_num_threads(before)
    assert cpu_threads(2, {"OMP_NUM_THREADS": "3"}) is None


def test_cpu_threads_leave_out_the_cpus_other_processes_keep_busy(monkeypatch):
    import treesdk.training.loop.precision as precision

    monkeypatch.setattr(precision, "_available_cpus", lambda: 8)
    assert cpu_threads(1, {}, load=0.2) == 8
    assert cpu_threads(1, {}, load=2.6) == 5  # 3 CPUs busy elsewhere
    assert cpu_threads(2, {}, load=2.6) == 2  # two processes share the 5 free ones
    assert cpu_threads(1, {}, load=20.0) == 1  # never below one
    monkeypatch.setattr(precision, "_load_average", lambda: 1.4)
    monkeypatch.setattr(precision, "_available_cpus", lambda: 2)
    assert cpu_threads(1, {}) == 1  # a 2-core machine with one busy core: one thread


def test_accelerate_mixed_precision_is_the_default_precision():
    from treesdk.training.loop.precision import default_precision

    assert default_precision({"ACCELERATE_MIXED_PRECISION": "bf16"}) == "bf16"
    assert default_precision({"ACCELERATE_MIXED_PRECISION": "no"}) == "fp32"
    assert default_precision({}) == "fp32"
