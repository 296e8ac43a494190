"""Merge ``treesdk bench`` folders of one bed into one race (e.g. a preset run later beside the others).

    python benchmarks/merge_bench.py [--threshold-on reward|heldout] OUT BENCH_DIR [BENCH_DIR ...]

The folders must share the bed, the base model's evaluation and the race's settings (steps, batch,
budget, evaluation cadence, task); thresholds, crossings and speed-ups are recomputed over all the
algorithms (``treesdk_cli.bench_runner.merge_reports``); ``--threshold-on`` re-scores the race on the
other score (e.g. a race run with ``--threshold-on reward`` read against held-out thresholds). Writes ``OUT/bench.json``, ``OUT/bench.png``
and copies the sample grids into ``OUT/samples/``.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from treesdk.io import atomic_write_json
from treesdk_cli.bench_runner import merge_reports, plot_curves


def main(out: str, *folders: str, threshold_on: str | None = None) -> None:
    reports = [json.loads((Path(f) / "bench.json").read_text()) for f in folders]
    merged = merge_reports(reports, threshold_on=threshold_on)
    target = Path(out)
    (target / "samples").mkdir(parents=True, exist_ok=True)
    grids: dict[str, str] = {}
    for folder, report in zip(folders, reports):
        for name, rel in (report.get("sample_grids") or {}).items():
            if name not in grids and (Path(folder) / rel).exists():
                if (Path(folder) / rel).resolve() != (target / rel).resolve():
                    shutil.copyfile(Path(folder) / rel, target / rel)
                grids[name] = rel
    merged["sample_grids"] = grids
    merged["merged_from"] = [str(f) for f in folders]
    atomic_write_json(merged, target / "bench.json")
    plot_curves(merged, target / "bench.png")
    print(f"wrote {target / 'bench.json'} and {target / 'bench.png'}: {', '.join(merged['algorithms'])}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", help="folder for the merged race")
    parser.add_argument("folders", nargs="+", help="treesdk bench folders of one bed")
    parser.add_argument("--threshold-on", choices=["reward", "heldout"], default=None,
                        help="score the thresholds are on (default: the reports')")
    args = parser.parse_args()
    main(args.out, *args.folders, threshold_on=args.threshold_on)
