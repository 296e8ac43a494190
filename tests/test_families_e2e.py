"""Every family beyond FLUX.1 / SD3 end to end through the user's commands, on its tiny pipeline:

``treesdk tiny --family F --out DIR`` -> ``treesdk train --backend diffusers --model DIR --algo
treegrpo --k 3 --d 3`` -> ``treesdk sample`` / ``treesdk eval`` of the run -> ``treesdk export
--format lora`` -> the family's own pipeline ``load_lora_weights`` with no unmatched key.

Per-contract checks (ODE parity with the pipeline, batch invariance, adapter on/off, NFE, export
values) are the conformance suite's (``tests/test_conformance.py``); this module proves the
commands users run work for every family.
"""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

pytest.importorskip("diffusers")
pytest.importorskip("peft")

import diffusers
from safetensors.torch import load_file
from typer.testing import CliRunner

from diffusers_fixtures import single_thread
from treesdk_backends.tiny import FAMILIES
from treesdk_cli.main import app

#: the families with their own adapter beyond FLUX.1-dev and SD3 (those have their own tests)
NEW_FAMILIES = ["flux-schnell", "flux2", "flux2-klein", "qwen-image", "z-image", "chroma", "lumina2", "wan"]


def cli_options(family: str) -> list[str]:
    """``--resolution`` and ``--backend-opt`` flags for the tiny ``family`` (fp32, rank-4 LoRA, its
    text length and frames)."""
    kwargs = dict(FAMILIES[family].call_kwargs)
    options = ["--resolution", str(kwargs.pop("height")), "--device", "cpu"]
    kwargs.pop("width")
    for key, value in {"dtype": "float32", "lora_rank": 4, **kwargs}.items():
        options += ["--backend-opt", f"{key}={value}"]
    return options


def invoke(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_every_tiny_family_has_an_adapter():
    from treesdk_backends.diffusers import family_names

    assert set(FAMILIES) <= set(family_names())
    assert set(NEW_FAMILIES) | {"flux", "sd3"} == set(FAMILIES)


@pytest.mark.parametrize("family", NEW_FAMILIES)
def test_tiny_train_sample_eval_export_load(family, tmp_path):
    model, run = tmp_path / "model", tmp_path / "run"
    with single_thread():
        invoke("tiny", "--family", family, "--out", str(model))
        invoke("train", "--backend", "diffusers", "--model", str(model), "--algo", "treegrpo", "--k", "3", "--d", "3",
               "--steps", "4", "--iters", "2", "--batch", "1", "--reward", "jpeg-compressibility", "--lr", "1e-2",
               "--out", str(run), *cli_options(family))
        lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        train = [line for line in lines if not line.get("eval")]
        assert len(train) == 2 and all(line["leaves"] == 27 for line in train)
        config = json.loads((run / "config.json").read_text())
        assert config["backend"]["describe"]["family"] == family

        invoke("sample", "--run", str(run), "--prompt", "a red apple", "--seeds", "2", "--steps", "3",
               "--out", str(tmp_path / "grid.png"))
        assert (tmp_path / "grid.png").stat().st_size > 0
        invoke("eval", str(run), "--reward", "jpeg-compressibility", "--seeds", "1", "--steps", "3",
               "--json", str(tmp_path / "eval.json"))
        assert "jpeg-compressibility" in (tmp_path / "eval.json").read_text()

        lora = tmp_path / "lora.safetensors"
        invoke("export", str(run), "--format", "lora", "--out", str(lora))
        written = {k.removeprefix("transformer."): v for k, v in load_file(lora).items()}
        pipe = getattr(diffusers, FAMILIES[family].pipeline).from_pretrained(model)
        pipe.load_lora_weights(str(lora), adapter_name="treesdk")

    from peft.utils import get_peft_model_state_dict

    loaded = get_peft_model_state_dict(pipe.transformer, adapter_name="treesdk")
    assert written and set(written) == set(loaded)
    assert any(float(v.abs().max()) > 0 for k, v in written.items() if "lora_B" in k)  # training moved it
