"""``pytest --pyargs treesdk.testing``: the conformance checks against one registered backend.

The backend is ``TREESDK_BACKEND`` (a ``treesdk.backends`` name; default ``digits``) built with the
JSON options in ``TREESDK_BACKEND_OPTIONS`` (e.g. ``{"device": "cpu", "model": "/path"}``);
``TREESDK_BATCH_ATOL`` sets the batch-invariance tolerance (default 1e-5).
"""

from __future__ import annotations

import json
import os

import pytest

import treesdk
from treesdk.testing import checks


@pytest.fixture(scope="module")
def backend():
    name = os.environ.get("TREESDK_BACKEND", "digits")
    try:
        options = json.loads(os.environ.get("TREESDK_BACKEND_OPTIONS", "{}") or "{}")
    except ValueError as exc:
        raise pytest.UsageError(f"TREESDK_BACKEND_OPTIONS is not JSON: {exc}") from None
    if not isinstance(options, dict):
        raise pytest.UsageError(f"TREESDK_BACKEND_OPTIONS must be a JSON object, got {options!r}")
    return treesdk.load_backend(name, **options)


@pytest.fixture(scope="module")
def prompts(backend):
    return list(backend.default_prompts()[:3])


def test_shapes_and_dtypes(backend, prompts):
    checks.check_shapes(backend, prompts)


def test_gradients_reach_only_trainable_parameters(backend, prompts):
    checks.check_gradients(backend, prompts)


def test_trainable_state_roundtrips(backend):
    checks.check_state_roundtrip(backend)


def test_velocity_is_batch_invariant(backend, prompts):
    checks.check_batch_invariance(backend, prompts, float(os.environ.get("TREESDK_BATCH_ATOL", "1e-5")))


def test_adapter_on_off_restores_the_base(backend, prompts):
    try:
        checks.check_adapter_on_off(backend, prompts)
    except NotImplementedError as exc:
        pytest.skip(f"no reference policy: {exc}")


def test_nfe_equals_the_tree_formula(backend, prompts):
    checks.check_nfe(backend, prompts)
