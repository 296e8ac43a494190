"""Exact resume and faults: SIGTERM mid-iteration, SIGKILL during a checkpoint write, a worker
crash under ``torchrun --max-restarts``, and a dead rank without a launcher to clean up.

Each compares final weights bit for bit with an uninterrupted run of the same world size (same
float summation order, so exact equality is the right test on CPU).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from _dist_common import (
    DRIVER,
    TWO_RANK_ATOL,
    check,
    env,
    free_port,
    hexes,
    in_process_run,
    result,
    run_torchrun,
    scratch,
    straight_two_rank_run,
    torchrun_cmd,
)

from treesdk.training.run_folder.checkpoint import list_checkpoints, load_checkpoint


def wait_for(path: Path, proc: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"process ended (exit {proc.returncode}) before {path.name} appeared\n{out[-2000:]}\n{err[-4000:]}")
        assert time.monotonic() < deadline, f"{path.name} did not appear within {seconds} s"
        time.sleep(0.05)


def test_sigterm_mid_iteration_checkpoints_then_resume_equals_straight():
    """SIGTERM to torchrun while iteration 2 is running: torchrun forwards it to both ranks, they
    agree to stop, finish iteration 2, rank 0 writes checkpoint 2 and they exit; a resumed run up
    to 4 iterations ends with the uninterrupted 2-rank run's weights, bit for bit."""
    straight = straight_two_rank_run()
    root = scratch("sigterm")
    args = ["--out", str(root / "run"), "--iters", "4", "--result", str(root / "first.json"),
            "--ready-at", "2", "--ready-marker", str(root / "ready"), "--ready-sleep", "60"]
    proc = subprocess.Popen(torchrun_cmd(args), env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(root / "ready", proc)  # rank 0 is inside iteration 2 (sampling), waiting for the signal
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    first = result(root / "first.json")
    assert first["interrupted"] is True and first["iterations"] == 2, err[-4000:]
    assert [p.name for p in list_checkpoints(root / "run")] == ["iter_000001", "iter_000002"]
    assert hexes(load_checkpoint(root / "run")[0]["logits"]) == first["logits_hex"]

    check(run_torchrun(["--out", str(root / "run"), "--iters", "4", "--resume", "--result", str(root / "second.json")]))
    second = result(root / "second.json")
    assert second["iterations"] == 4 and not second["interrupted"]
    assert [row["iteration"] for row in second["rows"]] == [3, 4]
    assert second["logits_hex"] == straight["result"]["logits_hex"]


def test_worker_crash_with_max_restarts_resumes_from_the_last_checkpoint():
    """Rank 1 dies when iteration 3 starts; torchrun (--max-restarts 1) restarts both workers,
    which find checkpoint 2 and resume by themselves; the result equals the uninterrupted run."""
    straight = straight_two_rank_run()
    root = scratch("restart")
    done = check(run_torchrun(
        ["--out", str(root / "run"), "--iters", "4", "--result", str(root / "result.json"),
         "--crash-at", "3", "--crash-marker", str(root / "crashed")],
        launcher=("--max-restarts=1", "--monitor-interval=0.2"),
    ))
    assert (root / "crashed").exists(), "the crash was not injected"
    assert "injected crash at iteration 3" in done.stderr
    final = result(root / "result.json")
    assert [row["iteration"] for row in final["rows"]] == [3, 4]  # the restarted attempt resumed after 2
    assert final["logits_hex"] == straight["result"]["logits_hex"]
    lines = (root / "run" / "metrics.jsonl").read_text().splitlines()
    assert [int(line.split('"iteration": ')[1].split(",")[0].rstrip("}")) for line in lines] == [1, 2, 3, 4]


def test_a_two_rank_checkpoint_resumes_on_one_rank(tmp_path):
    """``--batch`` is global, so a run checkpointed by 2 ranks continues on 1 with the same trees:
    the weights end within the float-summation tolerance of the 2-rank run."""
    straight = straight_two_rank_run()
    run = tmp_path / "run"
    shutil.copytree(straight["run"], run)
    for later in ("iter_000003", "iter_000004"):
        shutil.rmtree(run / "checkpoints" / later)
    resumed, model = in_process_run(out_dir=run, iters=4, resume=True)
    assert [row["iteration"] for row in resumed.history] == [3, 4]
    two = torch.tensor(straight["result"]["logits"])
    assert torch.allclose(model.logits.detach(), two, rtol=0, atol=TWO_RANK_ATOL)


def test_sigkill_during_checkpoint_write_leaves_the_previous_checkpoint(tmp_path):
    """SIGKILL while checkpoint 4 is half written (one file in its temporary folder): checkpoint 2
    is still the newest complete one, loads, and resuming from it reproduces the straight run."""
    root = tmp_path
    proc = subprocess.Popen(
        [sys.executable, str(DRIVER), "--out", str(root / "run"), "--iters", "4", "--checkpoint-every", "2",
         "--stall-checkpoint-at", "4", "--ready-marker", str(root / "writing")],
        env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        wait_for(root / "writing", proc)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGKILL
    half = [p.name for p in (root / "run" / "checkpoints").iterdir() if p.name.startswith(".tmp-iter_000004")]
    assert half, "the kill did not land during the write of checkpoint 4"
    assert [p.name for p in list_checkpoints(root / "run")] == ["iter_000002"]
    trainable, optim_state, state = load_checkpoint(root / "run")
    assert state["iteration"] == 2 and optim_state["state"] and set(trainable) == {"logits"}

    _, resumed = in_process_run(out_dir=root / "run", iters=4, resume=True)
    _, uninterrupted = in_process_run(iters=4)
    assert hexes(resumed.logits.detach()) == hexes(uninterrupted.logits.detach())


@pytest.mark.parametrize("fault", ["die", "hang"])
def test_dead_rank_makes_the_other_exit_with_a_clear_message(fault, tmp_path):
    """Two ranks started by hand (no torchrun to kill the survivor). At iteration 2 rank 1 either
    exits (``die``: its sockets close) or freezes (``hang``: a dead node, sockets stay open, only the
    timeout helps). Rank 0 must fail its next collective and exit 1 with a message naming the
    cause, within the short timeout, instead of hanging.

    Events, not timing: start-up and iteration 1 run under a generous timeout (a loaded machine
    may stall a rank for seconds there); rank 0 enters iteration 2 only once rank 1 has written
    the fault marker, and only then drops the collective timeout to 5 s."""
    port = str(free_port())
    procs = []
    marker = tmp_path / "fault"
    for rank in (0, 1):
        rank_env = env(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE="2",
                       MASTER_ADDR="127.0.0.1", MASTER_PORT=port, TREESDK_DIST_TIMEOUT="300")
        procs.append(subprocess.Popen(
            [sys.executable, str(DRIVER), "--iters", "4", f"--{fault}-at", "2",
             "--fault-marker", str(marker), "--fault-timeout", "5"],
            env=rank_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        ))
    try:
        _, err0 = procs[0].communicate(timeout=240)  # a hang here is the failure this test catches
    finally:
        procs[1].kill()
        _, err1 = procs[1].communicate(timeout=30)
        procs[0].kill()
    assert f"rank 1: {'dying' if fault == 'die' else 'hanging'} at iteration 2" in err1, err1[-2000:]
    assert procs[0].returncode == 1, err0[-3000:]
    assert "rank 0 of 2: all_reduce of gradients failed" in err0, err0[-3000:]
    assert "Another rank most likely died or stalled" in err0 and "TREESDK_DIST_TIMEOUT" in err0
    if fault == "hang":
        assert "Timed out" in err0 or "timed out" in err0, err0[-3000:]
