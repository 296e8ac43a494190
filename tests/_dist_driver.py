"""Training driver for the distributed / fault tests: the analytic MixtureFlow trained with
:func:`treesdk.train`, run as ``python tests/_dist_driver.py ...`` or under ``torchrun``.

It does what ``treesdk train`` does around the trainer (join the process group from torchrun's
environment, broadcast the initial weights, resume after a torchrun restart, only rank 0 writes)
and adds fault injection for the tests:

* ``--record-noise DIR``: each rank saves the latents of its first velocity call (the root noise of
  its trees at iteration 0) to ``DIR/noise_rank<R>.pt``.
* ``--crash-at N --crash-marker FILE``: rank 1 (or 0 when alone) dies with exit code 3 when
  iteration N starts, once (the marker file remembers that it did).
* ``--die-at N``: rank 1 exits at once (``os._exit``) when iteration N starts, every time.
* ``--fault-marker FILE [--fault-timeout S]``: with ``--die-at``/``--hang-at``, rank 1 writes FILE
  when it dies/hangs; rank 0 waits for FILE at the start of that iteration, then sets the
  collective timeout to S seconds (so setup runs under the generous TREESDK_DIST_TIMEOUT).
* ``--hang-at N``: rank 1 stops responding (sleeps 10 minutes) when iteration N starts, as a frozen
  node would: its connections stay open, so only the timeout can save the others.
* ``--ready-at N --ready-marker FILE --ready-sleep S``: when iteration N starts sampling, touch FILE
  and wait (at most S seconds) until the trainer has seen a SIGINT/SIGTERM, so the test's signal
  lands mid-iteration however slow the machine is.
* ``--stall-checkpoint-at N --ready-marker FILE``: while writing checkpoint N, after the first file
  is in the temporary folder, touch FILE and sleep (for the test's SIGKILL).
* ``--selftest DIR``: before training, exercise every collective hook on rank-dependent inputs and
  write what came back to ``DIR/selftest_rank<R>.json``.

Rank 0 writes ``--result FILE`` (JSON: final logits, iterations, interrupted) at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from analytic import BrightnessReward, MixtureFlow

from treesdk.training.parallel import distributed
from treesdk.recipes import load_recipe
from treesdk import train

RECIPE = {"steps": 6, "tree.d": 3, "optim.lr": 0.05, "optim.minibatches": 2, "optim.grad_clip": 1.0}
PROMPTS = ["a", "b", "c", "d", "e", "f"]


def build_recipe():
    return load_recipe("treegrpo", **RECIPE)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--iters", type=int, default=4)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--checkpoint-every", type=int, default=1)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--result", type=Path, default=None)
    parser.add_argument("--record-noise", type=Path, default=None)
    parser.add_argument("--crash-at", type=int, default=None)
    parser.add_argument("--crash-marker", type=Path, default=None)
    parser.add_argument("--die-at", type=int, default=None)
    parser.add_argument("--hang-at", type=int, default=None)
    parser.add_argument("--fault-marker", type=Path, default=None)
    parser.add_argument("--fault-timeout", type=float, default=None)
    parser.add_argument("--ready-at", type=int, default=None)
    parser.add_argument("--ready-marker", type=Path, default=None)
    parser.add_argument("--ready-sleep", type=float, default=1.0)
    parser.add_argument("--stall-checkpoint-at", type=int, default=None)
    parser.add_argument("--selftest", type=Path, default=None)
    args = parser.parse_args(argv)

    ctx = distributed.init_distributed()
    completed = False
    try:
        model = MixtureFlow()
        ctx.broadcast_parameters(model.trainable_parameters())
        resume = distributed.resume_decision(ctx, args.out, args.resume)
        victim = 1 if ctx.world_size > 1 else 0
        if args.selftest is not None:
            selftest(ctx, args.selftest)

        if args.record_noise is not None:
            original = model.velocity
            seen: list[torch.Tensor] = []

            def recording(x, sigma, cond):
                if not seen:
                    seen.append(x.detach().clone())
                    args.record_noise.mkdir(parents=True, exist_ok=True)
                    torch.save(seen[0], args.record_noise / f"noise_rank{ctx.rank}.pt")
                return original(x, sigma, cond)

            model.velocity = recording  # type: ignore[method-assign]

        if args.stall_checkpoint_at is not None and ctx.is_main:
            from treesdk.training.run_folder import checkpoint

            real_save = checkpoint.atomic_save_safetensors

            def stalling(tensors, path, metadata=None):
                real_save(tensors, path, metadata)
                if metadata and metadata.get("iteration") == str(args.stall_checkpoint_at):
                    args.ready_marker.write_text(str(path))
                    time.sleep(60)

            checkpoint.atomic_save_safetensors = stalling

        started: set[int] = set()

        def on_step(phase: str, done: int, total: int) -> None:
            # the iteration number is the count of rows seen so far (+1 for the running one)
            it = len(rows) + start_offset[0] + 1
            if it in started:
                return
            started.add(it)
            crash = args.crash_at == it and ctx.rank == victim and args.crash_marker is not None
            if crash and not args.crash_marker.exists():  # only the first attempt crashes
                args.crash_marker.write_text("crashed")
                print(f"rank {ctx.rank}: injected crash at iteration {it}", file=sys.stderr, flush=True)
                os._exit(3)
            fault = "dying" if args.die_at == it else "hanging" if args.hang_at == it else None
            if fault and ctx.rank == victim:
                print(f"rank {ctx.rank}: {fault} at iteration {it}", file=sys.stderr, flush=True)
                if args.fault_marker is not None:
                    args.fault_marker.write_text(fault)
                if fault == "dying":
                    os._exit(3)
                time.sleep(600)
            if fault and ctx.rank != victim and args.fault_marker is not None:
                # an event, not a race: the survivor meets the fault only once it has happened, and
                # the short collective timeout (--fault-timeout) applies from then on only
                deadline = time.monotonic() + 300
                while not args.fault_marker.exists() and time.monotonic() < deadline:
                    time.sleep(0.02)
                if args.fault_timeout is not None:
                    import datetime

                    import torch.distributed as dist

                    dist.set_timeout(datetime.timedelta(seconds=args.fault_timeout))
            if args.ready_at == it and ctx.is_main and args.ready_marker is not None:
                args.ready_marker.write_text("ready")
                deadline = time.monotonic() + args.ready_sleep
                while time.monotonic() < deadline and not stop_requested():  # wait for the test's signal
                    time.sleep(0.05)

        rows: list[dict] = []
        start_offset = [0]
        if resume and args.out is not None:
            from treesdk.training.run_folder.checkpoint import list_checkpoints

            found = list_checkpoints(args.out) if ctx.is_main else []
            start_offset[0] = ctx.broadcast_object(int(found[-1].name.split("_")[1]) if found else 0)

        run = train(
            build_recipe(), model, {"brightness": BrightnessReward()}, PROMPTS,
            iters=args.iters, batch=args.batch, seed=args.seed, out_dir=args.out,
            checkpoint_every=args.checkpoint_every, resume=resume,
            on_iteration=rows.append, on_step=on_step, collective=ctx,
        )
        if ctx.is_main and args.result is not None:
            args.result.write_text(json.dumps({
                "logits": model.logits.detach().tolist(),
                "logits_hex": [float(v).hex() for v in model.logits.detach().double()],
                "iterations": run.iterations,
                "interrupted": run.interrupted,
                "rows": run.history,
                "world_size": ctx.world_size,
            }))
        if ctx.is_main:
            print(f"done: iterations={run.iterations} interrupted={run.interrupted}", flush=True)
        completed = True
        return 0
    except distributed.DistributedError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        # as the CLI does (treesdk_cli.common.clean_errors): leave without tearing down the broken
        # group, whose transport threads would abort the interpreter's exit
        sys.stdout.flush()
        os._exit(1)
    finally:
        distributed.shutdown(ctx, completed=completed)


def stop_requested() -> bool:
    """Whether the trainer's SIGTERM handler (``treesdk.training.loop.stop_request.StopRequest``) has fired."""
    handler = signal.getsignal(signal.SIGTERM)
    return bool(getattr(getattr(handler, "__self__", None), "requested", False))


def selftest(ctx: distributed.DistributedContext, folder: Path) -> None:
    """Rank-dependent inputs through every hook; the test checks the combined values."""
    r = ctx.rank

    def params():
        a = torch.nn.Parameter(torch.zeros(3))
        a.grad = torch.full((3,), float(r + 1))  # mean over 2 ranks: 1.5
        b = torch.nn.Parameter(torch.zeros(2))
        b.grad = torch.full((2,), 4.0) if r == 1 else None  # only rank 1 has it: mean 2.0
        c = torch.nn.Parameter(torch.zeros(2))  # no gradient anywhere: stays None
        h = torch.nn.Parameter(torch.zeros(2, dtype=torch.bfloat16))
        h.grad = torch.full((2,), r + 0.5, dtype=torch.bfloat16)  # mean 1.0, still bf16
        return a, b, c, h

    out = {}
    for name, reduce in (("one_bucket", ctx.reduce_gradients),
                         ("tiny_buckets", lambda ps: distributed.average_gradients(ps, ctx.world_size, bucket=2))):
        ps = params()
        reduce(ps)
        out[name] = [None if p.grad is None else [str(p.grad.dtype), p.grad.float().tolist()] for p in ps]
    out["metrics"] = ctx.reduce_metrics({
        "iteration": 3, "trees": 2, "leaves": 8 * (r + 1), "nfe_sampling": 10 + r, "seconds": 1.0 + r,
        "reward_mean": float(r), "reward_std": 0.5, "reward_max": float(r), "loss": float(r), "window_start": 1,
    })
    out["any_true"] = ctx.any_rank(r == 1)
    out["any_false"] = ctx.any_rank(False)
    out["broadcast"] = ctx.broadcast_object({"from": r})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"selftest_rank{r}.json").write_text(json.dumps(out))


if __name__ == "__main__":
    sys.exit(main())
