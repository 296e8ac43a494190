"""The conformance suite (:mod:`treesdk.testing`) on every built-in backend.

Every family that ``treesdk tiny --list`` names is built tiny in the hub layout, loaded through
``treesdk.load_backend("diffusers", model=DIR)`` (the family read from ``model_index.json``), fp32 on
CPU with a rank-4 LoRA, and put through every check; the tolerances are the family adapter's
``parity_atol`` / ``batch_atol``. The README's family table cites these tests.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

pytest.importorskip("diffusers")
pytest.importorskip("peft")

import treesdk
from diffusers_fixtures import single_thread
from treesdk import testing
from treesdk_backends.diffusers import conformance
from treesdk_backends.tiny import FAMILIES

STEPS = 3


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_thread():
        yield


def backend_options(family: str) -> dict:
    """Backend options for the tiny ``family``: its pipeline call kwargs (height -> resolution;
    text length, frames, ... are family options of the same name)."""
    kwargs = dict(FAMILIES[family].call_kwargs)
    resolution = kwargs.pop("height")
    kwargs.pop("width", None)
    return dict(resolution=resolution, dtype="float32", device="cpu", lora_rank=4, **kwargs)


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request, tmp_path_factory):
    name = request.param
    path = FAMILIES[name](tmp_path_factory.mktemp(f"tiny-{name}") / "model")
    backend = treesdk.load_backend("diffusers", model=str(path), **backend_options(name))
    return name, backend


def test_family_is_read_from_model_index(family):
    name, backend = family
    assert backend.family == name and backend.name == "diffusers"
    assert type(backend.pipe).__name__ == FAMILIES[name].pipeline


def test_shapes_and_dtypes(family):
    name, backend = family
    testing.check_shapes(backend, conformance.PROMPTS, STEPS)


def test_gradients_reach_only_trainable_parameters(family):
    testing.check_gradients(family[1], conformance.PROMPTS)


def test_trainable_state_roundtrips(family):
    testing.check_state_roundtrip(family[1])


def test_velocity_is_batch_invariant(family):
    backend = family[1]
    testing.check_batch_invariance(backend, conformance.PROMPTS, backend.adapter.batch_atol)


def test_adapter_on_off_restores_the_base_exactly(family):
    testing.check_adapter_on_off(family[1], conformance.PROMPTS)


def test_nfe_equals_the_tree_formula(family):
    testing.check_nfe(family[1], conformance.PROMPTS, steps=4, k=2, depth=2, window_start=1)


def test_ode_sampling_equals_the_pipeline(family):
    backend = family[1]
    report = testing.check_ode_parity(backend, conformance.reference_sampler(backend), conformance.PROMPTS[:1],
                                      STEPS, backend.adapter.parity_atol)
    assert report["sample_max"] > 0.1


def test_lora_export_loads_in_diffusers_and_changes_the_output(family):
    conformance.check_lora_export(family[1])


def test_merged_exports_give_the_trained_velocity(family):
    conformance.check_merged_export(family[1])


def test_digits_passes_check_backend():
    report = testing.check_backend(lambda: treesdk.load_backend("digits", device="cpu"))
    assert report["nfe"]["nfe"] == report["nfe"]["formula"]
    assert set(report) == {"shapes", "gradients", "state_roundtrip", "batch_invariance", "adapter_on_off", "nfe"}


def test_export_check_reads_the_lora_against_the_base(family, tmp_path):
    from treesdk.export_files import check_file

    name, backend = family
    lora = backend.export("lora", str(tmp_path / "lora.safetensors"), {"treesdk.backend": "diffusers"})[0]
    report = check_file(lora, base=str(backend.model_path / "transformer"))
    assert report.ok and report.family == name and report.format == "lora-diffusers" and report.rank == 4, report.problems
