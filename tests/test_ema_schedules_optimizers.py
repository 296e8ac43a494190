"""EMA of the trainable weights, lr schedules and the optimiser choice (treesdk.training.optimisation.ema / schedules / optimizers)."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from treesdk.training.optimisation.ema import EMA
from treesdk.training.optimisation.optimizers import OPTIMIZERS, build_optimizer
from treesdk.training.optimisation.schedules import build_lr_scheduler, lr_factor


def _params(seed: int = 0) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(3, 4, generator=g)), torch.nn.Parameter(torch.randn(5, generator=g))]


def _train(params, optimizer, steps: int, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    target = [torch.randn(p.shape, generator=g) for p in params]
    for _ in range(steps):
        optimizer.zero_grad()
        loss = sum(((p - t) ** 2).sum() for p, t in zip(params, target))
        loss.backward()
        optimizer.step()


# -- EMA ------------------------------------------------------------------------------------------


def test_ema_follows_the_documented_rule_with_warmup_and_interval():
    params = _params()
    ema = EMA(params, decay=0.9, every=2, warmup=True)
    expected = [p.detach().clone() for p in params]
    optimizer = torch.optim.SGD(params, lr=0.1)
    ema.attach(optimizer)
    g = torch.Generator().manual_seed(3)
    updates = 0
    for step in range(1, 7):
        optimizer.zero_grad()
        sum((p * torch.randn(p.shape, generator=g)).sum() for p in params).backward()
        optimizer.step()
        if step % 2 == 0:  # every 2nd optimiser step
            decay = min(0.9, (1 + updates) / (10 + updates))
            expected = [e + (1 - decay) * (p.detach() - e) for e, p in zip(expected, params)]
            updates += 1
    assert ema.steps == 6 and ema.updates == 3
    for avg, want in zip(ema.shadow, expected):
        assert torch.allclose(avg, want, atol=1e-6)
    assert not torch.allclose(ema.shadow[0], params[0].detach())  # EMA differs from the raw weights


def test_ema_without_warmup_uses_the_decay_from_the_start():
    p = torch.nn.Parameter(torch.zeros(2))
    ema = EMA([p], decay=0.5, warmup=False)
    with torch.no_grad():
        p.fill_(1.0)
    ema.step()
    assert torch.allclose(ema.shadow[0], torch.full((2,), 0.5))


def test_ema_swapped_in_restores_live_weights_and_casts_dtype():
    p = torch.nn.Parameter(torch.ones(4, dtype=torch.bfloat16))
    ema = EMA([p], decay=0.5, warmup=False)
    assert ema.shadow[0].dtype == torch.float32
    with torch.no_grad():
        p.fill_(3.0)
    ema.step()  # shadow = 2
    with ema.swapped_in():
        assert p.dtype == torch.bfloat16 and torch.all(p == 2.0)
    assert torch.all(p == 3.0)
    with pytest.raises(RuntimeError):
        with ema.swapped_in():
            raise RuntimeError("boom")
    assert torch.all(p == 3.0)


def test_ema_state_round_trip_makes_resume_exact():
    params = _params()
    straight = EMA(params, decay=0.95, every=1)
    optimizer = torch.optim.AdamW(params, lr=0.05)
    straight.attach(optimizer)
    _train(params, optimizer, 3)
    state = {k: v.clone() for k, v in straight.state_dict().items()}
    opt_state = copy.deepcopy(optimizer.state_dict())
    weights = [p.detach().clone() for p in params]
    _train(params, optimizer, 3, seed=2)

    resumed_params = [torch.nn.Parameter(w.clone()) for w in weights]
    resumed = EMA(resumed_params, decay=0.95, every=1)
    resumed.load_state_dict(state)
    opt2 = torch.optim.AdamW(resumed_params, lr=0.05)
    opt2.load_state_dict(opt_state)
    resumed.attach(opt2)
    _train(resumed_params, opt2, 3, seed=2)
    assert resumed.updates == straight.updates == 6
    for a, b in zip(resumed.shadow, straight.shadow):
        assert torch.equal(a, b)


def test_ema_bad_arguments_and_mismatched_state_are_one_line_errors():
    with pytest.raises(ValueError, match="decay"):
        EMA(_params(), decay=1.0)
    with pytest.raises(ValueError, match="interval"):
        EMA(_params(), every=0)
    ema = EMA(_params())
    with pytest.raises(ValueError, match="2 trainable parameters"):
        ema.load_state_dict({"ema.0": torch.zeros(3, 4)})
    with pytest.raises(ValueError, match="shape"):
        ema.load_state_dict({"ema.0": torch.zeros(3, 4), "ema.1": torch.zeros(6)})


# -- schedules ------------------------------------------------------------------------------------


def test_schedule_values_per_iteration():
    assert [lr_factor("constant", i, 10, warmup=3) for i in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    linear = [lr_factor("linear", i, 10, warmup=2) for i in range(11)]
    assert linear[:3] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert linear[6] == pytest.approx(0.5) and linear[10] == pytest.approx(0.0)
    cosine = [lr_factor("cosine", i, 10, warmup=0, min_factor=0.1) for i in range(11)]
    assert cosine[0] == pytest.approx(1.0) and cosine[10] == pytest.approx(0.1)
    assert cosine[5] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert all(a >= b for a, b in zip(cosine, cosine[1:]))


def test_scheduler_sets_the_optimizer_lr_per_iteration_and_resumes_in_place():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=1e-3)
    sched = build_lr_scheduler(opt, "linear", total=8, warmup=2)
    seen = []
    for _ in range(8):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([1e-3 * lr_factor("linear", i, 8, 2) for i in range(8)])
    opt2 = torch.optim.AdamW([p], lr=1e-3)
    sched2 = build_lr_scheduler(opt2, "linear", total=8, warmup=2, last_iteration=5)
    assert opt2.param_groups[0]["lr"] == pytest.approx(seen[5])
    opt2.step()
    sched2.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(seen[6])


def test_unknown_schedule_is_a_one_line_error():
    with pytest.raises(ValueError, match="constant, linear, cosine"):
        lr_factor("cosin", 0, 10)


# -- optimisers -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["adamw", "adafactor", "sgd"])
def test_each_optimizer_trains(name):
    params = _params()
    before = [p.detach().clone() for p in params]
    optimizer = build_optimizer(name, params, lr=0.05, betas=(0.9, 0.999), weight_decay=0.0)
    _train(params, optimizer, 3)
    assert any(not torch.equal(a, p.detach()) for a, p in zip(before, params))


def test_optimizer_kinds_are_what_they_say():
    params = _params()
    assert isinstance(build_optimizer("AdamW", params, lr=1e-3), torch.optim.AdamW)
    assert type(build_optimizer("adafactor", params, lr=1e-3)).__name__ == "Adafactor"
    assert isinstance(build_optimizer("sgd", params, lr=1e-3), torch.optim.SGD)


def test_adamw_8bit_without_bitsandbytes_and_unknown_names_are_one_line_errors():
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        with pytest.raises(ValueError, match="pip install bitsandbytes"):
            build_optimizer("adamw-8bit", _params(), lr=1e-3)
    with pytest.raises(ValueError, match=", ".join(OPTIMIZERS)):
        build_optimizer("adamx", _params(), lr=1e-3)


# -- the trainer's combination --------------------------------------------------------------------


def test_optimization_combines_optimizer_schedule_and_ema():
    from types import SimpleNamespace

    from treesdk.training.optimisation.optimization import EMAConfig, Optimization, accumulation_summary

    spec = SimpleNamespace(optimizer="sgd", lr=0.1, betas=(0.0, 0.999), weight_decay=0.0, eps=1e-8, passes=1,
                           minibatches=2, lr_schedule="linear", lr_warmup=1, lr_min_factor=0.0)
    params = _params()
    opt = Optimization(params, spec, iters=4, ema=EMAConfig(decay=0.5, warmup=False, use="eval"))
    assert isinstance(opt.optimizer, torch.optim.SGD)
    opt.ema.attach(opt.optimizer)  # the trainer calls ema.step() itself after each optimiser step
    opt.start(0)
    lrs = []
    for _ in range(4):
        _train(params, opt.optimizer, 2)
        lrs.append(opt.end_iteration()["lr"])
    assert lrs == pytest.approx([0.1 * lr_factor("linear", i, 4, 1) for i in range(4)])
    assert opt.ema is not None and opt.ema.steps == 8
    live = params[0].detach().clone()
    with opt.weights_for("eval") as swapped:
        assert swapped and torch.equal(params[0].detach(), opt.ema.shadow[0])
    with opt.weights_for("export") as swapped:
        assert not swapped and torch.equal(params[0].detach(), live)
    assert torch.equal(params[0].detach(), live)
    saved = opt.checkpoint_tensors()
    again = Optimization(params, spec, iters=4, ema=EMAConfig(decay=0.5))
    again.load_checkpoint_tensors(saved)
    assert torch.equal(again.ema.shadow[0], opt.ema.shadow[0]) and again.ema.updates == 8
    assert "2 optimiser step(s) per iteration" in accumulation_summary(spec, batch=8, world_size=2, chunk=64)
