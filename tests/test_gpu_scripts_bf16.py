"""The GPU scripts' bfloat16 path on a CPU, on tiny models: ``benchmarks/flux_step.py`` and
``benchmarks/profile_iteration.py`` run bf16 weights with float32 LoRA, as they would on CUDA."""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from diffusers_fixtures import TINY_MAX_SEQUENCE_LENGTH, TINY_RESOLUTION, single_thread, tiny_flux_path  # noqa: F401

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def test_flux_step_bf16_weights_with_float32_lora(tmp_path):
    import flux_step

    with single_thread():
        result = flux_step.main(["--tiny", "--dtype", "bfloat16", "--batch", "2", "--k", "2", "--warmup", "1",
                                 "--iters", "1", "--json", str(tmp_path / "step.json")])
    assert result["weights_dtype"] == ["bfloat16"] and result["trainable_dtype"] == ["float32"]
    peak = result["peak_memory_allocated_gib"] if "peak_memory_allocated_gib" in result else result["peak_rss_gib"]  # CUDA / CPU
    assert result["seconds_per_train_step_median"] > 0 and peak > 0
    assert result["last_loss"] == result["last_loss"]  # finite, not NaN
    assert (tmp_path / "step.json").is_file()


def test_profile_iteration_bf16_path(tiny_flux_path, tmp_path):
    import profile_iteration

    with single_thread():
        result = profile_iteration.main([
            "--model", str(tiny_flux_path), "--resolution", str(TINY_RESOLUTION), "--text-tokens",
            str(TINY_MAX_SEQUENCE_LENGTH), "--k", "2", "--d", "2", "--steps", "3", "--window-start", "1",
            "--chunk", "3", "--train-chunk", "2", "--decode-chunk", "2", "--lora-rank", "2", "--dtype", "bfloat16",
        ])
    assert result["weights_dtype"] == ["bfloat16"] and result["trainable_dtype"] == ["float32"]
    assert result["train_chunk"] == 2 and result["decode_chunk"] == 2
    assert result["transformer_calls"] == result["plan"]["calls_sampling"] + result["plan"]["calls_training"]
    assert result["bare"]["bare_training_transformer_rows"] == result["nfe_training"]
    for phase in ("sample", "training"):
        assert result["phases"][phase]["seconds"] > 0
