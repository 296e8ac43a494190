"""First-class flags -> backend options, and one-line errors for unknown option keys (treesdk_cli.flags)."""

from __future__ import annotations

import pytest

from treesdk_cli.flags import apply_first_class, check_option_keys

FLUX_LIKE = {"model", "resolution", "device", "dtype", "guidance", "lora_rank", "lora_alpha", "lora_targets",
             "gradient_checkpointing", "max_sequence_length"}
SD3_LIKE = (FLUX_LIKE - {"guidance"}) | {"guidance_scale"}


def test_flags_map_to_the_option_the_backend_takes():
    opts = apply_first_class({}, FLUX_LIKE, "flux", lora_rank=32, lora_alpha=16.0, guidance=4.0,
                             lora_targets=["attn.to_q,attn.to_k"], gradient_checkpointing=True, max_sequence_length=64)
    assert opts == {"lora_rank": 32, "lora_alpha": 16.0, "guidance": 4.0, "lora_targets": ["attn.to_q", "attn.to_k"],
                    "gradient_checkpointing": True, "max_sequence_length": 64}
    assert apply_first_class({}, SD3_LIKE, "sd3", guidance=7.0) == {"guidance_scale": 7.0}
    assert apply_first_class({"lora_rank": 8}, FLUX_LIKE, "flux", lora_rank=32) == {"lora_rank": 8}  # --backend-opt wins
    assert apply_first_class({}, FLUX_LIKE, "flux", lora_rank=None) == {}


def test_a_flag_the_backend_lacks_is_a_one_line_error():
    with pytest.raises(ValueError, match="--lora-rank: backend 'digits' has no lora_rank option"):
        apply_first_class({}, {"model", "dtype", "guidance_scale"}, "digits", lora_rank=4)


def test_unknown_option_keys_list_valid_keys_closest_first():
    with pytest.raises(ValueError, match=r"--backend-opt lora_rnak=\.\.\.: backend 'flux' has no option 'lora_rnak'; "
                                         r"its options are \(closest first\): lora_rank, "):
        check_option_keys("--backend-opt", "backend 'flux'", {"lora_rnak": 8}, FLUX_LIKE)
    check_option_keys("--backend-opt", "backend 'flux'", {"lora_rank": 8}, FLUX_LIKE)
    check_option_keys("--backend-opt", "backend 'x'", {"anything": 1}, None)


def test_plugins_verbose_documents_every_backend_and_reward_option():
    import json

    from typer.testing import CliRunner

    from treesdk_cli.main import app

    result = CliRunner().invoke(app, ["plugins", "--verbose", "--json", "--kind", "backend", "--kind", "reward"])
    assert result.exit_code == 0, result.output
    rows = {(r["kind"], r["name"]): r for r in json.loads(result.output)}
    digits = rows[("backend", "digits")]["options"]
    assert digits["guidance_scale"]["default"] == 1.0 and "classifier-free" in digits["guidance_scale"]["description"]
    flux = rows[("backend", "flux")]["options"]
    assert {"lora_rank", "lora_alpha", "lora_targets", "gradient_checkpointing", "guidance", "max_sequence_length"} <= set(flux)
    assert all(info["description"] for info in flux.values())  # every option has a description (bases', family's)
    assert "checkpoint" in rows[("reward", "hpsv2")]["options"]
    table = CliRunner().invoke(app, ["plugins", "--verbose", "--kind", "backend"])
    assert table.exit_code == 0 and "backend sd3: options" in table.output
