"""Tiny random FLUX and SD3 pipelines for the tests: a thin layer over :mod:`treesdk_backends.tiny`.

The builders live in the installed package (``treesdk tiny --family NAME`` builds the same
folders for users); this module keeps the names the tests import::

    from diffusers_fixtures import build_tiny_flux, build_tiny_sd3, TINY_RESOLUTION

and the session-scoped fixtures :func:`tiny_flux_path` / :func:`tiny_sd3_path` (import them into a
test module: ``from diffusers_fixtures import tiny_flux_path, tiny_sd3_path``).

Stable public names (other engineers rely on them):

* :func:`build_tiny_flux(path) -> Path` writes a ``FluxPipeline`` folder (FLUX.1-dev layout, guidance
  embedding); :func:`build_tiny_sd3(path) -> Path` a ``StableDiffusion3Pipeline`` folder (SD3.5
  layout). Every other family: :data:`FAMILIES` / :func:`build_tiny`.
* :data:`TINY_RESOLUTION` (32 px) is the image size the tiny image models are built for (the VAE
  downsamples by 2, so FLUX/SD3 latents are ``[4, 16, 16]``); :data:`TINY_MAX_SEQUENCE_LENGTH` (16)
  the text length to pass as ``max_sequence_length``.
* :func:`perturb_trainable(backend, seed, scale)`: seeded random values in every trainable weight
  (a fresh LoRA has ``lora_B = 0`` and changes nothing).
* :func:`single_thread()`: context manager running torch on one intra-op thread (tiny models on a
  busy 2-core machine are ~100x faster that way); restores the thread count.

Weights are seeded; token ids may differ from one build to the next (the BPE trainer breaks
frequency ties per process), so tests compare against the pipeline built in the same session,
never against stored numbers.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import torch

from treesdk_backends.tiny import (  # noqa: F401 - re-exported for the tests
    FAMILIES,
    TINY_MAX_SEQUENCE_LENGTH,
    TINY_NUM_FRAMES,
    TINY_RESOLUTION,
    build_tiny,
    build_tiny_flux,
    build_tiny_sd3,
)


def perturb_trainable(backend, seed: int = 0, scale: float = 0.05) -> None:
    """Overwrite every trainable parameter of ``backend`` with seeded ``scale * N(0, 1)`` noise.

    A fresh LoRA adapter has ``lora_B = 0`` (the policy equals the base model and ``lora_A`` gets
    no gradient); tests that need a LoRA that *does* something call this first.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in backend.trainable_parameters():
            noise = torch.randn(param.shape, generator=gen, dtype=torch.float32)
            param.copy_((scale * noise).to(param.dtype))


@contextlib.contextmanager
def single_thread():
    """Run tiny models on one intra-op thread: on a busy 2-core machine OpenMP's spinning threads
    make a 32x32 matmul ~300x slower than single-threaded. Restores the thread count on exit."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_flux_path(tmp_path_factory) -> Path:
    """A tiny FLUX pipeline folder built once per test session."""
    return build_tiny_flux(tmp_path_factory.mktemp("tiny-flux"))


@pytest.fixture(scope="session")
def tiny_sd3_path(tmp_path_factory) -> Path:
    """A tiny SD3.5 pipeline folder built once per test session."""
    return build_tiny_sd3(tmp_path_factory.mktemp("tiny-sd3"))
