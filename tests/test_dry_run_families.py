"""``treesdk train --dry-run`` plans every family ``treesdk tiny --list`` names, from its tiny pipeline
folder: the call counts of the recipe, and the size facts the family declares (read from headers)."""

from __future__ import annotations

import json
import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
from safetensors import safe_open
from typer.testing import CliRunner

from diffusers_fixtures import single_thread
from treesdk.recipes import load_recipe
from treesdk.training.plan import plan_run
from treesdk_backends.tiny import FAMILIES, build_tiny
from treesdk_cli.main import app

runner = CliRunner()
ARGS = ["--steps", "4", "--k", "2", "--d", "2", "--batch", "2", "--iters", "1"]


def _elements(folder) -> int:
    total = 0
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), "pt") as f:
            total += sum(math.prod(f.get_slice(key).get_shape()) for key in f.keys())
    return total


def test_the_family_list_is_the_tiny_list():
    result = runner.invoke(app, ["tiny", "--list"])
    assert result.exit_code == 0, result.output
    assert result.output.split() == list(FAMILIES) and len(FAMILIES) >= 10


@pytest.mark.parametrize("family", list(FAMILIES))
def test_dry_run_plans_the_tiny_pipeline_of_every_family(family, tmp_path):
    with single_thread():
        folder = build_tiny(family, tmp_path / family)
    result = runner.invoke(app, ["train", "--backend", "diffusers", "--model", str(folder), "--dry-run", "--json", *ARGS])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    calls = plan_run(load_recipe("treegrpo", steps=4, **{"tree.k": 2, "tree.d": 2}), None, batch=2, iters=1)
    assert [r["nfe_sampling"] for r in plan["iterations"]] == [r["nfe_sampling"] for r in calls["iterations"]]
    assert plan["nfe_training"] == calls["nfe_training"] > 0 and plan["leaves_per_prompt"] == 4
    assert plan["memory"] is not None, plan.get("memory_note")
    model, defaults = plan["model"], FAMILIES[family].backend_defaults
    # the size facts are the folder's: exact parameter counts, its default resolution and text length
    assert model["transformer_parameters"] > 0
    assert model["transformer_parameters"] <= _elements(folder / "transformer")  # buffers are not parameters
    assert model["vae_parameters"] == _elements(folder / "vae") > 0
    assert model["resolution"] == defaults["resolution"] and model["image_tokens"] > 0
    if "max_sequence_length" in defaults:  # SD3 attends over its 77 CLIP tokens too
        assert defaults["max_sequence_length"] <= model["text_tokens"] <= defaults["max_sequence_length"] + 77
    memory = plan["memory"]
    assert all(value >= 0 for key, value in memory.items() if key != "notes")
    assert 0 < memory["peak"] == max(memory["peak_training"], memory["peak_sampling"], memory["peak_decode"])
    assert memory["peak"] >= memory["weights_transformer"]
