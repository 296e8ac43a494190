"""``attention_kernels``: which SDPA kernels the diffusers transformer may use (cuDNN left out on CUDA)."""

from __future__ import annotations

import pytest
import torch

from diffusers_fixtures import TINY_MAX_SEQUENCE_LENGTH, TINY_RESOLUTION, single_thread, tiny_flux_path  # noqa: F401
from treesdk_backends.diffusers.attention import attention_kernels, restricted_attention


def test_auto_leaves_out_cudnn_on_cuda_only():
    assert attention_kernels("auto", torch.device("cuda")) == ("flash", "efficient", "math")
    assert attention_kernels(None, torch.device("cuda")) == ("flash", "efficient", "math")
    assert attention_kernels("auto", torch.device("cpu")) is None
    assert attention_kernels("all", torch.device("cuda")) is None
    assert attention_kernels("flash, math,flash", torch.device("cuda")) == ("flash", "math")
    assert attention_kernels(["cudnn"], torch.device("cuda")) == ("cudnn",)


@pytest.mark.parametrize("bad", ["fast", "flash,xformers", ","])
def test_unknown_kernel_names_are_one_clear_error(bad):
    with pytest.raises(ValueError, match="attention_kernels .*expected 'auto', 'all' or comma-separated"):
        attention_kernels(bad, torch.device("cpu"))


def test_restriction_reaches_scaled_dot_product_attention():
    q = torch.randn(1, 2, 4, 8)
    with restricted_attention(("math",)):
        out = torch.nn.functional.scaled_dot_product_attention(q, q, q)
    with restricted_attention(None):
        assert torch.allclose(torch.nn.functional.scaled_dot_product_attention(q, q, q), out, atol=1e-5)
    with restricted_attention(("efficient",)), pytest.raises(RuntimeError):  # no CPU kernel of that name
        torch.nn.functional.scaled_dot_product_attention(q, q, q)


def test_flux_backend_calls_its_transformer_inside_the_restriction(tiny_flux_path):
    import treesdk

    def backend(kernels):
        return treesdk.load_backend("flux", model=str(tiny_flux_path), resolution=TINY_RESOLUTION, device="cpu",
                                    dtype="float32", max_sequence_length=TINY_MAX_SEQUENCE_LENGTH, attention_kernels=kernels)

    with single_thread():
        default, math_only, efficient_only = backend("auto"), backend("math"), backend("efficient")
        assert default.attention_kernels is None and math_only.attention_kernels == ("math",)
        cond = default.encode(["a red square"])
        x = torch.randn(1, *default.latent_shape, generator=torch.Generator().manual_seed(0))
        sigma = torch.tensor([0.6])
        v_default, v_math = default.velocity(x, sigma, cond), math_only.velocity(x, sigma, cond)
        assert torch.allclose(v_default, v_math, atol=1e-5)
        with pytest.raises(RuntimeError):  # the only kernel allowed has no CPU implementation
            efficient_only.velocity(x, sigma, cond)


def test_attention_report_names_the_switches_and_the_restriction():
    from treesdk_backends.diffusers.attention import attention_report

    report = attention_report(("flash", "math"))
    assert report["attention_kernels"] == ["flash", "math"]
    assert set(report["sdpa_enabled"]) >= {"flash", "efficient", "math"}
    assert attention_report(None)["attention_kernels"] is None
