"""Model cards (treesdk.training.exporting.model_card), full pipeline folders and export dtypes (treesdk.pipeline_folder).

The pipeline test builds the tiny random FLUX / SD3 pipelines of ``diffusers_fixtures`` on disk,
writes a trained transformer into a full pipeline folder and loads it with
``<Family>Pipeline.from_pretrained`` as a user would.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from treesdk.training.exporting.model_card import MARKER, hub_repo_id, model_card, write_model_card
from treesdk.pipeline_folder import cast_safetensors, parse_export_dtype

META = {
    "treesdk.version": "0.1.0",
    "treesdk.backend": "flux",
    "treesdk.family": "flux",
    "treesdk.base_model": "/cache/hub/models--black-forest-labs--FLUX.1-dev/snapshots/abc123",
    "treesdk.algorithm": "treegrpo",
    "treesdk.recipe": json.dumps({"name": "treegrpo", "steps": 10}),
    "treesdk.iterations": "300",
}


def test_hub_repo_id_from_ids_and_cache_paths(tmp_path):
    assert hub_repo_id("black-forest-labs/FLUX.1-dev") == "black-forest-labs/FLUX.1-dev"
    assert hub_repo_id(META["treesdk.base_model"]) == "black-forest-labs/FLUX.1-dev"
    assert hub_repo_id(str(tmp_path)) is None


def test_card_has_front_matter_facts_and_usage():
    card = model_card(META, "lora", ["/x/lora.safetensors"], rewards={"hpsv2.1": 0.8, "clipscore": 0.2})
    front = card.split("---")[1]
    assert "base_model: black-forest-labs/FLUX.1-dev" in front and "library_name: diffusers" in front
    assert "- lora" in front and "- treegrpo" in front
    assert "`hpsv2.1` (weight 0.8), `clipscore` (weight 0.2)" in card
    assert "| iterations | 300 |" in card
    assert "pipe.load_lora_weights('.', weight_name='lora.safetensors')" in card
    assert "FluxPipeline.from_pretrained('black-forest-labs/FLUX.1-dev')" in card
    assert '"steps": 10' in card
    pipeline = model_card(META, "diffusers", [])
    assert "FluxPipeline.from_pretrained('.')" in pipeline and "- lora" not in pipeline


def test_card_is_written_beside_the_export_but_never_over_a_foreign_readme(tmp_path):
    lora = tmp_path / "lora.safetensors"
    lora.write_bytes(b"")
    card = write_model_card([str(lora)], "lora", META)
    assert card == tmp_path / "README.md" and MARKER in card.read_text()
    assert write_model_card([str(lora)], "lora", META) == card  # ours: rewritten
    card.write_text("# my own notes\n")
    assert write_model_card([str(lora)], "lora", META) is None
    assert card.read_text() == "# my own notes\n"
    folder = tmp_path / "pipe"
    (folder / "transformer").mkdir(parents=True)
    files = [str(folder / "model_index.json"), str(folder / "transformer" / "config.json")]
    assert write_model_card(files, "diffusers", META) == folder / "README.md"


def test_cast_safetensors_keeps_metadata_and_integer_tensors(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({"w": torch.randn(3, 3), "idx": torch.arange(3)}, str(path), metadata={"treesdk.backend": "flux"})
    cast_safetensors([str(path)], parse_export_dtype("bf16"))
    with safe_open(str(path), framework="pt") as handle:
        assert handle.get_tensor("w").dtype == torch.bfloat16
        assert handle.get_tensor("idx").dtype == torch.int64
        assert handle.metadata()["treesdk.backend"] == "flux" and handle.metadata()["treesdk.dtype"] == "bfloat16"
    assert parse_export_dtype(None) is None
    with pytest.raises(ValueError, match="--dtype 'int8'"):
        parse_export_dtype("int8")


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_full_pipeline_folder_loads_with_from_pretrained(family, tmp_path):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from diffusers import FluxPipeline, StableDiffusion3Pipeline
    from diffusers_fixtures import TINY_MAX_SEQUENCE_LENGTH, TINY_RESOLUTION, build_tiny_flux, build_tiny_sd3, single_thread

    import treesdk
    from treesdk_backends.diffusers_export import export_transformer, merged_state_dict

    base = (build_tiny_flux if family == "flux" else build_tiny_sd3)(tmp_path / "base")
    with single_thread():
        backend = treesdk.load_backend(family, model=str(base), resolution=TINY_RESOLUTION, device="cpu",
                                       dtype="float32", lora_rank=2, max_sequence_length=TINY_MAX_SEQUENCE_LENGTH)
        torch.manual_seed(0)
        with torch.no_grad():
            for p in backend.trainable_parameters():
                p.add_(0.05 * torch.randn_like(p))
        merged = merged_state_dict(backend.transformer)
        folder = tmp_path / "pipeline"
        files = export_transformer(backend, "diffusers", folder, META)  # assemble_pipeline around the transformer
        cls = FluxPipeline if family == "flux" else StableDiffusion3Pipeline
        pipe = cls.from_pretrained(str(folder))
    assert str(folder / "model_index.json") in files
    loaded = pipe.transformer.state_dict()
    assert set(loaded) == set(merged)
    assert all(torch.equal(loaded[k], merged[k]) for k in merged)
    original = cls.from_pretrained(str(base)).transformer.state_dict()
    assert any(not torch.equal(original[k], merged[k]) for k in merged)  # the trained weights, not the base's
    vae_file = next((folder / "vae").glob("*.safetensors"))
    assert os.stat(vae_file).st_ino == os.stat(next((base / "vae").glob("*.safetensors"))).st_ino  # hard link
