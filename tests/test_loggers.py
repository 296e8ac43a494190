"""Loggers (treesdk.training.run_folder.loggers): jsonl cut on resume, TensorBoard scalars/images/histograms read back,
wandb in offline mode, --report-to parsing; and the live progress display (treesdk.training.run_folder.progress)."""

from __future__ import annotations

import io
import json

import pytest
import torch

from treesdk.training.run_folder.loggers import build_loggers, parse_report_to, wandb_mode


def test_report_to_parsing_and_closest_first_errors():
    assert parse_report_to(None) == ["jsonl", "tensorboard"]
    assert parse_report_to("tensorboard,wandb") == ["tensorboard", "wandb"]
    assert parse_report_to(["jsonl", "jsonl,wandb"]) == ["jsonl", "wandb"]
    assert parse_report_to("none") == []
    assert parse_report_to("all") == ["jsonl", "tensorboard", "wandb"]
    with pytest.raises(ValueError, match=r"unknown logger 'tensorbord'; valid \(closest first\): tensorboard, "):
        parse_report_to("jsonl,tensorbord")


def test_jsonl_is_cut_at_the_checkpoint_on_resume(tmp_path):
    logs = build_loggers("jsonl", tmp_path)
    for i in range(1, 5):
        logs.log_metrics({"iteration": i, "reward_mean": 0.1 * i}, i)
    logs.close()
    build_loggers("jsonl", tmp_path, resume_from=2).close()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [1, 2]


def test_tensorboard_gets_scalars_images_and_histograms(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logs = build_loggers("tensorboard", tmp_path)
    logs.log_metrics({"iteration": 1, "reward_mean": 0.5, "eval": False}, 1)
    logs.log_metrics({"iteration": 1, "digit_mean": 0.7, "eval": True, "tag": "iter_1"}, 1)
    logs.log_images("samples", torch.rand(3, 8, 12), 1)
    logs.log_histogram("rewards/leaf", torch.tensor([0.1, 0.5, 0.9, 0.2]), 1)
    logs.close()
    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0, "histograms": 0}).Reload()
    tags = acc.Tags()
    assert "train/reward_mean" in tags["scalars"] and "eval/digit_mean" in tags["scalars"]
    assert tags["images"] == ["samples"]
    image = acc.Images("samples")[0]
    assert (image.width, image.height) == (12, 8)
    histogram = acc.Histograms("rewards/leaf")[0].histogram_value
    assert histogram.num == 4 and histogram.max == pytest.approx(0.9)


def test_wandb_offline_needs_no_network(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    logs = build_loggers("wandb", tmp_path, config={"iters": 2})
    logs.log_metrics({"iteration": 1, "reward_mean": 0.5}, 1)
    logs.log_images("samples", torch.rand(3, 8, 8), 1)
    logs.log_histogram("rewards/leaf", torch.rand(16), 1)
    logs.close()
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].glob("*.wandb"))


def test_wandb_mode_defaults_offline_without_a_key(tmp_path):
    assert wandb_mode({"NETRC": str(tmp_path / "none")}) == "offline"
    assert wandb_mode({"WANDB_API_KEY": "x"}) == "online"
    assert wandb_mode({"WANDB_MODE": "disabled", "WANDB_API_KEY": "x"}) == "disabled"


def test_progress_shows_phases_inside_the_iteration():
    from rich.console import Console

    from treesdk.training.run_folder.progress import TrainProgress

    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=140)
    with TrainProgress(iters=2, console=console) as progress:
        progress.on_step("sampling", 3, 10)
        assert progress.progress.tasks[1].description.strip() == "sampling steps"
        assert progress.progress.tasks[1].completed == 3
        progress.on_step("optimizer", 1, 4)
        assert progress.progress.tasks[1].description.strip() == "optimiser steps"
        assert progress.progress.tasks[1].total == 4
        progress.on_iteration({"iteration": 1, "reward_mean": 0.25, "nfe_sampling": 40, "nfe_training": 30,
                               "seconds": 1.5, "lr": 1e-4})
        assert progress.progress.tasks[0].completed == 1
    text = out.getvalue()
    assert "training" in text and "reward 0.250" in text and "lr 1.0e-04" in text


def test_summary_table_lists_before_after_and_change():
    from types import SimpleNamespace

    from rich.console import Console

    from treesdk.training.run_folder.progress import print_summary

    run = SimpleNamespace(iterations=3, eval_before={"digit_mean": 0.5}, eval_after={"digit_mean": 0.75},
                          out_dir="runs/x", exported=["runs/x/export/a.safetensors"], interrupted=False)
    out = io.StringIO()
    print_summary(run, Console(file=out, width=100))
    text = out.getvalue()
    assert "digit" in text and "0.5000" in text and "0.7500" in text and "+0.2500" in text and "a.safetensors" in text


def test_metrics_jsonl_is_always_written(tmp_path):
    logs = build_loggers("none", tmp_path)
    logs.log_metrics({"iteration": 1, "reward_mean": 0.5}, 1)
    logs.close()
    assert (tmp_path / "metrics.jsonl").is_file() and not (tmp_path / "tb").exists()
