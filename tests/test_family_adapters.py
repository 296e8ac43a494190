"""Family-adapter details the conformance suite does not reach on the tiny defaults: FLUX.1-dev vs
-schnell detection, Wan's hub scheduler (UniPC flow sigmas), its refused variants and frame tiling,
Lumina2's negative prompt (no system prompt), Z-Image and FLUX.2-klein guidance switches."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

pytest.importorskip("diffusers")

import torch

import treesdk
from diffusers_fixtures import single_thread
from treesdk.testing import check_ode_parity
from treesdk_backends.diffusers import conformance
from treesdk_backends.diffusers.families.wan import tile_frames
from treesdk_backends.tiny import FAMILIES


@pytest.fixture(autouse=True)
def _one_thread():
    with single_thread():
        yield


def load(family: str, path, **options):
    kwargs = dict(FAMILIES[family].call_kwargs)
    resolution = kwargs.pop("height")
    kwargs.pop("width")
    return treesdk.load_backend("diffusers", model=str(path), resolution=resolution, dtype="float32", device="cpu",
                                lora_rank=4, **{**kwargs, **options})


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    built: dict = {}

    def get(family: str):
        if family not in built:
            built[family] = FAMILIES[family](tmp_path_factory.mktemp(family) / "model")
        return built[family]

    return get


@pytest.mark.parametrize(("family", "adapter"), [("flux", "FluxAdapter"), ("flux-schnell", "FluxSchnellAdapter")])
def test_flux_dev_and_schnell_are_told_apart_by_the_guidance_embedding(tiny, family, adapter):
    backend = load(family, tiny(family))
    assert backend.family == family and type(backend.adapter).__name__ == adapter
    assert backend.describe()["family"] == family


def test_schnell_backend_refuses_a_dev_checkpoint(tiny):
    with pytest.raises(ValueError, match="has a guidance embedding .*--backend flux"):
        treesdk.load_backend("flux-schnell", model=str(tiny("flux")), resolution=32, dtype="float32", device="cpu")


def test_wan_uses_the_sigmas_of_the_hub_unipc_scheduler(tiny, tmp_path):
    import shutil

    from diffusers import UniPCMultistepScheduler

    path = tmp_path / "wan"
    shutil.copytree(tiny("wan"), path)
    unipc = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    unipc.save_pretrained(path / "scheduler")
    index = json.loads((path / "model_index.json").read_text())
    index["scheduler"] = ["diffusers", "UniPCMultistepScheduler"]
    (path / "model_index.json").write_text(json.dumps(index))
    backend = load("wan", path)
    unipc.set_timesteps(6)
    assert torch.equal(backend.sigmas(6), unipc.sigmas.float())


@pytest.mark.parametrize(("option", "message"), [({"num_frames": 6}, r"num_frames must be 1 \+ a multiple of 2 .*got 6")])
def test_wan_bad_frames_is_a_clear_error(tiny, option, message):
    with pytest.raises(ValueError, match=message):
        load("wan", tiny("wan"), **option)


def test_wan_two_expert_checkpoints_are_refused(tiny, tmp_path):
    import shutil

    path = tmp_path / "wan22"
    shutil.copytree(tiny("wan"), path)
    index = json.loads((path / "model_index.json").read_text())
    index["boundary_ratio"] = 0.875
    (path / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="two-expert checkpoints"):
        load("wan", path)


def test_tile_frames_lays_frames_out_row_by_row():
    video = torch.arange(5.0).view(1, 1, 5, 1, 1).expand(1, 3, 5, 2, 2)
    sheet = tile_frames(video)
    assert sheet.shape == (1, 3, 4, 6)  # 3 per row, 2 rows
    assert sheet[0, 0, ::2, ::2].tolist() == [[0.0, 1.0, 2.0], [3.0, 4.0, -1.0]]


def test_wan_decode_is_one_tiled_image_per_clip(tiny):
    backend = load("wan", tiny("wan"))
    images = backend.decode(torch.randn(2, *backend.latent_shape))
    assert images.shape == (2, 3, 2 * 32, 3 * 32)  # 5 frames: 3 per row, 2 rows


def test_lumina2_negative_prompt_has_no_system_prompt(tiny):
    backend = load("lumina2", tiny("lumina2"), negative_prompt="blurry")
    cond = backend.encode(["a red apple"])
    pos, _, neg, _ = backend.pipe.encode_prompt("a red apple", negative_prompt="blurry", do_classifier_free_guidance=True,
                                                device="cpu", max_sequence_length=backend.adapter.max_sequence_length)
    assert torch.equal(cond["prompt_embeds"], pos) and torch.equal(cond["negative_prompt_embeds"], neg)


@pytest.mark.parametrize(("family", "options", "cfg"), [
    ("z-image", {"guidance_scale": 3.0}, True),   # Z-Image: CFG whenever g > 0
    ("flux2-klein", {"guidance_scale": 1.0}, False),
])
def test_guidance_switches_match_the_pipeline(tiny, family, options, cfg):
    backend = load(family, tiny(family), **options)
    assert backend.do_cfg is cfg
    report = check_ode_parity(backend, conformance.reference_sampler(backend), conformance.PROMPTS[:1], 3,
                              backend.adapter.parity_atol)
    assert report["sample_max"] > 0.1
