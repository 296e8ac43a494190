"""One run path and every setting declared once.

* The Python API (:func:`treesdk.train` with a :class:`RunConfig`) and ``treesdk train`` leave the
  same run folder (``config.json`` and ``metrics.jsonl`` equal but for timings), in one process and
  on two torchrun CPU ranks (gloo): the launcher of ``treesdk train --nproc-per-node 2``, and the
  API called inside workers started by hand with torchrun.
* Every ``RunConfig`` setting the command line exposes has exactly one flag, every flag of
  ``treesdk train`` is one setting (or one of the command's own flags), and every flag the README
  and docs use exists.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from _dist_common import env, scratch
from pydantic import BaseModel
from typer.testing import CliRunner

import treesdk
from treesdk import RunConfig
from treesdk.recipes import Recipe
from treesdk_cli.main import app
from treesdk_cli.train import COMMAND_FLAGS, REPEATABLE

ROOT = Path(__file__).resolve().parents[1]
TIMINGS = re.compile(r"^seconds")
#: RunConfig fields the command line does not set (a run file or the Python API does)
NOT_ON_THE_COMMAND_LINE = {"prompts.items", "logging.tensorboard", "ema.warmup", "ema.device", "backend.describe"}

SMALL = {"tree.k": 2, "tree.d": 2, "steps": 4}
FLAGS = ["--iters", "2", "--batch", "2", "--seed", "5", "--k", "2", "--d", "2", "--steps", "4",
         "--export-format", "none", "--report-to", "jsonl"]


def small_config(**extra) -> RunConfig:
    return RunConfig(**{"overrides": SMALL, "iters": 2, "batch": 2, "seed": 5, "export": {"format": "none"},
                        "logging": {"report_to": "jsonl"}, **extra})


def folder(run_dir: Path) -> tuple[dict, list[dict]]:
    """``(config.json, metrics.jsonl rows)`` without timings."""
    config = json.loads((run_dir / "config.json").read_text())
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return config, [{k: v for k, v in row.items() if not TIMINGS.match(k)} for row in rows]


# -- the same run through the API and the command line ---------------------------------------------


def test_the_api_and_the_command_line_leave_the_same_run_folder(tmp_path):
    run = treesdk.train(small_config(), out_dir=tmp_path / "api")
    assert run.iterations == 2 and not run.interrupted
    done = CliRunner().invoke(app, ["train", *FLAGS, "--out", str(tmp_path / "cli")])
    assert done.exit_code == 0, done.output
    api, cli = folder(tmp_path / "api"), folder(tmp_path / "cli")
    assert api[0] == cli[0]
    assert api[1] == cli[1] and [r["iteration"] for r in api[1] if not r.get("eval")] == [1, 2]
    assert api[0]["dtype"] == "float32"  # the CPU defaults apply to the API too


def test_a_changed_config_is_refused_on_resume_through_the_api_too(tmp_path):
    treesdk.train(small_config(checkpoint={"every": 1}), out_dir=tmp_path / "run")
    with pytest.raises(treesdk.errors.UserError, match="the configuration differs"):
        treesdk.train(small_config(seed=6, iters=3), out_dir=tmp_path / "run", resume=True)
    with pytest.raises(treesdk.errors.UserError, match="is not empty"):
        treesdk.train(small_config(), out_dir=tmp_path / "run")


API_WORKER = """
import sys
import treesdk
config = treesdk.RunConfig(overrides={"tree.k": 2, "tree.d": 2, "steps": 4}, iters=2, batch=2, seed=5,
                           export={"format": "none"}, logging={"report_to": "jsonl"})
run = treesdk.train(config, out_dir=sys.argv[1])
assert run.iterations == 2
"""


def test_two_torchrun_ranks_take_the_same_path_from_the_api_and_the_command_line():
    root = scratch("run-path")
    (root / "worker.py").write_text(API_WORKER)
    cli = subprocess.run([sys.executable, "-m", "treesdk", "train", *FLAGS, "--out", str(root / "cli"),
                          "--nproc-per-node", "2"], env=env(), capture_output=True, text=True, timeout=300, check=False)
    assert cli.returncode == 0, cli.stdout[-3000:] + cli.stderr[-5000:]
    shown = " ".join(cli.stdout.split())  # the console wraps long lines at its width
    assert shown.count("treesdk train backend=digits") == 1 and "ranks=2 (gloo)" in shown  # rank 0 shows
    api = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                          str(root / "worker.py"), str(root / "api")], env=env(), capture_output=True, text=True,
                         timeout=300, check=False)
    assert api.returncode == 0, api.stdout[-3000:] + api.stderr[-5000:]
    one, two = folder(root / "api"), folder(root / "cli")
    assert one[0] == two[0] and one[0]["launch"]["nproc_per_node"] == 2
    assert one[1] == two[1] and [r["trees"] for r in one[1] if not r.get("eval")] == [2, 2]


# -- every setting declared once ---------------------------------------------------------------------


def _leaves(model: type[BaseModel], prefix: str = "") -> set[str]:
    out: set[str] = set()
    for name, info in model.model_fields.items():
        kind = info.annotation
        if isinstance(kind, type) and issubclass(kind, BaseModel) and kind is not Recipe:
            out |= _leaves(kind, f"{prefix}{name}.")
        else:
            out.add(prefix + name)
    return out


def _walk(dotted: str):
    model, info = Recipe, None
    for part in dotted.split("."):
        info = model.model_fields[part]
        model = info.annotation
    return info


def test_every_setting_has_one_flag_and_every_flag_one_setting():
    settings = treesdk.run_settings()
    paths = [s.path for s in settings]
    assert len(paths) == len(set(paths)), "two flags set the same field"
    leaves = _leaves(RunConfig)
    on_the_command_line = {p for p in paths if p in leaves}
    assert on_the_command_line | NOT_ON_THE_COMMAND_LINE == leaves, sorted(leaves - on_the_command_line - NOT_ON_THE_COMMAND_LINE)
    assert not on_the_command_line & NOT_ON_THE_COMMAND_LINE
    for s in settings:  # the others set one key inside a mapping field
        if s.path in leaves:
            continue
        if s.path.startswith("overrides."):
            assert _walk(s.path.removeprefix("overrides.")).description, s.path  # the help is the recipe field's
        else:
            assert s.path.startswith("backend.options.") and s.help, s.path
    assert {s.path for s in settings if s.kind == "repeat"} == set(REPEATABLE)

    command = typer.main.get_command(app).commands["train"]
    options = {p.name: p for p in command.params}
    assert set(options) == {s.name for s in settings} | set(COMMAND_FLAGS)
    by_name = {s.name: s for s in settings}
    spelled: dict[str, str] = {}
    for name, param in options.items():
        for flag in [*param.opts, *param.secondary_opts]:
            assert flag not in spelled, f"{flag} is both {spelled[flag]} and {name}"
            spelled[flag] = name
        if name in by_name:
            s = by_name[name]
            assert param.opts == list(s.flags) or param.opts == [s.flags[0]], (name, param.opts)
            assert s.help.split()[0] in (param.help or ""), name
            assert param.rich_help_panel.lower() == s.panel
    assert {"--k", "--d", "--cfg", "--guidance", "--set", "--fsdp", "--no-fsdp", "--json"} <= set(spelled)


def test_every_flag_the_readme_and_docs_use_exists():
    command = typer.main.get_command(app).commands["train"]
    known = {flag for p in command.params for flag in [*p.opts, *p.secondary_opts]}
    used: set[str] = set()
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for line in path.read_text().splitlines():
            if "treesdk train" in line:
                after = re.split(r"`|\s#\s|&&|\|", line[line.index("treesdk train"):])[0]  # this command only
                used |= set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*(?![\w])", after))
    used -= {"--debug", "--help"}  # --debug is a flag of `treesdk` itself: `treesdk --debug train`
    assert used, "no `treesdk train` command line found in the docs"
    assert not used - known, sorted(used - known)
