"""Pretrain the built-in ``glyphs`` text-rendering flow model on synthetic renders of the training words.

Data: :data:`treesdk_backends.glyphs_data.TRAIN_WORDS` rendered by
:func:`~treesdk_backends.glyphs_data.random_render` (17 matplotlib fonts, random size, position,
slant, stroke, ink and paper levels). A pool of ``--pool-per-word`` renders per word is drawn at
start and a quarter of it is redrawn every ``--refresh-every`` steps (rendering costs about as much
as a training step on one core). The held-out words are never rendered here.

Objective: rectified flow, ``x_sigma = (1 - sigma) x0 + sigma noise``, the network predicts
``v = noise - x0``; sigma uniform in [0, 1); the word is replaced by the null prompt with
probability ``--null-prob`` (classifier-free guidance).

Checkpoints: every ``--save-every-s`` seconds the current weights are written to ``--out``
(atomically; a later run can stop at any checkpoint: an early one is legible but imperfect on
held-out words, which is what the backend wants), with the step count in the metadata.

Determinism: fixed seeds, one generator per stream, a fixed thread count (``--threads``, default 1).

Run: ``OMP_NUM_THREADS=1 python examples/pretrain_glyphs.py --minutes 60``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from treesdk_backends.glyphs_data import IMAGE_SHAPE, MAX_LEN, TRAIN_WORDS, render_batch
from treesdk_backends.glyphs_net import NULL_TOKEN, GlyphsFlowNet, encode_word

import treesdk
from treesdk.io import atomic_save_safetensors, atomic_write_json

ROOT = Path(__file__).resolve().parent.parent
FORMAT_KEY, FORMAT_VALUE, CONFIG_KEY = "treesdk_format", "glyphs-flow-v1", "glyphs_config"


def save(net: GlyphsFlowNet, path: Path, metadata: dict[str, str]) -> None:
    meta = {**metadata, FORMAT_KEY: FORMAT_VALUE, CONFIG_KEY: json.dumps(net.config, sort_keys=True)}
    atomic_save_safetensors({k: v.detach().float().clone() for k, v in net.state_dict().items()}, path, meta)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "backends" / "weights" / "glyphs_flow.safetensors")
    parser.add_argument("--minutes", type=float, default=60.0, help="wall-clock budget")
    parser.add_argument("--max-steps", type=int, default=100000)
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--layout-dim", type=int, default=16, help="letter-layout map channels (0: attention only)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--null-prob", type=float, default=0.1)
    parser.add_argument("--pool-per-word", type=int, default=16)
    parser.add_argument("--refresh-every", type=int, default=200)
    parser.add_argument("--save-every-s", type=float, default=180.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--init", type=Path, default=None,
                        help="continue from this checkpoint's weights (its step count carries on; fresh optimizer, warmup)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    gen = torch.Generator().manual_seed(args.seed + 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)

    words = [w for w in TRAIN_WORDS for _ in range(args.pool_per_word)]
    tokens = torch.tensor([encode_word(w, MAX_LEN) for w in words], dtype=torch.int64)
    t0 = time.perf_counter()
    pool = render_batch(words, rng) * 2.0 - 1.0  # latents in [-1, 1]
    print(f"rendered {len(words)} images {IMAGE_SHAPE} in {time.perf_counter() - t0:.1f} s", flush=True)

    net = GlyphsFlowNet(channels=args.channels, max_len=MAX_LEN, layout_dim=args.layout_dim)
    step = 0
    if args.init is not None:
        from safetensors import safe_open
        from safetensors.torch import load_file

        missing, unexpected = net.load_state_dict(load_file(str(args.init)), strict=False)
        if unexpected or any(not key.startswith("layout_") for key in missing):
            raise SystemExit(f"{args.init} does not fit this network: missing {missing}, unexpected {unexpected}")
        # a checkpoint without the layout map: the map's convolutions start at zero (same function)
        with safe_open(str(args.init), "pt") as handle:
            step = int((handle.metadata() or {}).get("step", 0))
        print(f"continuing from {args.init} at step {step}", flush=True)
    first_step = step
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=0.0)
    warmup = 200
    net.train()
    start = last_save = time.perf_counter()
    losses: list[float] = []
    log: list[dict] = []
    while step < args.max_steps and time.perf_counter() - start < args.minutes * 60:
        for group in opt.param_groups:
            group["lr"] = args.lr * min(1.0, (step - first_step + 1) / warmup)
        idx = torch.randint(0, len(words), (args.batch,), generator=gen)
        x0, tok = pool[idx], tokens[idx].clone()
        tok[torch.rand(args.batch, generator=gen) < args.null_prob] = NULL_TOKEN
        noise = torch.randn(x0.shape, generator=gen)
        sigma = torch.rand(args.batch, generator=gen)
        xs = (1.0 - sigma.view(-1, 1, 1, 1)) * x0 + sigma.view(-1, 1, 1, 1) * noise
        loss = F.mse_loss(net(xs, sigma, tok), noise - x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        step += 1
        if step % args.refresh_every == 0:
            part = torch.randint(0, len(words), (len(words) // 4,), generator=gen)
            pool[part] = render_batch([words[i] for i in part.tolist()], rng) * 2.0 - 1.0
        if step % 50 == 0:
            mean = sum(losses[-50:]) / 50
            print(f"step {step} loss {mean:.4f} {time.perf_counter() - start:.0f} s", flush=True)
        now = time.perf_counter()
        if now - last_save > args.save_every_s:
            last_save = now
            save(net, args.out.with_name(args.out.stem + f"_step{step}.safetensors"), {"step": str(step)})
            log.append({"step": step, "seconds": round(now - start, 1), "loss_last_50": sum(losses[-50:]) / 50})
    save(net, args.out, {"step": str(step), "name": "glyphs", "trained_on": "synthetic renders of TRAIN_WORDS"})
    record = {
        "file": args.out.name, "architecture": "GlyphsFlowNet", "network": net.config,
        "parameters": sum(p.numel() for p in net.parameters()), "optimizer_steps": step, "continued_from": str(args.init) if args.init else None, "batch": args.batch,
        "lr": args.lr, "schedule": "linear warmup 200 steps, then constant", "null_prob": args.null_prob,
        "pool_per_word": args.pool_per_word, "refresh_every": args.refresh_every, "train_words": len(TRAIN_WORDS),
        "seconds": round(time.perf_counter() - start, 1), "checkpoints": log,
        "environment": {"torch": torch.__version__, "python": platform.python_version(), "threads": args.threads,
                        "machine": platform.machine(), "treesdk": treesdk.__version__},
    }  # fmt: skip
    atomic_write_json(record, args.out.with_suffix(".json"))
    print(f"done: {step} steps", flush=True)


if __name__ == "__main__":
    main()
