"""Training features in the loop: lr schedule per iteration, optimiser choice, EMA (evaluated and
exported when asked, exact on resume), --eval-every grids, loggers and in-iteration progress."""

from __future__ import annotations

import json

import pytest
import torch
from analytic import BrightnessReward, MixtureFlow
from safetensors.torch import load_file

import treesdk
from treesdk.training.run_folder.checkpoint import load_checkpoint
from treesdk.recipes import load_recipe
from treesdk.training.optimisation.schedules import lr_factor
from treesdk import train

REWARDS = {"brightness": BrightnessReward()}


def recipe(**kw):
    return load_recipe("treegrpo", **{"steps": 6, "tree.d": 3, "optim.lr": 0.05, "optim.grad_clip": None, **kw})


def test_lr_schedule_values_per_iteration_are_logged_and_used(tmp_path):
    r = recipe(**{"optim.lr_schedule": "cosine", "optim.lr_warmup": 2, "optim.lr_min_factor": 0.1})
    run = train(r, MixtureFlow(), REWARDS, ["a", "b"], iters=6, batch=2, out_dir=tmp_path)
    expected = [0.05 * lr_factor("cosine", i, 6, 2, 0.1) for i in range(6)]
    assert [row["lr"] for row in run.history] == pytest.approx(expected)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [row["lr"] for row in rows] == pytest.approx(expected)


def test_optimizer_choice_changes_the_update():
    adamw, sgd = MixtureFlow(), MixtureFlow()
    train(recipe(), adamw, REWARDS, ["a"], iters=2, batch=1)
    train(recipe(**{"optim.optimizer": "sgd"}), sgd, REWARDS, ["a"], iters=2, batch=1)
    assert not torch.allclose(adamw.logits.detach(), sgd.logits.detach())


def test_ema_is_exact_on_resume_and_differs_from_the_raw_weights(tmp_path):
    ema = {"decay": 0.8, "warmup": False}
    straight = MixtureFlow()
    train(recipe(), straight, REWARDS, ["a", "b"], iters=4, batch=2, seed=3, out_dir=tmp_path / "a", ema=ema)
    resumed = MixtureFlow()
    train(recipe(), resumed, REWARDS, ["a", "b"], iters=2, batch=2, seed=3, out_dir=tmp_path / "b", ema=ema)
    resumed = MixtureFlow()
    train(recipe(), resumed, REWARDS, ["a", "b"], iters=4, batch=2, seed=3, out_dir=tmp_path / "b", ema=ema, resume=True)
    _, _, state_a = load_checkpoint(tmp_path / "a")
    _, _, state_b = load_checkpoint(tmp_path / "b")
    assert torch.equal(state_a["extra"]["ema.0"], state_b["extra"]["ema.0"])
    assert int(state_a["extra"]["ema_updates"]) == 4
    assert not torch.allclose(state_a["extra"]["ema.0"], straight.logits.detach())


def test_eval_every_writes_grids_and_eval_rows_and_progress_sees_every_phase(tmp_path):
    phases = []
    run = train(recipe(), MixtureFlow(), REWARDS, ["a"], iters=4, batch=1, out_dir=tmp_path, eval_prompts=["a"] * 4,
                eval_every=2, report_to="jsonl", on_step=lambda phase, done, total: phases.append((phase, done, total)))
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == ["end.png", "iter_2.png", "start.png"]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["tag"] for r in rows if r.get("eval")] == ["start", "iter_2", "end"]
    # the same evaluations, in memory on the Run (for scripts without an output folder)
    assert [(e["iteration"], e["tag"]) for e in run.evaluations] == [(0, "start"), (2, "iter_2"), (4, "end")]
    assert run.evaluations[0]["brightness_mean"] == pytest.approx(run.eval_before["brightness_mean"])
    assert run.evaluations[-1] == {"iteration": 4, "tag": "end", **run.eval_after}
    on_disk = [r for r in rows if r.get("eval")][1]
    assert run.evaluations[1]["brightness_mean"] == pytest.approx(on_disk["brightness_mean"])
    assert not (tmp_path / "tb").exists()  # only jsonl was asked for (metrics.jsonl is always written)
    seen = {p for p, _, _ in phases}
    assert {"sampling", "decoding", "rewards", "optimizer", "evaluation"} <= seen
    assert ("optimizer", 1, 1) in phases  # one optimiser step per iteration, counted when taken


def test_digits_export_holds_the_ema_weights_when_asked(tmp_path):
    def run(use: str, folder: str):
        backend = treesdk.load_backend("digits")
        r = load_recipe("treegrpo", **{**backend.recipe_defaults(), "tree.d": 2, "steps": 4})
        train(r, backend, {"digit-classifier": treesdk.load_reward("digit-classifier")}, backend.default_prompts()[:2],
              iters=2, batch=2, out_dir=tmp_path / folder, export_format="digits", report_to="none",
              ema={"decay": 0.5, "warmup": False, "use": use})
        exported = load_file(str(next((tmp_path / folder / "export").glob("*.safetensors"))))
        _, _, state = load_checkpoint(tmp_path / folder)
        return backend, exported, state["extra"]

    backend, exported, extra = run("export", "ema")
    names = list(backend.trainable_state_dict())
    averaged = {name: extra[f"ema.{i}"] for i, name in enumerate(names)}
    raw = backend.trainable_state_dict()
    key = next(k for k in names if k.endswith("weight") and not torch.allclose(averaged[k], raw[k]))  # EMA != raw
    assert torch.allclose(exported[key].float(), averaged[key])
    _, exported_raw, _ = run("eval", "raw")
    assert torch.allclose(exported_raw[key].float(), raw[key].float())
    assert not (tmp_path / "ema" / "export" / "README.md").exists()  # cards are for LoRA and pipeline exports


def test_treesdk_export_and_sample_use_the_ema_weights_as_the_run_did(tmp_path):
    from treesdk.training.exporting.export import export_run
    from treesdk.training.exporting.trained_policy import load_trained_backend

    backend = treesdk.load_backend("digits")
    r = load_recipe("treegrpo", **{**backend.recipe_defaults(), "tree.d": 2, "steps": 4})
    train(r, backend, {"digit-classifier": treesdk.load_reward("digit-classifier")}, backend.default_prompts()[:2],
          iters=2, batch=2, out_dir=tmp_path / "run", export_format="digits", report_to="none",
          ema={"decay": 0.5, "warmup": False, "use": "eval+export"})
    at_end = load_file(str(tmp_path / "run" / "export" / "digits.safetensors"))
    again = load_file(export_run(tmp_path / "run", "digits", tmp_path / "again.safetensors")[0])
    assert at_end.keys() == again.keys() and all(torch.equal(at_end[k], again[k]) for k in at_end)
    rebuilt, _, state = load_trained_backend(tmp_path / "run")
    assert state["ema"] is True
    assert all(torch.equal(rebuilt.trainable_state_dict()[k].float(), at_end[k].float()) for k in at_end)
