"""JPEG (in)compressibility against DDPO's definition, computed independently here."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

import treesdk.registry as registry
from treesdk_plugins.jpeg import JpegCompressibilityReward, JpegIncompressibilityReward


def ddpo_sizes(images: torch.Tensor) -> np.ndarray:
    """ddpo_pytorch/rewards.py: jpeg_incompressibility."""
    arrays = (images * 255).round().clamp(0, 255).to(torch.uint8).cpu().numpy().transpose(0, 2, 3, 1)
    sizes = []
    for array in arrays:
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="JPEG", quality=95)
        sizes.append(buffer.tell() / 1000)
    return np.array(sizes)


@pytest.fixture
def images():
    g = torch.Generator().manual_seed(0)
    noisy = torch.rand(2, 3, 64, 48, generator=g)
    flat = torch.full((2, 3, 64, 48), 0.5)
    return torch.cat([noisy, flat])


def test_incompressibility_is_jpeg_size_in_kb(images):
    got = JpegIncompressibilityReward().score(images, [""] * 4)
    assert got.dtype == torch.float32 and got.shape == (4,)
    np.testing.assert_allclose(got.numpy(), ddpo_sizes(images), rtol=1e-6)
    assert got[0] > got[2]  # noise compresses worse than a flat image


def test_compressibility_is_minus_size(images):
    torch.testing.assert_close(
        JpegCompressibilityReward().score(images, [""] * 4), -JpegIncompressibilityReward().score(images, [""] * 4)
    )


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        JpegCompressibilityReward().score(torch.rand(3, 8, 8), ["a"] * 3)
    with pytest.raises(ValueError, match=r"expected 2 prompts"):
        JpegCompressibilityReward().score(torch.rand(2, 3, 8, 8), ["a"])


def test_jpeg_registered():
    assert registry.load("reward", "jpeg-compressibility") is JpegCompressibilityReward
    assert registry.load("reward", "jpeg-incompressibility") is JpegIncompressibilityReward
