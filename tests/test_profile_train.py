"""``treesdk train --profile``: seconds and peak memory per phase in every metrics.jsonl line, and a table."""

from __future__ import annotations

import json

import torch
from typer.testing import CliRunner

import treesdk
from treesdk.recipes import load_recipe
from treesdk.training.run_folder.profiling import PHASES, PhaseProfiler
from treesdk import train
from treesdk_cli.main import app

runner = CliRunner()
STEP_PHASES = ("encode", "sample", "decode", "reward", "advantages", "training", "optimizer")


def test_train_profile_writes_every_phase_per_iteration_and_a_table(tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", "--iters", "2", "--batch", "2", "--steps", "4", "--d", "2", "--out", str(out),
                                 "--checkpoint-every", "1", "--report-to", "none", "--export-format", "none",
                                 "--profile"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if not r.get("eval")]
    assert [r["iteration"] for r in train_rows] == [1, 2]
    for r in train_rows:
        profile = r["profile"]
        assert set(STEP_PHASES) <= set(profile) <= set(PHASES)
        for phase in profile.values():
            assert set(phase) == {"seconds", "peak_gib"} and phase["seconds"] >= 0 and phase["peak_gib"] > 0
        # the phases run inside the iteration's own clock and never overlap
        assert sum(profile[p]["seconds"] for p in STEP_PHASES) <= r["seconds"]
    # a line is written before its iteration's checkpoint: iteration 2's holds iteration 1's
    assert "checkpoint" not in train_rows[0]["profile"] and "checkpoint" in train_rows[1]["profile"]
    for word in ("profile", "phase", "mean s", "share %", "peak GiB", *PHASES):
        assert word in result.output


def test_no_profile_field_without_the_flag():
    backend = treesdk.load_backend("digits", device="cpu")
    rewards = {"digit-classifier": treesdk.load_reward("digit-classifier", device="cpu")}
    run = train(load_recipe("treegrpo", steps=4, **{"tree.d": 2}), backend, rewards, ["a handwritten digit 3"],
                iters=1, batch=1)
    assert run.history and "profile" not in run.history[0]


def test_nested_phase_pauses_the_outer_one():
    profiler = PhaseProfiler("cpu")
    inner = []
    profiler.run("training", lambda: profiler.run("optimizer", lambda: inner.append(torch.ones(4).sum())))
    taken = profiler.take()
    assert list(taken) == ["training", "optimizer"] and inner
    rows = profiler.summary()
    assert [r[0] for r in rows] == ["training", "optimizer"]
    assert abs(sum(r[2] for r in rows) - 100.0) < 1e-6  # shares of the profiled time
    disabled = PhaseProfiler("cpu", enabled=False)
    assert disabled.run("sample", lambda x: x + 1, 1) == 2 and disabled.summary() == []
