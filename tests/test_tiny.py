"""``treesdk tiny`` and :mod:`treesdk_backends.tiny`: every family's tiny pipeline is written in the
hub layout, loads with its own diffusers pipeline class and samples with ``output_type="latent"``."""

from __future__ import annotations

import json

import diffusers
import pytest
import torch
from typer.testing import CliRunner

from diffusers_fixtures import single_thread
from treesdk_backends.tiny import FAMILIES, UnknownFamilyError, build_tiny
from treesdk_cli.main import app

#: latent shape ``pipe(..., output_type="latent")`` returns for one prompt at the tiny size
#: (FLUX.1-style pipelines and FLUX.2-dev return packed tokens; FLUX.2-klein unpatchifies; Wan is 5-D)
EXPECTED_LATENTS = {
    "flux": (1, 64, 16),
    "flux-schnell": (1, 64, 16),
    "sd3": (1, 4, 16, 16),
    "flux2": (1, 64, 16),
    "flux2-klein": (1, 4, 16, 16),
    "qwen-image": (1, 16, 16),
    "z-image": (1, 4, 16, 16),
    "chroma": (1, 64, 16),
    "lumina2": (1, 4, 8, 8),
    "wan": (1, 4, 3, 8, 8),
}


def invoke(*args: str):
    return CliRunner().invoke(app, ["tiny", *args])


def test_list_prints_family_names_one_per_line():
    result = invoke("--list")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == list(FAMILIES)
    assert set(FAMILIES) == set(EXPECTED_LATENTS)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_loads_and_samples(family, tmp_path):
    spec = FAMILIES[family]
    with single_thread():
        path = build_tiny(family, tmp_path / family)
        index = json.loads((path / "model_index.json").read_text())
        assert index["_class_name"] == spec.pipeline
        pipe = getattr(diffusers, spec.pipeline).from_pretrained(path)
        pipe.set_progress_bar_config(disable=True)
        out = pipe(
            prompt="a red apple on a wooden table",
            num_inference_steps=2,
            output_type="latent",
            generator=torch.Generator().manual_seed(0),
            **spec.call_kwargs,
        )
    latents = out.frames if spec.video else out.images
    assert tuple(latents.shape) == EXPECTED_LATENTS[family]
    assert torch.isfinite(latents).all()


def test_same_seed_same_weights(tmp_path):
    from safetensors.torch import load_file

    a = build_tiny("flux-schnell", tmp_path / "a", seed=3)
    b = build_tiny("flux-schnell", tmp_path / "b", seed=3)
    c = build_tiny("flux-schnell", tmp_path / "c", seed=4)
    name = "transformer/diffusion_pytorch_model.safetensors"
    wa, wb, wc = (load_file(p / name) for p in (a, b, c))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)


def test_cli_builds_a_family(tmp_path):
    out = tmp_path / "tiny"
    result = invoke("--family", "flux-schnell", "--out", str(out))
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())
    assert "FluxPipeline" in output and str(out) in output
    assert "--resolution" not in output  # the hint trains at the tiny size: the folder's defaults
    assert json.loads((out / "treesdk_defaults.json").read_text()) == {"resolution": 32, "max_sequence_length": 16}
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "FluxPipeline"
    for part in ("scheduler", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "transformer", "vae"):
        assert (out / part).is_dir(), part
    transformer = json.loads((out / "transformer" / "config.json").read_text())
    assert transformer["guidance_embeds"] is False


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "give --list, or both --family"),
        (("--family", "flux"), "give --list, or both --family"),
        (("--family", "nope", "--out", "X"), "unknown model family 'nope'"),
        (("--list", "--family", "flux"), "--list takes no --family"),
    ],
)
def test_bad_arguments_are_one_line_errors(args, message, tmp_path):
    args = tuple(str(tmp_path / "o") if a == "X" else a for a in args)
    result = invoke(*args)
    assert result.exit_code == 1
    assert message in " ".join(result.output.split())
    assert "Traceback" not in result.output


def test_out_must_be_new_or_empty(tmp_path):
    (tmp_path / "file.txt").write_text("x")
    result = invoke("--family", "flux", "--out", str(tmp_path))
    assert result.exit_code == 1
    assert "exists and is not an empty folder" in " ".join(result.output.split())


def test_build_tiny_unknown_family(tmp_path):
    with pytest.raises(UnknownFamilyError, match="known families: flux"):
        build_tiny("sdxl", tmp_path)
