"""``treesdk train --dry-run [--json] [--gpu-memory GB]``: the plan without loading the model."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
from typer.testing import CliRunner

from diffusers_fixtures import TINY_RESOLUTION, tiny_flux_path  # noqa: F401 - pytest fixture
from treesdk.training.loop.plan import plan_run
from treesdk.recipes import load_recipe
from treesdk_cli.main import app

runner = CliRunner()


def test_dry_run_json_on_flux_loads_no_weights(tiny_flux_path, monkeypatch):
    from diffusers import FluxPipeline

    def refuse(*_a, **_kw):
        raise AssertionError("--dry-run loaded the pipeline")

    monkeypatch.setattr(FluxPipeline, "from_pretrained", refuse)
    result = runner.invoke(app, [
        "train", "--backend", "flux", "--model", str(tiny_flux_path), "--resolution", str(TINY_RESOLUTION),
        "--steps", "4", "--k", "2", "--d", "2", "--batch", "3", "--iters", "2", "--dry-run", "--json",
        "--gpu-memory", "1", "--backend-opt", "max_sequence_length=16", "--backend-opt", "lora_rank=4",
    ])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    expected = plan_run(load_recipe("treegrpo", steps=4, **{"tree.k": 2, "tree.d": 2}), None, batch=3, iters=2)
    assert [r["nfe_sampling"] for r in plan["iterations"]] == [r["nfe_sampling"] for r in expected["iterations"]]
    assert plan["nfe_training"] == expected["nfe_training"] and plan["leaves_per_prompt"] == 4
    assert plan["model"]["text_tokens"] == 16 and plan["model"]["lora_rank"] == 4
    assert plan["memory"]["peak"] > 0 and plan["fits"] is True  # a tiny model fits in 1 GiB
    assert not list(tiny_flux_path.parent.glob("runs"))


def test_dry_run_table_for_digits_and_flux_dev(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["train", "--backend", "digits", "--dry-run", "--batch", "4"])
    assert result.exit_code == 0, result.output
    assert "sampling" in result.output and "training" in result.output
    result = runner.invoke(app, ["train", "--backend", "flux", "--algo", "dynamic-treerpo", "--dry-run", "--resolution",
                                 "1024", "--batch", "16", "--nproc-per-node", "8", "--gpu-memory", "80"])
    assert result.exit_code == 0, result.output
    assert "FLUX.1-dev" in result.output and "does not fit" in result.output  # no checkpointing at 1024 px
    assert not (tmp_path / "runs").exists()


def test_dry_run_of_a_family_without_size_table_plans_calls_only(tmp_path):
    (tmp_path / "transformer").mkdir()
    (tmp_path / "transformer" / "config.json").write_text('{"_class_name": "QwenImageTransformer2DModel"}')
    result = runner.invoke(app, ["train", "--backend", "flux", "--model", str(tmp_path), "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    assert plan["memory"] is None and "QwenImageTransformer2DModel" in plan["memory_note"] and plan["nfe_sampling"] > 0


def test_dry_run_json_needs_dry_run():
    result = runner.invoke(app, ["train", "--backend", "digits", "--json"])
    assert result.exit_code != 0
    assert "--json" in result.output and "--dry-run" in result.output


@pytest.mark.parametrize("flag", [["--gpu-memory", "0"], ["--gpu-memory", "-3"]])
def test_dry_run_rejects_bad_gpu_memory(flag):
    result = runner.invoke(app, ["train", "--backend", "digits", "--dry-run", *flag])
    assert result.exit_code != 0 and "--gpu-memory" in result.output


def test_dry_run_takes_train_and_decode_chunks_from_set():
    result = runner.invoke(app, ["train", "--backend", "digits", "--dry-run", "--json", "--batch", "3", "--steps", "5",
                                 "--set", "chunk=5", "--set", "train_chunk=2", "--set", "decode_chunk=3"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    assert (plan["chunk"], plan["train_chunk"], plan["decode_chunk"]) == (5, 2, 3)
    wide = json.loads(runner.invoke(app, ["train", "--backend", "digits", "--dry-run", "--json", "--batch", "3",
                                          "--steps", "5", "--set", "chunk=5"]).output)
    assert plan["calls_sampling"] == wide["calls_sampling"] and plan["calls_training"] > wide["calls_training"]
    bad = runner.invoke(app, ["train", "--backend", "digits", "--dry-run", "--set", "train_chunk=0"])
    assert bad.exit_code != 0 and "train_chunk" in bad.output


@pytest.fixture(scope="module")
def tiny_families(tmp_path_factory):
    """Every family of ``treesdk tiny --list`` built once: name -> (folder, TinyFamily)."""
    from diffusers_fixtures import single_thread
    from treesdk_backends.tiny import FAMILIES

    root = tmp_path_factory.mktemp("tiny-families")
    with single_thread():
        return {name: (family(root / name), family) for name, family in FAMILIES.items()}


def _tiny_family_names() -> list[str]:
    result = runner.invoke(app, ["tiny", "--list"])
    assert result.exit_code == 0, result.output
    return result.output.split()


@pytest.mark.parametrize("name", _tiny_family_names())
def test_dry_run_plans_every_tiny_family_with_the_sizes_of_the_loaded_model(name, tiny_families):
    """Each family declares its planner facts (through its adapter): --dry-run estimates memory for
    all of them, and the sizes it reads from the folder's headers equal the model diffusers loads."""
    import math

    import treesdk
    from diffusers_fixtures import single_thread

    folder, family = tiny_families[name]
    kwargs = dict(family.call_kwargs)
    resolution = kwargs.pop("height")
    kwargs.pop("width", None)
    flags = [f for key, value in kwargs.items() for f in ("--backend-opt", f"{key}={value}")]
    result = runner.invoke(app, ["train", "--backend", name, "--model", str(folder), "--resolution", str(resolution),
                                 "--steps", "4", "--k", "2", "--d", "2", "--batch", "2", "--dry-run", "--json",
                                 "--backend-opt", "lora_rank=2", *flags])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    assert plan["memory"] is not None and plan["memory"]["peak"] > 0, plan.get("memory_note")
    with single_thread():
        backend = treesdk.load_backend(name, model=str(folder), resolution=resolution, device="cpu", dtype="float32",
                                       lora_rank=2, **kwargs)
    stored = backend.transformer.state_dict()
    base = sum(p.numel() for n, p in backend.transformer.named_parameters() if "lora_" not in n)
    assert plan["model"]["transformer_parameters"] == base
    assert plan["model"]["cfg"] is backend.do_cfg
    from treesdk.model_facts import lora_parameters, model_facts

    facts = model_facts(name, folder, text_tokens=kwargs.get("max_sequence_length"), options=kwargs)
    assert lora_parameters(facts.linears, 2, facts.lora_targets) == sum(p.numel() for p in backend.trainable_parameters())
    assert facts.transformer_buffers == sum(b.numel() for n, b in backend.transformer.named_buffers() if n in stored)
    assert facts.latent_elements(resolution) == math.prod(backend.latent_shape)
    # without flags the plan is of the run the folder's defaults (treesdk_defaults.json) describe, as loading applies them
    plain = runner.invoke(app, ["train", "--backend", "diffusers", "--model", str(folder), "--steps", "4", "--k", "2",
                                "--d", "2", "--batch", "2", "--dry-run", "--json"])
    assert plain.exit_code == 0, plain.output
    model, defaults = json.loads(plain.output)["model"], family.backend_defaults
    assert model["resolution"] == defaults["resolution"] and model["transformer_parameters"] == base
    if "max_sequence_length" in defaults:  # SD3 attends over its 77 CLIP tokens too
        assert defaults["max_sequence_length"] <= model["text_tokens"] <= defaults["max_sequence_length"] + 77
