"""The built-in digits pipeline end to end: train, sample, eval, bench on tiny budgets."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

import treesdk
from treesdk_cli.bench_runner import first_crossing, run_bench
from treesdk_cli.main import app

runner = CliRunner()


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    result = runner.invoke(app, ["train", "--iters", "3", "--batch", "4", "--out", str(out), "--seed", "1"])
    assert result.exit_code == 0, result.output
    return out, result.output


def test_train_writes_the_whole_run_folder(trained_run):
    out, output = trained_run
    assert "before" in output and "digit-evaluator" in output  # the summary table
    for path in ("config.json", "metrics.jsonl", "samples/start.png", "samples/end.png", "export/digits.safetensors"):
        assert (out / path).is_file(), path
    assert list((out / "tb").iterdir())
    assert list((out / "checkpoints").iterdir())
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if r.get("eval")]
    assert [r["tag"] for r in evals] == ["start", "end"]
    assert {"digit-classifier_mean", "digit-evaluator_mean"} <= set(evals[0])
    train_rows = [r for r in rows if not r.get("eval")]
    assert [r["iteration"] for r in train_rows] == [1, 2, 3]
    # the default tree-nft on digits: 3 roots, k=2, d=3, T=10 -> per root s + 7 + 8 (7 - s) sampling
    # evaluations; each of the 24 leaves trained at 9 of the 10 grid levels, with the old policy and the reference
    for r in train_rows:
        assert r["nfe_sampling"] == 4 * 3 * (r["window_start"] + 7 + 8 * (7 - r["window_start"]))
        assert r["nfe_training"] == 4 * 24 * 9 and r["nfe_reference"] == 2 * r["nfe_training"]


def test_sample_and_eval_a_trained_run(trained_run, tmp_path):
    out, _ = trained_run
    grid = tmp_path / "grid.png"
    result = runner.invoke(app, ["sample", "--run", str(out), "--prompt", "the digit seven", "--seeds", "3", "--out", str(grid)])
    assert result.exit_code == 0, result.output
    assert grid.is_file()
    js = tmp_path / "eval.json"
    result = runner.invoke(app, ["eval", str(out), "--json", str(js)])
    assert result.exit_code == 0, result.output
    data = json.loads(js.read_text())
    ends = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"tag": "end"' in line]
    assert data["digit-evaluator_mean"] == pytest.approx(ends[0]["digit-evaluator_mean"], abs=1e-6)
    assert data["diversity"] == pytest.approx(ends[0]["diversity"], rel=1e-6) and data["diversity_features"] == "digit-evaluator"
    assert data["diversity_pixels"] == pytest.approx(ends[0]["diversity_pixels"], rel=1e-6) and "diversity (pixels)" in result.output
    # fidelity and coverage against the real digits, in the JSON, the table and the run's end line alike
    assert data["precision"] == pytest.approx(ends[0]["precision"]) and data["recall"] == pytest.approx(ends[0]["recall"])
    assert 0.0 <= data["precision"] <= 1.0 and 0.0 < data["recall"] <= 1.0
    assert "precision (vs reference images)" in result.output and "recall (vs reference images)" in result.output


def test_bad_inputs_are_one_line_errors(tmp_path):
    result = runner.invoke(app, ["train", "--k", "0", "--out", str(tmp_path / "x")])
    assert result.exit_code == 1 and "tree.k" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["sample", "--prompt", "a cat on a mat", "--out", str(tmp_path / "y.png")])
    assert result.exit_code == 1 and "cannot condition on prompt 'a cat on a mat'" in result.output
    result = runner.invoke(app, ["train", "--reward", "no-such-reward", "--out", str(tmp_path / "z")])
    assert result.exit_code == 1 and "no reward named 'no-such-reward'" in result.output


def test_a_short_training_run_raises_the_heldout_reward():
    torch.manual_seed(0)
    backend = treesdk.load_backend("digits")
    rewards = {"digit-classifier": treesdk.load_reward("digit-classifier")}
    heldout = {"digit-evaluator": treesdk.load_reward("digit-evaluator")}
    prompts = [f"a handwritten digit {d}" for d in range(10)]
    recipe = treesdk.load_algorithm("treegrpo", **{**backend.recipe_defaults(), "optim.lr": 3e-4})
    run = treesdk.train(recipe, backend, rewards, prompts, iters=8, batch=8, seed=0,
                        eval_prompts=prompts * 3, eval_seeds=[s for s in range(3) for _ in range(10)], eval_rewards=heldout)
    gain = run.eval_after["digit-evaluator_mean"] - run.eval_before["digit-evaluator_mean"]
    assert gain > 0.05, (run.eval_before, run.eval_after)


def test_bench_at_the_papers_values_skips_the_backends_recipe_defaults(tmp_path):
    report = run_bench(
        lambda: treesdk.load_backend("digits"), {"digit-classifier": treesdk.load_reward("digit-classifier")},
        {"digit-classifier": 1.0}, ["digit 3"], ["digit 3"] * 2, [0, 1], algorithms=["treegrpo", "dynamic-treerpo"],
        overrides={"tree.d": 2}, seconds=60, max_iters=1, eval_every=1, batch=1, steps=4, backend_defaults=False,
    )
    assert report["backend_defaults"] is False
    assert report["algorithms"]["treegrpo"]["lr"] == 1e-5 and report["algorithms"]["dynamic-treerpo"]["lr"] == 5e-6  # papers'


def test_bench_reports_every_field_and_interleaves(tmp_path):
    backend_factory = lambda: treesdk.load_backend("digits")  # noqa: E731
    rewards = {"digit-classifier": treesdk.load_reward("digit-classifier")}
    order = []
    report = run_bench(
        backend_factory, rewards, {"digit-classifier": 1.0}, ["a handwritten digit 3", "digit 8"],
        ["digit 3", "digit 8"] * 2, [0, 1, 2, 3], heldout={"digit-evaluator": treesdk.load_reward("digit-evaluator")},
        algorithms=["grpo", "treegrpo"], overrides={"tree.d": 2, "tree.roots": 1, "steps": 4}, seconds=60, max_iters=2,
        eval_every=1, batch=2, steps=4, out_dir=tmp_path, on_progress=lambda name, done, total: order.append(name),
    )
    assert order == ["grpo", "treegrpo", "grpo", "treegrpo"]  # round-robin by iteration
    assert report["backend_defaults"] is True and report["algorithms"]["treegrpo"]["lr"] == 1e-4  # digits' lr
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert saved["thresholds"] == report["thresholds"] and len(saved["thresholds"]) == 2
    assert saved["threshold_on"] == "heldout"  # the held-out evaluator, not the trained-on classifier
    base = saved["base"]["heldout"]
    best = max(saved["algorithms"][n]["curve"][-1]["heldout"] for n in ("grpo", "treegrpo"))
    assert saved["thresholds"] == pytest.approx([base + 0.5 * (best - base), base + 0.9 * (best - base)])
    assert set(saved["sample_grids"]) == {"base", "grpo", "treegrpo"}
    assert all((tmp_path / path).stat().st_size > 100 for path in saved["sample_grids"].values())
    assert set(saved["speedup_vs_grpo_nfe"]) == {"grpo", "treegrpo"}
    assert (tmp_path / "bench.png").stat().st_size > 1000
    for name in ("grpo", "treegrpo"):
        entry = saved["algorithms"][name]
        assert entry["error"] is None and entry["iterations"] == 2
        assert entry["curve"][0]["seconds"] == 0.0 and entry["nfe_sampling_per_iter"] > 0
        assert entry["curve"][-1]["cpu_seconds"] > 0 and entry["curve"][-1]["nfe"] > 0
        assert entry["final_diversity"] > 0 and entry["diversity_kept"] > 0 and entry["diversity_pixels_kept"] > 0
        # precision/recall need more than k = 3 images per prompt; this evaluation set has 2
        assert entry["final_precision"] is None and entry["final_recall"] is None
    from treesdk_cli.bench import print_report

    saved["algorithms"]["treegrpo"].update(final_precision=0.875, final_recall=0.5)
    print_report(saved)  # one cell per column, both with and without precision/recall
    # grpo: 2 prompts x 1 root x 4 SDE steps, plus 8 trained and 8 reference (KL) evaluations per iteration
    grpo = saved["algorithms"]["grpo"]
    assert grpo["nfe_sampling_per_iter"] == 8 and grpo["curve"][-1]["nfe"] == 2 * (8 + 8 + 8)


def test_bench_nfe_budget_and_nfe_cadence_with_one_base_evaluation(monkeypatch):
    from treesdk_cli import bench_runner

    calls = []
    real_evaluate = bench_runner.evaluate
    monkeypatch.setattr(bench_runner, "evaluate", lambda *a, **k: calls.append(1) or real_evaluate(*a, **k))
    # grpo with 2 prompts, 1 root and T = 4: 8 sampling + 8 trained + 8 reference (KL) forwards = 24 per iteration
    report = run_bench(
        lambda: treesdk.load_backend("digits"), {"digit-classifier": treesdk.load_reward("digit-classifier")},
        {"digit-classifier": 1.0}, ["digit 3", "digit 8"], ["digit 3", "digit 8"] * 2, [0, 1, 2, 3],
        algorithms=["grpo", "treegrpo"], overrides={"tree.d": 2, "tree.roots": 1}, seconds=float("inf"), nfe=70,
        eval_every_nfe=40, batch=2, steps=4,
    )
    grpo = report["algorithms"]["grpo"]
    assert grpo["iterations"] == 3  # 72 >= 70: the iteration that reaches the budget is the last
    assert [p["nfe"] for p in grpo["curve"]] == [0, 48, 72]  # 24 < 40 since the base: no evaluation; 48: one
    tree = report["algorithms"]["treegrpo"]
    per_iter = tree["curve"][-1]["nfe"] / tree["iterations"]
    assert tree["curve"][-1]["nfe"] >= 70 > tree["curve"][-1]["nfe"] - per_iter
    assert report["nfe_budget"] == 70 and report["eval_every_nfe"] == 40
    assert tree["curve"][0] == grpo["curve"][0]  # the base model's figures, evaluated once for both
    assert len(calls) == 1 + (len(grpo["curve"]) - 1) + (len(tree["curve"]) - 1)

    # the same race in two reports, merged: thresholds, crossings and speed-ups recomputed over both
    from treesdk_cli.bench_runner import merge_reports

    halves = [{**report, "algorithms": {name: report["algorithms"][name]}} for name in ("grpo", "treegrpo")]
    merged = merge_reports(halves)
    assert merged["thresholds"] == pytest.approx(report["thresholds"])
    for name in ("grpo", "treegrpo"):
        assert merged["algorithms"][name]["to_threshold"] == report["algorithms"][name]["to_threshold"]
    assert merged["speedup_vs_grpo_nfe"] == report["speedup_vs_grpo_nfe"] and merged["nfe_budget"] == 70
    with pytest.raises(ValueError, match="different settings: steps"):
        merge_reports([halves[0], {**halves[1], "steps": 8}])
    with pytest.raises(ValueError, match="base models differ"):
        merge_reports([halves[0], {**halves[1], "base": {**report["base"], "precision": 0.5}}])
    with pytest.raises(ValueError, match="in two reports"):
        merge_reports([halves[0], halves[0]])
    # re-scored on the held-out curve: thresholds from the held-out gains, the report says so
    with pytest.raises(ValueError, match="no 'heldout' score"):  # this race had no held-out reward
        merge_reports(halves, threshold_on="heldout")
    with pytest.raises(ValueError, match="threshold_on"):
        merge_reports(halves, threshold_on="loss")

    def heldout_as(report, shift):
        curves = {name: {**a, "curve": [{**p, "heldout": p["reward"] + shift * p["nfe"]} for p in a["curve"]]}
                  for name, a in report["algorithms"].items()}
        return {**report, "algorithms": curves, "base": {**report["base"], "heldout": report["base"]["reward"]}}

    rescored = merge_reports([heldout_as(h, 1e-3) for h in halves], threshold_on="heldout")
    finals = [a["curve"][-1]["reward"] + 1e-3 * a["curve"][-1]["nfe"] for a in report["algorithms"].values()]
    base = report["base"]["reward"]
    assert rescored["threshold_on"] == "heldout"
    assert rescored["thresholds"] == pytest.approx([base + f * (max(finals) - base) for f in (0.5, 0.9)])


def test_first_crossing_interpolates_every_clock():
    curve = [{"seconds": 0.0, "cpu_seconds": 0.0, "nfe": 0, "iteration": 0, "reward": 0.5},
             {"seconds": 10.0, "cpu_seconds": 20.0, "nfe": 100, "iteration": 4, "reward": 0.7},
             {"seconds": 20.0, "cpu_seconds": 40.0, "nfe": 200, "iteration": 8, "reward": 0.9}]
    crossing = first_crossing(curve, 0.8)
    assert {k: crossing[k] for k in ("seconds", "cpu_seconds", "nfe", "iteration")} == pytest.approx(
        {"seconds": 15.0, "cpu_seconds": 30.0, "nfe": 150.0, "iteration": 6.0})
    assert crossing["reward"] == 0.9  # the figures of the evaluation that crossed
    assert first_crossing(curve, 0.95) is None


def test_a_crossing_counts_only_at_matched_fidelity():
    curve = [{"seconds": 0.0, "cpu_seconds": 0.0, "nfe": 0, "iteration": 0, "heldout": 0.3, "precision": 0.8},
             {"seconds": 10.0, "cpu_seconds": 10.0, "nfe": 100, "iteration": 4, "heldout": 0.7, "precision": 0.4},  # off the data
             {"seconds": 20.0, "cpu_seconds": 20.0, "nfe": 200, "iteration": 8, "heldout": 0.6, "precision": 0.79},
             {"seconds": 30.0, "cpu_seconds": 30.0, "nfe": 300, "iteration": 12, "heldout": 0.8, "precision": 0.85}]
    assert first_crossing(curve, 0.5, "heldout")["nfe"] == pytest.approx(50.0)  # no guard: the hacked evaluation counts
    guarded = first_crossing(curve, 0.5, "heldout", min_precision=0.78)
    assert guarded["nfe"] == 200.0 and guarded["precision"] == 0.79  # previous evaluation was above: no interpolation
    late = first_crossing(curve, 0.7, "heldout", min_precision=0.78)
    assert late["nfe"] == pytest.approx(250.0) and late["heldout"] == 0.8
    assert first_crossing(curve, 0.7, "heldout", min_precision=0.9) is None
