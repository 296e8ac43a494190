"""The flow SDE step, its log-prob and the sigma grids, checked against independent float64 math."""

import math

import numpy as np
import pytest
import torch

from treesdk.sde import flux_mu, log_prob, ode_step, sde_step_with_logprob, sigma_grid


def reference_step(x, v, s, s_next, a, eps):
    """The Flow-GRPO step (mean, transition std as in treesdk.sde's docstring) in float64 numpy, written independently of treesdk.sde."""
    x, v, eps = (np.asarray(t, dtype=np.float64) for t in (x, v, eps))
    dt = s_next - s
    s_den = s_next if s == 1.0 else s
    std_t = a * math.sqrt(s / (1 - s_den))
    mean = x * (1 + std_t**2 / (2 * s) * dt) + v * (1 + std_t**2 * (1 - s) / (2 * s)) * dt
    std = std_t * math.sqrt(-dt)
    x_next = mean + std * eps
    elem = -((x_next - mean) ** 2) / (2 * std**2) - math.log(std) - 0.5 * math.log(2 * math.pi)
    return x_next, mean, std, elem.reshape(elem.shape[0], -1).mean(axis=1)


@pytest.mark.parametrize("s,s_next,a", [(1.0, 0.9, 0.7), (0.6, 0.45, 0.7), (0.3, 0.0, 1.2), (0.05, 0.01, 0.3)])
def test_sde_step_matches_float64_formula(s, s_next, a):
    g = torch.Generator().manual_seed(0)
    x, v, eps = (torch.randn(3, 4, 5, 5, generator=g) for _ in range(3))
    x_next, mean, std, lp = sde_step_with_logprob(x, v, s, s_next, a, noise=eps)
    rx, rmean, rstd, rlp = reference_step(x, v, s, s_next, a, eps)
    np.testing.assert_allclose(x_next.numpy(), rx, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(mean.numpy(), rmean, rtol=1e-5, atol=1e-5)
    assert float(std.flatten()[0]) == pytest.approx(rstd, rel=1e-6)
    np.testing.assert_allclose(lp.numpy(), rlp, rtol=1e-5, atol=1e-5)
    assert lp.shape == (3,) and lp.dtype == torch.float32


def test_log_prob_is_normal_density_averaged_over_elements():
    g = torch.Generator().manual_seed(1)
    mean, x = torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 3, 8, 8, generator=g)
    std = torch.tensor(0.37)
    expected = torch.distributions.Normal(mean, std).log_prob(x).mean(dim=(1, 2, 3))
    torch.testing.assert_close(log_prob(x, mean, std), expected)


def test_bf16_inputs_use_float32_math():
    g = torch.Generator().manual_seed(2)
    x, v, eps = (torch.randn(2, 4, 4, generator=g) for _ in range(3))
    out16 = sde_step_with_logprob(x.bfloat16(), v.bfloat16(), 0.5, 0.4, 0.7, noise=eps)
    out32 = sde_step_with_logprob(x.bfloat16().float(), v.bfloat16().float(), 0.5, 0.4, 0.7, noise=eps)
    assert all(t.dtype == torch.float32 for t in out16)
    torch.testing.assert_close(out16[3], out32[3])


def test_log_prob_does_not_depend_on_the_batch():
    g = torch.Generator().manual_seed(3)
    x, v, eps = (torch.randn(5, 2, 6, 6, generator=g) for _ in range(3))
    sig = torch.tensor([0.9, 0.7, 0.5, 0.3, 0.2])
    nxt = sig - 0.1
    _, _, _, lp_all = sde_step_with_logprob(x, v, sig, nxt, 0.7, noise=eps)
    for i in range(5):
        _, _, _, lp_one = sde_step_with_logprob(x[i : i + 1], v[i : i + 1], sig[i : i + 1], nxt[i : i + 1], 0.7, noise=eps[i : i + 1])
        assert float(lp_one[0]) == float(lp_all[i])


def test_ode_step_and_wrong_direction():
    x, v = torch.ones(2, 3), torch.full((2, 3), 2.0)
    torch.testing.assert_close(ode_step(x, v, 0.8, 0.6), x + (-0.2) * v)
    with pytest.raises(ValueError, match="sigma_next must be < sigma"):
        sde_step_with_logprob(x, v, 0.5, 0.6, 0.7)


def test_sigma_grids_match_diffusers_shift_formulas():
    grid = sigma_grid(4)
    torch.testing.assert_close(grid, torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]))
    sd3 = sigma_grid(4, shift=3.0)
    base = torch.tensor([1.0, 0.75, 0.5, 0.25], dtype=torch.float64)
    torch.testing.assert_close(sd3[:-1], (3 * base / (1 + 2 * base)).float())
    mu = flux_mu(4096)
    assert mu == pytest.approx(1.15)
    flux = sigma_grid(4, mu=mu)
    torch.testing.assert_close(flux[:-1], (math.exp(mu) / (math.exp(mu) + (1 / base - 1))).float())
    assert flux[0] == 1.0 and flux[-1] == 0.0
