"""Merge ``treesdk bench`` folders of one bed into one race (e.g. a preset run later beside the others).

    python benchmarks/merge_bench.py OUT BENCH_DIR [BENCH_DIR ...]

The folders must share the bed, the base model's evaluation and the race's settings (steps, batch,
budget, evaluation cadence, task); thresholds, crossings and speed-ups are recomputed over all the
algorithms (``treesdk_cli.bench_runner.merge_reports``). Writes ``OUT/bench.json``, ``OUT/bench.png``
and copies the sample grids into ``OUT/samples/``.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from treesdk.io import atomic_write_json
from treesdk_cli.bench_runner import merge_reports, plot_curves


def main(out: str, *folders: str) -> None:
    reports = [json.loads((Path(f) / "bench.json").read_text()) for f in folders]
    merged = merge_reports(reports)
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
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(sys.argv[1], *sys.argv[2:])
