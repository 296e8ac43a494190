"""The glyphs base model's OCR accuracy on held-out and training words, by both engines.

For a weights file (default: the shipped one) this samples every held-out word (and as many
training words) with ``--seeds`` seeds each, deterministic Euler ODE at the backend's default steps,
and scores them with PP-OCR (``ocr``, the training reward) and Tesseract (``tesseract-ocr``, the
held-out engine), both with the edit-distance metric (1 - normalised Levenshtein distance; exact
match is reported too). The result is one JSON record (``--json``) and a sample grid (``--grid``).

Run: ``OMP_NUM_THREADS=1 python benchmarks/glyphs_base.py --json benchmarks/results/glyphs/base.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from treesdk_backends.glyphs import DEFAULT_NUM_STEPS, GlyphsBackend
from treesdk_backends.glyphs_data import HELDOUT_WORDS, TRAIN_WORDS
from treesdk_backends.glyphs_prompts import glyphs_prompt

import treesdk
from treesdk.evaluation import decode_chunked
from treesdk.images import save_grid
from treesdk.io import atomic_write_json
from treesdk.sampler import sample_ode


def accuracy(backend: GlyphsBackend, words: list[str], seeds: int, rewards: dict, seed0: int) -> tuple[dict, torch.Tensor]:
    prompts = [glyphs_prompt(w) for w in words for _ in range(seeds)]
    latents = sample_ode(backend, prompts, [seed0 + s for _ in words for s in range(seeds)], DEFAULT_NUM_STEPS)
    images = decode_chunked(backend, latents)
    out = {}
    for name, reward in rewards.items():
        out[name] = float(reward.score(images, prompts).float().mean())
    return out, images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="glyphs weights file (default: the shipped weights)")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--train-words", type=int, default=62, help="training words measured too (every n-th)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--grid", type=Path, default=None, help="PNG of the first 48 held-out samples")
    args = parser.parse_args()
    start = time.perf_counter()
    backend = GlyphsBackend(model=args.model)
    rewards = {
        "ocr_edit": treesdk.load_reward("ocr", metric="edit"),
        "ocr_exact": treesdk.load_reward("ocr", metric="exact"),
        "tesseract_edit": treesdk.load_reward("tesseract-ocr", metric="edit"),
        "tesseract_exact": treesdk.load_reward("tesseract-ocr", metric="exact"),
    }
    stride = max(1, len(TRAIN_WORDS) // max(1, args.train_words))
    train_words = list(TRAIN_WORDS[::stride])[: args.train_words]
    heldout, images = accuracy(backend, list(HELDOUT_WORDS), args.seeds, rewards, 1000)
    train, _ = accuracy(backend, train_words, args.seeds, rewards, 1000)
    record = {
        "model": str(backend.model_path), "optimizer_steps": backend._source_metadata.get("step"),
        "steps": DEFAULT_NUM_STEPS, "seeds_per_word": args.seeds,
        "heldout_words": len(HELDOUT_WORDS), "train_words": len(train_words),
        "heldout": heldout, "train": train, "seconds": round(time.perf_counter() - start, 1),
    }  # fmt: skip
    print(json.dumps(record, indent=2))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(record, args.json)
    if args.grid is not None:
        save_grid(images[:48], args.grid, nrow=6)


if __name__ == "__main__":
    main()
