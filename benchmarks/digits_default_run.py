"""The digits default run (`treesdk train`, no options) on several training seeds, against its target.

    python benchmarks/digits_default_run.py --out benchmarks/results/digits-default-run.json

For each seed: `treesdk train --seed S` (the backend's default recipe and iterations), then
`treesdk eval RUN` on the fixed 100-image set (10 prompts x seeds 0-9) and `treesdk eval RUN --seeds 100`
on 1000 samples (10 prompts x seeds 0-99); the base model is evaluated the same two ways. Every
score is the held-out `digit-evaluator`; precision / recall are against the real digits of each
class (k = 3, per prompt, in the evaluator's features).

The target (checked per seed): held-out gain >= +0.28 over the base on the 1000 samples, precision
on them >= the base model's, recall of the real digits >= 0.6. Run it alone on the machine: the
seconds are the training's wall clock.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SCORE = "digit-evaluator_mean"
TARGET_GAIN, TARGET_RECALL = 0.28, 0.6


def treesdk(*args: str) -> None:
    """Run the ``treesdk`` CLI of this interpreter; raise with its output when it fails."""
    done = subprocess.run([sys.executable, "-c", "from treesdk_cli.entry import main; main()", *args],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"treesdk {' '.join(args)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")


def evaluate(run: Path | None, folder: Path, tag: str) -> tuple[dict, dict]:
    """(100-image set, 1000 samples) evaluations of ``run`` (``None``: the base model)."""
    target = [] if run is None else [str(run)]
    treesdk("eval", *target, "--json", str(folder / f"{tag}-100.json"))
    treesdk("eval", *target, "--seeds", "100", "--json", str(folder / f"{tag}-1000.json"))
    return (json.loads((folder / f"{tag}-100.json").read_text()), json.loads((folder / f"{tag}-1000.json").read_text()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds")
    parser.add_argument("--runs", type=Path, default=None, help="folder for the run folders (default: a temporary one)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as scratch:
        root = args.runs or Path(scratch)
        root.mkdir(parents=True, exist_ok=True)
        base100, base1000 = evaluate(None, root, "base")
        runs = []
        for seed in args.seeds:
            run = root / f"default-{seed}"
            start = time.perf_counter()
            treesdk("train", "--seed", str(seed), "--out", str(run))
            seconds = time.perf_counter() - start
            config = json.loads((run / "config.json").read_text())
            e100, e1000 = evaluate(run, root, f"default-{seed}")
            gain = e1000[SCORE] - base1000[SCORE]
            runs.append({
                "seed": seed, "seconds": seconds, "recipe": config["recipe"]["name"], "iters": config["iters"],
                "heldout_100": e100[SCORE], "gain_100": e100[SCORE] - base100[SCORE],
                "heldout_1000": e1000[SCORE], "gain_1000": gain,
                "precision_1000": e1000["precision"], "recall_1000": e1000["recall"],
                "diversity_kept_1000": e1000["diversity"] / base1000["diversity"],
                "precision_100": e100["precision"], "recall_100": e100["recall"],
                "meets_target": gain >= TARGET_GAIN and e1000["precision"] >= base1000["precision"]
                and e1000["recall"] >= TARGET_RECALL,
            })
    mean = {key: statistics.fmean(r[key] for r in runs) for key in
            ("seconds", "heldout_100", "gain_100", "heldout_1000", "gain_1000", "precision_1000", "recall_1000",
             "diversity_kept_1000")}
    report = {
        "command": "treesdk train --seed S; treesdk eval RUN; treesdk eval RUN --seeds 100",
        "target": {"gain_1000": TARGET_GAIN, "precision_1000": f">= base ({base1000['precision']:.3f})",
                   "recall_1000": TARGET_RECALL},
        "base": {"heldout_100": base100[SCORE], "heldout_1000": base1000[SCORE], "precision_1000": base1000["precision"],
                 "recall_1000": base1000["recall"], "precision_100": base100["precision"], "recall_100": base100["recall"]},
        "runs": runs, "mean": mean,
        "std_gain_1000": statistics.pstdev(r["gain_1000"] for r in runs),
        "all_meet_target": all(r["meets_target"] for r in runs),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({"mean": mean, "all_meet_target": report["all_meet_target"]}, indent=2))


if __name__ == "__main__":
    main()
