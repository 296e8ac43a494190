"""``treesdk train`` first-class flags do what they say; bad keys and names are one-line errors before
any model is loaded; the tiny FLUX run with --lora-rank/--lora-alpha/--lora-targets exports that adapter."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from diffusers_fixtures import TINY_MAX_SEQUENCE_LENGTH, TINY_RESOLUTION, tiny_flux_path  # noqa: E402,F401
from typer.testing import CliRunner  # noqa: E402

from treesdk_cli.main import app  # noqa: E402

runner = CliRunner()


def _one_line_error(result) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and "error:" in result.output
    return " ".join(result.output[result.output.index("error:"):].split())  # rich wraps long lines


def test_unknown_backend_and_reward_option_keys_list_valid_keys_closest_first(tmp_path):
    text = _one_line_error(runner.invoke(app, ["train", "--backend-opt", "guidance_scal=2", "--out", str(tmp_path / "a")]))
    assert "backend 'digits' has no option 'guidance_scal'; its options are (closest first): guidance_scale," in text
    text = _one_line_error(runner.invoke(app, ["train", "--reward-opt", "digit-classifier:devise=cpu",
                                               "--out", str(tmp_path / "b")]))
    assert "reward 'digit-classifier' has no option 'devise'; its options are (closest first): device" in text


def test_flags_the_backend_lacks_and_bad_names_fail_before_training(tmp_path):
    assert "--lora-rank: backend 'digits' has no lora_rank option" in _one_line_error(
        runner.invoke(app, ["train", "--lora-rank", "4", "--out", str(tmp_path / "a")]))
    assert "unknown logger 'tensorbord'" in _one_line_error(
        runner.invoke(app, ["train", "--report-to", "tensorbord", "--out", str(tmp_path / "b")]))
    assert "--precision 'fp8'" in _one_line_error(
        runner.invoke(app, ["train", "--precision", "fp8", "--iters", "1", "--out", str(tmp_path / "c")]))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_guidance_flag_and_prompt_file_reach_the_run(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"caption": f"the digit {d}"}) + "\n" for d in ("three", "seven")))
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", "--iters", "1", "--batch", "2", "--cfg", "1.5", "--prompts", str(prompts),
                                 "--prompt-column", "caption", "--optimizer", "sgd", "--lr-schedule", "linear",
                                 "--report-to", "jsonl", "--out", str(out)])
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert config["backend"]["options"]["guidance_scale"] == 1.5
    assert config["recipe"]["optim"]["optimizer"] == "sgd" and config["recipe"]["optim"]["lr_schedule"] == "linear"
    assert not (out / "tb").exists()


def test_tiny_flux_lora_flags_set_the_exported_adapter(tiny_flux_path, tmp_path):  # noqa: F811
    from treesdk.export_files import check_file

    out = tmp_path / "run"
    result = runner.invoke(app, [
        "train", "--backend", "flux", "--model", str(tiny_flux_path), "--algo", "grpo", "--set", "tree.roots=2",
        "--steps", "2", "--iters", "1", "--batch", "1", "--reward", "jpeg-compressibility",
        "--resolution", str(TINY_RESOLUTION), "--device", "cpu", "--dtype", "float32",
        "--max-sequence-length", str(TINY_MAX_SEQUENCE_LENGTH), "--lora-rank", "2", "--lora-alpha", "4",
        "--lora-targets", "attn.to_q,attn.to_v", "--gradient-checkpointing", "--guidance", "2.0",
        "--report-to", "none", "--out", str(out),
    ])
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    described = config["backend"]["describe"]
    assert described["lora"] == {"rank": 2, "alpha": 4.0, "target_modules": ["attn.to_q", "attn.to_v"]}
    assert described["gradient_checkpointing"] is True
    assert config["backend"]["options"]["guidance"] == 2.0
    (lora,) = (out / "export").glob("*.safetensors")
    report = check_file(lora)
    assert report.rank == 2
    assert {m.rsplit(".", 1)[-1] for m in report.modules} == {"to_q", "to_v"}
    assert (out / "export" / "README.md").is_file()


def test_the_new_settings_round_trip_through_config_json(tmp_path):
    """A run's config.json holds every new setting; training again from it repeats the run."""
    from treesdk.training.config import read_run_config

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"caption": f"the digit {d}"}) + "\n" for d in ("three", "seven")))
    first, second = tmp_path / "first", tmp_path / "second"
    result = runner.invoke(app, [
        "train", "--iters", "2", "--batch", "2", "--set", "tree.k=2", "--set", "tree.d=2", "--steps", "4",
        "--cfg", "1.5", "--prompts", str(prompts), "--prompt-column", "caption", "--optimizer", "sgd",
        "--lr-schedule", "cosine", "--lr-warmup", "1", "--ema-decay", "0.5", "--ema-use", "eval",
        "--report-to", "jsonl", "--eval-every", "1", "--precision", "bf16", "--export-format", "none", "--out", str(first),
    ])
    assert result.exit_code == 0, result.output
    stored = read_run_config(first)
    assert stored.backend.options["guidance_scale"] == 1.5 and stored.precision == "bf16"
    assert stored.prompts.column == "caption" and stored.ema.decay == 0.5 and stored.ema.use == "eval"
    assert stored.logging.report_to == ["jsonl"] and stored.logging.eval_every == 1
    assert stored.recipe.optim.optimizer == "sgd" and stored.recipe.optim.lr_schedule == "cosine"
    again = runner.invoke(app, ["train", "--config", str(first / "config.json"), "--out", str(second)])
    assert again.exit_code == 0, again.output

    def rows(run):
        noisy = ("seconds", "seconds_sampling", "seconds_reward", "seconds_training")
        return [{k: v for k, v in json.loads(line).items() if k not in noisy}
                for line in (run / "metrics.jsonl").read_text().splitlines()]

    assert rows(first) == rows(second)
    assert [r["tag"] for r in rows(first) if r.get("eval")] == ["start", "iter_1", "end"]
    assert read_run_config(second) == stored
