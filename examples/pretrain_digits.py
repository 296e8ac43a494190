"""Pretrain the three built-in digit models, deterministically, on scikit-learn's 8x8 digits.

Writes (by default into the package folders, replacing the shipped weights):

* ``plugins/weights/digit_classifier.safetensors``: ``digit-classifier`` CNN, trained on the even half;
* ``plugins/weights/digit_evaluator.safetensors``: ``digit-evaluator`` MLP, trained on the odd half;
* ``plugins/weights/digit_rewards.json``: how both were made, each one's accuracy on the other half;
* ``backends/weights/digits_flow.safetensors``: the ``digits`` flow-matching model, trained on all
  1797 images with label dropout 0.1 (null class, for classifier-free guidance) and label noise;
* ``backends/weights/digits_flow.json``: how it was made and how often the evaluator reads the
  prompted digit in its ODE samples.

The flow model is *deliberately imperfect at following prompts*: with probability ``--label-noise``
a training label is replaced by a random other digit, so the model learns clean digits but draws
the prompted one only roughly 70-80% of the time (at guidance 1, measured by the held-out
``digit-evaluator``), like a text-to-image model with imperfect prompt alignment. RL has something
to fix, and classifier-free guidance > 1 fixes most of it (the JSON records both).

Determinism: fixed seeds, one explicit ``torch.Generator`` per random stream,
``torch.use_deterministic_algorithms(True)``, a fixed thread count (``--threads``, default 1: one
thread makes every reduction order fixed, and on a busy 2-core machine it is also the fastest). The
same torch version on the same kind of CPU with the same thread count reproduces every tensor bit
for bit (checked: two runs give identical tensors and accuracies; only the order of the metadata
in the safetensors header may differ); other thread counts or CPUs may differ in float rounding.

Run: ``python examples/pretrain_digits.py`` (a few minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import math
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from treesdk_backends.digits import (
    DEFAULT_GUIDANCE_SCALE,
    DEFAULT_NUM_STEPS,
    NULL_LABEL,
    DigitsBackend,
    DigitsFlowNet,
    evaluate_samples,
    save_digits_checkpoint,
)
from treesdk_backends.digits_data import load_digit_images
from treesdk_plugins.digits import (
    DigitClassifierNet,
    DigitClassifierReward,
    DigitEvaluatorNet,
    DigitEvaluatorReward,
    preprocess_digit_images,
    save_classifier_checkpoint,
)

import treesdk
from treesdk.io import atomic_write_json

ROOT = Path(__file__).resolve().parent.parent


def setup(threads: int) -> None:
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(0)


def augment(images: torch.Tensor, generator: torch.Generator, noise_std: float) -> torch.Tensor:
    """Random +-1 pixel shifts (zero background) and Gaussian pixel noise on ``[B, 1, 8, 8]`` in [0, 1]."""
    batch = images.shape[0]
    padded = F.pad(images, (1, 1, 1, 1))
    oy = torch.randint(0, 3, (batch,), generator=generator)
    ox = torch.randint(0, 3, (batch,), generator=generator)
    rows = (oy[:, None] + torch.arange(8))[:, :, None]
    cols = (ox[:, None] + torch.arange(8))[:, None, :]
    shifted = padded[torch.arange(batch)[:, None, None], 0, rows, cols].unsqueeze(1)
    noise = noise_std * torch.randn(shifted.shape, generator=generator)
    return (shifted + noise).clamp(0.0, 1.0)


def as_rgb(images: torch.Tensor) -> torch.Tensor:
    return images.repeat(1, 3, 1, 1)


def train_classifier(net: torch.nn.Module, split: str, seed: int, epochs: int, lr: float) -> dict:
    images, labels = load_digit_images(split)
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # dropout masks
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    batch = 64
    steps = epochs * math.ceil(len(images) / batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    net.train()
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=generator)
        for start in range(0, len(images), batch):
            idx = order[start : start + batch]
            x = preprocess_digit_images(as_rgb(augment(images[idx], generator, noise_std=0.1)))
            loss = F.cross_entropy(net(x), labels[idx], label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    net.eval()
    return {"split": split, "seed": seed, "epochs": epochs, "lr": lr, "batch": batch, "optimizer_steps": steps,
            "augmentation": "random +-1 px shift, gaussian pixel noise std 0.1", "label_smoothing": 0.05}  # fmt: skip


def heldout_accuracy(reward, split: str) -> float:
    images, labels = load_digit_images(split)
    return float((reward.predict(as_rgb(images)) == labels).float().mean())


def train_flow(
    net: DigitsFlowNet, steps: int, seed: int, lr: float, batch: int, label_dropout: float, label_noise: float
) -> dict:
    images, labels = load_digit_images("all")
    x0_all = images * 2.0 - 1.0
    generator = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.0)
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min(1.0, (i + 1) / warmup) * 0.5 * (1.0 + math.cos(math.pi * min(i, steps) / steps))
    )
    net.train()
    losses = []
    for step in range(steps):
        idx = torch.randint(0, len(x0_all), (batch,), generator=generator)
        x0, label = x0_all[idx], labels[idx].clone()
        # label noise: the model learns p(image | prompt) as a mixture that is right ~(1 - label_noise)
        # of the time, i.e. it follows prompts imperfectly while drawing clean digits
        flip = torch.rand(batch, generator=generator) < label_noise
        label = torch.where(flip, (label + torch.randint(1, 10, (batch,), generator=generator)) % 10, label)
        label[torch.rand(batch, generator=generator) < label_dropout] = NULL_LABEL
        noise = torch.randn(x0.shape, generator=generator)
        sigma = torch.rand(batch, generator=generator)
        xs = (1.0 - sigma.view(-1, 1, 1, 1)) * x0 + sigma.view(-1, 1, 1, 1) * noise
        loss = F.mse_loss(net(xs, sigma, label), noise - x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if (step + 1) % max(1, steps // 10) == 0:
            print(f"  flow step {step + 1}/{steps} loss {sum(losses[-50:]) / len(losses[-50:]):.4f}", flush=True)
    net.eval()
    return {"split": "all", "seed": seed, "optimizer_steps": steps, "lr": lr, "batch": batch,
            "schedule": "linear warmup 5% then cosine to 0", "label_dropout": label_dropout,
            "label_noise": f"{label_noise}: a training label is replaced by a uniformly random other digit with this probability",
            "sigma_sampling": "uniform [0, 1)", "loss": "mse of v = noise - x0",
            "final_loss_mean_last_50": sum(losses[-50:]) / len(losses[-50:])}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-backend", type=Path, default=ROOT / "backends" / "weights")
    parser.add_argument("--out-plugins", type=Path, default=ROOT / "plugins" / "weights")
    parser.add_argument("--only", choices=["all", "rewards", "flow"], default="all")
    parser.add_argument("--flow-steps", type=int, default=300)
    parser.add_argument("--label-noise", type=float, default=0.18)
    parser.add_argument("--flow-channels", type=int, default=32)
    parser.add_argument("--flow-lr", type=float, default=2e-3)
    parser.add_argument("--flow-batch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    setup(args.threads)
    wall_start = time.perf_counter()
    env = {"torch": torch.__version__, "python": platform.python_version(), "threads": args.threads,
           "machine": platform.machine(), "treesdk": treesdk.__version__}  # fmt: skip
    args.out_backend.mkdir(parents=True, exist_ok=True)
    args.out_plugins.mkdir(parents=True, exist_ok=True)

    if args.only in ("all", "rewards"):
        record = {}
        for name, net_class, split, other, seed, epochs, lr in (
            ("digit-classifier", DigitClassifierNet, "even", "odd", 1, 60, 3e-3),
            ("digit-evaluator", DigitEvaluatorNet, "odd", "even", 2, 60, 3e-3),
        ):
            start = time.perf_counter()
            torch.manual_seed(seed)  # initial weights
            net = net_class()
            recipe = train_classifier(net, split, seed, epochs, lr)
            file = args.out_plugins / (name.replace("-", "_") + ".safetensors")
            save_classifier_checkpoint(net, file, {"name": name, "trained_on": f"sklearn load_digits, {split} indices"})
            reward = treesdk_reward(name, file)
            acc = heldout_accuracy(reward, other)
            seconds = time.perf_counter() - start
            record[name] = {"file": file.name, "architecture": net_class.__name__, "format": net_class.format_value,
                            "parameters": sum(p.numel() for p in net.parameters()), "training": recipe,
                            "heldout_split": other, "heldout_accuracy": acc, "train_seconds": round(seconds, 2)}  # fmt: skip
            print(f"{name}: accuracy on the {other} half {acc:.4f} ({seconds:.1f} s)", flush=True)
        record["environment"] = env
        atomic_write_json(record, args.out_plugins / "digit_rewards.json")

    if args.only in ("all", "flow"):
        start = time.perf_counter()
        torch.manual_seed(3)
        net = DigitsFlowNet(channels=args.flow_channels)
        recipe = train_flow(net, args.flow_steps, seed=3, lr=args.flow_lr, batch=args.flow_batch, label_dropout=0.1,
                            label_noise=args.label_noise)
        train_seconds = time.perf_counter() - start
        file = args.out_backend / "digits_flow.safetensors"
        save_digits_checkpoint(net, file, {"name": "digits", "trained_on": "sklearn load_digits, all 1797 images"})
        evaluator = DigitEvaluatorReward(checkpoint=args.out_plugins / "digit_evaluator.safetensors")
        classifier = DigitClassifierReward(checkpoint=args.out_plugins / "digit_classifier.safetensors")
        evals = {}
        for guidance in sorted({1.0, 2.0, DEFAULT_GUIDANCE_SCALE}):
            backend = DigitsBackend(model=file, guidance_scale=guidance)
            ev = evaluate_samples(backend, evaluator.predict, per_digit=100, num_steps=DEFAULT_NUM_STEPS, seed=0)
            cl = evaluate_samples(backend, classifier.predict, per_digit=100, num_steps=DEFAULT_NUM_STEPS, seed=0)
            evals[f"guidance={guidance:g},steps={DEFAULT_NUM_STEPS}"] = {"digit-evaluator": ev, "digit-classifier_accuracy": cl["accuracy"]}  # fmt: skip
            print(f"  guidance {guidance:g}, {DEFAULT_NUM_STEPS} steps: evaluator {ev['accuracy']:.3f}, "
                  f"classifier {cl['accuracy']:.3f}", flush=True)  # fmt: skip
        # the smaller protocol tests/test_digits_backend.py repeats (fast enough for the test suite)
        test_protocol = {"per_digit": 20, "seed": 0, "num_steps": DEFAULT_NUM_STEPS, "guidance_scale": DEFAULT_GUIDANCE_SCALE}
        test_protocol["accuracy"] = evaluate_samples(
            DigitsBackend(model=file), evaluator.predict, per_digit=20, num_steps=DEFAULT_NUM_STEPS, seed=0
        )["accuracy"]
        default = evals[f"guidance={DEFAULT_GUIDANCE_SCALE:g},steps={DEFAULT_NUM_STEPS}"]
        record = {
            "file": file.name, "architecture": "DigitsFlowNet", "network": net.config,
            "parameters": sum(p.numel() for p in net.parameters()), "training": recipe,
            "train_seconds": round(train_seconds, 2), "environment": env,
            "default_num_steps": DEFAULT_NUM_STEPS, "default_guidance_scale": DEFAULT_GUIDANCE_SCALE,
            "sampler": "Euler ODE over treesdk.sde.sigma_grid(T, shift=1), noise torch.randn on a CPU generator "
                       "seeded with 'seed', prompts 'a handwritten digit d', digit-major",
            "sample_accuracy": default["digit-evaluator"]["accuracy"],
            "sample_accuracy_by_digit": default["digit-evaluator"]["per_digit"],
            "sample_accuracy_protocol": {"per_digit": 100, "seed": 0, "num_steps": DEFAULT_NUM_STEPS,
                                         "guidance_scale": DEFAULT_GUIDANCE_SCALE, "judge": "digit-evaluator"},
            "test_protocol": test_protocol,
            "evaluations": evals,
        }  # fmt: skip
        atomic_write_json(record, args.out_backend / "digits_flow.json")
        print(f"digits flow: {record['parameters']} parameters, {train_seconds:.1f} s, sample accuracy "
              f"{record['sample_accuracy']:.3f} (evaluator, T={DEFAULT_NUM_STEPS}, guidance {DEFAULT_GUIDANCE_SCALE:g})")  # fmt: skip
    print(f"total wall time {time.perf_counter() - wall_start:.1f} s", flush=True)


def treesdk_reward(name: str, file: Path):
    """The reward class for ``name`` loaded from ``file`` (the class the entry point names)."""
    cls = {"digit-classifier": DigitClassifierReward, "digit-evaluator": DigitEvaluatorReward}[name]
    return cls(checkpoint=file)


if __name__ == "__main__":
    main()
