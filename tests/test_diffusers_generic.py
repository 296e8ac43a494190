"""The generic diffusers backend: family detection from ``model_index.json``, clear errors, and
``treesdk train --backend diffusers --model DIR`` -> ``treesdk export --format lora`` ->
``pipe.load_lora_weights`` end to end on the tiny FLUX (the other families: tests/test_conformance.py)."""

from __future__ import annotations

import json
import os
import shutil

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("peft")

import treesdk
from diffusers_fixtures import TINY_MAX_SEQUENCE_LENGTH, TINY_RESOLUTION, single_thread, tiny_flux_path  # noqa: F401
from treesdk_backends.diffusers import DiffusersFlowBackend, FamilyAdapter, adapter_class, family_names
from treesdk_backends.diffusers.families.flux import FluxAdapter
from treesdk_backends.flux import FluxBackend

OPTIONS = dict(resolution=TINY_RESOLUTION, dtype="float32", device="cpu", lora_rank=4,
               max_sequence_length=TINY_MAX_SEQUENCE_LENGTH)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_thread():
        yield


def test_families_are_registered_entry_points():
    assert {"flux", "sd3"} <= set(family_names())
    assert adapter_class("flux") is FluxAdapter and issubclass(adapter_class("sd3"), FamilyAdapter)
    with pytest.raises(ValueError, match=r"unknown diffusers family 'nope'; registered .*flux"):
        adapter_class("nope")


def test_diffusers_backend_reads_the_family_and_matches_the_named_backend(tiny_flux_path):
    generic = treesdk.load_backend("diffusers", model=str(tiny_flux_path), **OPTIONS)
    named = treesdk.load_backend("flux", model=str(tiny_flux_path), **OPTIONS)
    assert type(generic) is DiffusersFlowBackend and isinstance(named, FluxBackend)
    assert generic.family == named.family == "flux" and generic.describe()["family"] == "flux"
    named.load_trainable_state_dict(generic.trainable_state_dict())
    x = torch.randn((1, *generic.latent_shape), generator=torch.Generator().manual_seed(0))
    cond = generic.encode(["a photo of a cat"])
    with torch.no_grad():
        assert torch.equal(generic.velocity(x, torch.tensor([0.5]), cond), named.velocity(x, torch.tensor([0.5]), cond))
    assert torch.equal(generic.sigmas(4), named.sigmas(4))


def test_unknown_pipeline_class_missing_model_and_bad_options_are_named(tiny_flux_path, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(tiny_flux_path, other)
    index = json.loads((other / "model_index.json").read_text())
    (other / "model_index.json").write_text(json.dumps({**index, "_class_name": "MysteryPipeline"}))
    with pytest.raises(ValueError, match=r"no diffusers family serves pipeline class 'MysteryPipeline'.*flux \(FluxPipeline\)"):
        DiffusersFlowBackend(other, **OPTIONS)
    with pytest.raises(ValueError, match=r"needs model=PATH \(--model PATH\)"):
        DiffusersFlowBackend(None)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        DiffusersFlowBackend(tmp_path / "absent")
    with pytest.raises(TypeError, match=r"flux backend: .*unexpected keyword argument 'guidance_scale'"):
        DiffusersFlowBackend(tiny_flux_path, guidance_scale=2.0, **OPTIONS)
    with pytest.raises(ValueError, match=r"backend 'flux' is the flux family; got family='sd3'"):
        FluxBackend(tiny_flux_path, family="sd3", **OPTIONS)


def test_cli_train_export_and_load_lora_weights(tiny_flux_path, tmp_path):
    from diffusers import FluxPipeline
    from safetensors.torch import load_file
    from typer.testing import CliRunner

    from treesdk_cli.main import app

    out = tmp_path / "run"
    result = CliRunner().invoke(app, [
        "train", "--backend", "diffusers", "--model", str(tiny_flux_path), "--algo", "treegrpo", "--k", "3",
        "--d", "3", "--steps", "4", "--iters", "1", "--batch", "1", "--reward", "jpeg-compressibility",
        "--resolution", str(TINY_RESOLUTION), "--device", "cpu", "--lr", "1e-3", "--out", str(out),
        "--backend-opt", "dtype=float32", "--backend-opt", f"max_sequence_length={TINY_MAX_SEQUENCE_LENGTH}",
        "--backend-opt", "lora_rank=4",
    ])
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert config["backend"]["name"] == "diffusers"
    lora = tmp_path / "lora.safetensors"
    result = CliRunner().invoke(app, ["export", str(out), "--format", "lora", "--out", str(lora)])
    assert result.exit_code == 0, result.output
    written = load_file(str(lora))
    pipe = FluxPipeline.from_pretrained(tiny_flux_path, local_files_only=True)
    pipe.load_lora_weights(str(lora), adapter_name="trained")
    from peft.utils import get_peft_model_state_dict

    loaded = get_peft_model_state_dict(pipe.transformer, adapter_name="trained")
    assert set(loaded) == {k.removeprefix("transformer.") for k in written}  # no unmatched key either way
