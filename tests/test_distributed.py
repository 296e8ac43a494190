"""Training on several processes (torch.distributed, gloo on CPU, torchrun): the same math as one
process, distinct noise per rank and prompt, working collectives, and the ``treesdk train``
launcher with ``--nproc-per-node``.

The reference 2-rank run (``_dist_common.straight_two_rank_run``) is made once per session.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _dist_common import (
    TWO_RANK_ATOL,
    env,
    hexes,
    in_process_run,
    scratch,
    straight_two_rank_run,
)

from treesdk.training.run_folder.checkpoint import list_checkpoints, load_checkpoint
from treesdk.training.parallel.distributed import reduce_metric_rows
from treesdk.training.parallel.launch import rendezvous_id, torchrun_argv


@pytest.fixture(scope="module")
def straight():
    return straight_two_rank_run()


@pytest.fixture(scope="module")
def one_rank():
    """The same training in this process, one rank: ``(run, model)``."""
    return in_process_run()


def test_two_ranks_give_the_weights_of_one_rank(straight, one_rank):
    _, model = one_rank
    two = torch.tensor(straight["result"]["logits"])
    one = model.logits.detach()
    assert straight["result"]["world_size"] == 2
    assert torch.allclose(two, one, rtol=0, atol=TWO_RANK_ATOL), f"2 ranks {two.tolist()} vs 1 rank {one.tolist()}"
    assert (one - torch.zeros(2)).abs().max() > 0.05  # training moved the weights: the comparison is not vacuous


def test_seeds_differ_per_rank_and_prompt_and_belong_to_slots(straight):
    r0 = torch.load(straight["root"] / "noise" / "noise_rank0.pt")
    r1 = torch.load(straight["root"] / "noise" / "noise_rank1.pt")
    assert r0.shape == r1.shape == (2, 1, 2, 2)  # 2 trees (slots 0, 2 | 1, 3) per rank, one root each
    rows = torch.cat([r0, r1]).flatten(1)
    for i in range(len(rows)):
        for j in range(i + 1, len(rows)):
            assert not torch.allclose(rows[i], rows[j]), f"trees {i} and {j} start from the same noise"
    record: list = []
    in_process_run(iters=1, record=record)
    one = record[0]  # [4, 1, 2, 2]: slots 0..3 of iteration 0 in one process
    assert torch.equal(one[0::2], r0) and torch.equal(one[1::2], r1)


def test_collectives_average_gradients_and_reduce_metrics(straight):
    got = [json.loads((straight["root"] / "selftest" / f"selftest_rank{r}.json").read_text()) for r in (0, 1)]
    assert got[0] == got[1]  # every rank ends with the same values
    for name in ("one_bucket", "tiny_buckets"):
        a, b, c, h = got[0][name]
        assert a == ["torch.float32", [1.5, 1.5, 1.5]]
        assert b == ["torch.float32", [2.0, 2.0]]  # present on one rank only: (0 + 4) / 2
        assert c is None  # no gradient on any rank: the optimiser must skip it
        assert h == ["torch.bfloat16", [1.0, 1.0]]
    m = got[0]["metrics"]
    assert m["iteration"] == 3 and m["window_start"] == 1
    assert m["trees"] == 4 and m["leaves"] == 24 and m["nfe_sampling"] == 21  # summed
    assert m["seconds"] == 2.0 and m["reward_max"] == 1.0  # slowest rank / max
    assert m["reward_mean"] == pytest.approx(16 / 24)  # weighted by leaves: (0*8 + 1*16) / 24
    pooled = torch.cat([torch.tensor([-0.5, 0.5] * 4), torch.tensor([0.5, 1.5] * 8)])  # 8 + 16 leaves
    assert m["reward_std"] == pytest.approx(float(pooled.std(unbiased=False)))
    assert m["loss"] == 0.5
    assert got[0]["any_true"] is True and got[0]["any_false"] is False
    assert got[1]["broadcast"] == {"from": 0}


def test_metrics_of_two_ranks_describe_the_global_batch(straight, one_rank):
    one, _ = one_rank
    rows = [json.loads(line) for line in (straight["run"] / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [1, 2, 3, 4]
    for two, ref in zip(rows, one.history):
        for key in ("trees", "leaves", "nfe_sampling", "nfe_training", "window_start"):
            assert two[key] == ref[key], key
        for key in ("reward_mean", "reward_std", "reward_max"):
            assert two[key] == pytest.approx(ref[key], abs=1e-5), key
    assert [p.name for p in list_checkpoints(straight["run"])] == ["iter_000002", "iter_000003", "iter_000004"]


def test_reduce_metric_rows_keeps_integers_and_tolerates_missing_keys():
    out = reduce_metric_rows([{"trees": 1, "loss": 1.0, "only_here": 3.0}, {"trees": 2, "loss": 2.0}])
    assert out == {"trees": 3, "loss": 1.5, "only_here": 3.0}
    assert isinstance(out["trees"], int)


def test_launcher_command_lines():
    worker = ["train", "--config", "run.json", "--out", "runs/x"]
    one = torchrun_argv(worker, nproc_per_node=8)
    assert one == ["--nproc-per-node=8", "--nnodes=1", "--max-restarts=0", "--standalone", "-m", "treesdk", "--", *worker]
    multi = torchrun_argv(worker, nproc_per_node=8, nnodes=2, rdzv_endpoint="n0:29500", max_restarts=3, run_dir="runs/x")
    assert "--rdzv-backend=c10d" in multi and "--rdzv-endpoint=n0:29500" in multi
    assert f"--rdzv-id={rendezvous_id('runs/x')}" in multi and "--max-restarts=3" in multi
    static = torchrun_argv(worker, nproc_per_node=8, nnodes=2, rdzv_endpoint="n0:29500", node_rank=1, run_dir="runs/x")
    assert {"--rdzv-backend=static", "--node-rank=1", "--master-addr=n0", "--master-port=29500"} <= set(static)
    with pytest.raises(ValueError, match="--rdzv-endpoint HOST:PORT"):
        torchrun_argv(worker, nproc_per_node=8, nnodes=2)
    with pytest.raises(ValueError, match="--node-rank 2: must be in 0..1"):
        torchrun_argv(worker, nproc_per_node=8, nnodes=2, rdzv_endpoint="n0:1", node_rank=2)


def _fake_distribution(site: Path) -> None:
    """Register the analytic model and reward as entry points (a dist-info folder on PYTHONPATH),
    so ``treesdk train --backend mixture`` finds them in the subprocess only."""
    info = site / "treesdk_test_mixture-0.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: treesdk-test-mixture\nVersion: 0.0\n")
    (info / "entry_points.txt").write_text(
        "[treesdk.backends]\nmixture = analytic:MixtureFlow\n\n[treesdk.rewards]\nbrightness = analytic:BrightnessReward\n"
    )


def test_cli_launches_two_ranks_through_torchrun(straight):
    """``python -m treesdk train --nproc-per-node 2 --iters 2`` re-invokes itself under torchrun:
    two gloo ranks, one line of progress (rank 0), and after 2 iterations bit for bit the weights
    the 2-rank reference run had at iteration 2 (same recipe, prompts, seed, global batch).
    Resuming multi-process runs is tested in test_resume_faults.py."""
    root = scratch("cli")
    _fake_distribution(root / "site")
    (root / "prompts.txt").write_text("".join(p + "\n" for p in "abcdef"))
    cmd = [sys.executable, "-m", "treesdk", "train", "--backend", "mixture", "--reward", "brightness",
           "--prompts", str(root / "prompts.txt"), "--steps", "6", "--d", "3", "--lr", "0.05",
           "--set", "optim.minibatches=2", "--set", "optim.grad_clip=1.0", "--seed", "7", "--batch", "4",
           "--iters", "2", "--checkpoint-every", "1", "--keep-checkpoints", "1", "--out", str(root / "run"),
           "--nproc-per-node", "2"]
    extra = env(PYTHONPATH=f"{root / 'site'}:{env()['PYTHONPATH']}")
    done = subprocess.run(cmd, env=extra, capture_output=True, text=True, timeout=150, cwd=root, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    assert done.stdout.count("treesdk train backend=mixture") == 1  # only rank 0 prints
    assert "ranks=2 (gloo)" in done.stdout
    assert [p.name for p in list_checkpoints(root / "run")] == ["iter_000002"]  # --keep-checkpoints 1
    trainable, _, state = load_checkpoint(root / "run")
    reference, _, _ = load_checkpoint(straight["run"] / "checkpoints" / "iter_000002")
    assert state["iteration"] == 2
    assert hexes(trainable["logits"]) == hexes(reference["logits"])
    rows = [json.loads(line) for line in (root / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows if not r.get("eval")] == [1, 2]
    assert [r["trees"] for r in rows if not r.get("eval")] == [4, 4]
    launched = json.loads((root / "run" / "config.json").read_text())["launch"]
    assert launched["nproc_per_node"] * launched["nnodes"] == 2


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--nnodes", "2"], "--nnodes 2 needs --rdzv-endpoint HOST:PORT"),
        (["--nnodes", "2", "--rdzv-endpoint", "n0:29500", "--node-rank", "5"], "--node-rank 5: must be in 0..1"),
        (["--nproc-per-node", "0", "--nnodes", "2", "--rdzv-endpoint", "n0:1"], "need at least 1 process per node"),
    ],
)
def test_cli_launcher_flags_are_checked_before_anything_starts(flags, message):
    from treesdk_cli.main import app
    from typer.testing import CliRunner

    done = CliRunner().invoke(app, ["train", *flags])
    assert done.exit_code == 1
    assert message in " ".join(done.output.split())
