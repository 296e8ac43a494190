"""The four step families (flow-sde, dance-sde, cps, ode), each against its own float64 re-derivation."""

import math

import numpy as np
import pytest
import torch

from treesdk.sde import SDE_FAMILIES, get_sde_family


def _elementwise_gaussian(x_next, mean, std):
    elem = -((x_next - mean) ** 2) / (2 * std**2) - np.log(std) - 0.5 * math.log(2 * math.pi)
    return elem.reshape(elem.shape[0], -1).mean(axis=1)


def reference_dance(x, v, s, s_next, eta, eps):
    """DanceGRPO's flux_step read as math: Euler drift plus the score correction -eta^2/2 * score."""
    x0 = x - s * v
    score = -(x - (1 - s) * x0) / s**2  # the score of N((1 - s) x0, s^2) at x
    drift = v - 0.5 * eta**2 * score  # reverse-time drift in sigma
    mean = x + (s_next - s) * drift
    std = eta * math.sqrt(s - s_next)
    x_next = mean + std * eps
    return x_next, mean, std, _elementwise_gaussian(x_next, mean, std)


def reference_cps(x, v, s, s_next, a, eps):
    """Coefficients-preserving step: x_next = (1 - s') x0 + sqrt(s'^2 - c^2) x1 + c eps with c = s' sin(a pi/2)."""
    x0 = x - s * v
    x1 = x + (1 - s) * v
    c = s_next * math.sin(a * math.pi / 2)
    mean = (1 - s_next) * x0 + math.sqrt(max(s_next**2 - c**2, 0.0)) * x1
    x_next = mean + c * eps
    lp = -((x_next - mean) ** 2).reshape(x.shape[0], -1).mean(axis=1)
    return x_next, mean, c, lp


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(3, 2, 4, 4, generator=g) for _ in range(3))


def _run(name, x, v, s, s_next, a, eps):
    fam = get_sde_family(name)
    mean, std = fam.mean_std(x, v, s, s_next, a)
    x_next = mean + std * eps
    return x_next, mean, std, fam.log_prob(x_next, mean, std)


@pytest.mark.parametrize("s,s_next,eta", [(1.0, 0.9, 0.3), (0.6, 0.45, 0.7), (0.3, 0.0, 1.0), (0.05, 0.01, 0.3)])
def test_dance_sde_matches_float64_formula(s, s_next, eta):
    x, v, eps = _inputs()
    got = _run("dance-sde", x, v, s, s_next, eta, eps)
    ref = reference_dance(*(t.double().numpy() for t in (x, v)), s, s_next, eta, eps.double().numpy())
    np.testing.assert_allclose(got[0].numpy(), ref[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got[1].numpy(), ref[1], rtol=1e-5, atol=1e-5)
    assert float(got[2].flatten()[0]) == pytest.approx(ref[2], rel=1e-6)
    np.testing.assert_allclose(got[3].numpy(), ref[3], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("s,s_next,a", [(1.0, 0.9, 0.7), (0.6, 0.45, 0.5), (0.3, 0.0, 0.7), (0.2, 0.1, 1.0)])
def test_cps_matches_float64_formula(s, s_next, a):
    x, v, eps = _inputs(1)
    got = _run("cps", x, v, s, s_next, a, eps)
    ref = reference_cps(*(t.double().numpy() for t in (x, v)), s, s_next, a, eps.double().numpy())
    for g_, r_ in zip(got[:2], ref[:2]):
        np.testing.assert_allclose(g_.numpy(), r_, rtol=1e-5, atol=1e-5)
    assert float(got[2].flatten()[0]) == pytest.approx(ref[2], rel=1e-6, abs=1e-12)
    np.testing.assert_allclose(got[3].numpy(), ref[3], rtol=1e-5, atol=1e-6)


def test_cps_preserves_the_marginal_coefficients():
    """On the straight path x = (1-s) x0 + s x1 with the exact velocity x1 - x0, the CPS mean plus
    its noise keeps the x0 coefficient at ``1 - s'`` and the noise variance at ``s'^2``."""
    g = torch.Generator().manual_seed(2)
    x0, x1 = torch.randn(1, 1, 64, 64, generator=g), torch.randn(1, 1, 64, 64, generator=g)
    s, s_next = 0.7, 0.4
    mean, std = get_sde_family("cps").mean_std((1 - s) * x0 + s * x1, x1 - x0, s, s_next, 0.6)
    c = float(std.flatten()[0])
    torch.testing.assert_close(mean - (1 - s_next) * x0, math.sqrt(s_next**2 - c**2) * x1, rtol=1e-4, atol=1e-5)


def test_ode_family_is_the_euler_step_and_has_no_log_prob():
    x, v, _ = _inputs(3)
    mean, std = get_sde_family("ode").mean_std(x, v, 0.5, 0.3)
    torch.testing.assert_close(mean, x + (0.3 - 0.5) * v)
    assert float(std.abs().max()) == 0.0
    with pytest.raises(ValueError, match="deterministic"):
        get_sde_family("ode").log_prob(mean, mean, std)


def test_flow_sde_family_is_the_default_step_and_kl_std_drops_sqrt_dt():
    fam = get_sde_family("flow-sde")
    x, v, _ = _inputs(4)
    s, s_next, a = 0.6, 0.4, 0.7
    _, std = fam.mean_std(x, v, s, s_next, a)
    std_t = a * math.sqrt(s / (1 - s))
    assert float(fam.kl_std(std, s, s_next).flatten()[0]) == pytest.approx(std_t, rel=1e-6)
    assert float(get_sde_family("cps").kl_std(std, s, s_next).flatten()[0]) == pytest.approx(float(std.flatten()[0]))


def test_unknown_family_is_named():
    with pytest.raises(ValueError, match="unknown SDE family 'magic'.*flow-sde"):
        get_sde_family("magic")
    assert set(SDE_FAMILIES) == {"flow-sde", "dance-sde", "cps", "ode"}
