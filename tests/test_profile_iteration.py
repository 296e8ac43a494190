"""``benchmarks/profile_iteration.py`` runs on the tiny FLUX and accounts for every transformer call."""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from diffusers_fixtures import TINY_MAX_SEQUENCE_LENGTH, TINY_RESOLUTION, single_thread, tiny_flux_path  # noqa: F401

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def test_profile_runs_and_counts_every_transformer_call(tiny_flux_path, tmp_path):
    import profile_iteration

    with single_thread():
        result = profile_iteration.main([
            "--model", str(tiny_flux_path), "--resolution", str(TINY_RESOLUTION), "--text-tokens",
            str(TINY_MAX_SEQUENCE_LENGTH), "--k", "2", "--d", "2", "--steps", "3", "--window-start", "1",
            "--chunk", "3", "--json", str(tmp_path / "profile.json"), "--lora-rank", "2",
        ])
    phases = result["phases"]
    for name in ("encode", "sample", "decode", "reward", "advantages", "training", "checkpoint"):
        assert phases[name]["seconds"] > 0 and phases[name]["peak_gib"] > 0
    plan = result["plan"]
    assert result["transformer_calls"] == plan["calls_sampling"] + plan["calls_training"]
    assert result["bare"]["bare_sampling_transformer_rows"] == plan["nfe_sampling"] == result["nfe_sampling"]
    assert result["bare"]["bare_training_transformer_rows"] == plan["nfe_training"] == result["nfe_training"]
    assert set(result["overhead"]) == {"sample", "training", "core", "iteration"}
    assert (tmp_path / "profile.json").is_file()
