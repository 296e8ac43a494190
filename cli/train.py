"""``treesdk train``: its flags become a :class:`treesdk.RunConfig`, which :func:`treesdk.run_training`
runs (the path :func:`treesdk.train` takes too).

The flags are not written here: each is a RunConfig field that declares its flag and help panel
(:func:`treesdk.run_settings`), turned into a Typer option by :func:`_options`. Only the flags that
say how to run the command rather than what to train are declared here (:data:`COMMAND_FLAGS`).
A flag given on the command line overrides the run file given with ``--config`` (or, with
``--resume``, the run's own ``config.json``); one left out keeps the file's value or the default.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer

import treesdk
from treesdk.errors import UserError

from .common import backend_options, clean_errors, console, parse_overrides, parse_reward_options, parse_rewards
from .flags import FIRST_CLASS, apply_first_class, check_option_keys

#: the titles of the help panels (RunConfig fields name them in lower case)
PANEL_TITLES = {"model": "Model", "algorithm": "Algorithm", "rewards": "Rewards", "prompts": "Prompts",
                "optimisation": "Optimisation", "logging": "Logging", "distributed": "Distributed", "export": "Export"}

#: flags of the command itself, not settings of the run: name -> (type, typer option)
COMMAND_FLAGS: dict[str, tuple[Any, Any]] = {
    "config": (Optional[str], typer.Option(help="run file (YAML/JSON, e.g. a run's config.json; flags override it) or a "
                                                "recipe file (replaces --algo)", rich_help_panel="Run")),
    "out": (Optional[Path], typer.Option(help="run folder (default runs/<algo>-<time>)", rich_help_panel="Run")),
    "resume": (bool, typer.Option(help="continue the run in --out from its last checkpoint, with its config.json (flags "
                                       "given here override it; only harmless ones may change)", rich_help_panel="Run")),
    "allow_config_change": (bool, typer.Option(help="with --resume: accept flags that change how the run trains "
                                                    "(config.json is rewritten, the old one kept beside it)",
                                               rich_help_panel="Run")),
    "dry_run": (bool, typer.Option("--dry-run", help="print the plan (calls, leaves, memory per rank) and exit; loads no "
                                                     "model", rich_help_panel="Run")),
    "json_": (bool, typer.Option("--json", help="with --dry-run: the plan as one JSON object", rich_help_panel="Run")),
    "gpu_memory": (Optional[float], typer.Option(help="with --dry-run: GiB per GPU; the plan says whether the run fits",
                                                 rich_help_panel="Run")),
}

#: how the items of a repeatable flag become its field's value (RunConfig path -> parser)
REPEATABLE: dict[str, Callable[[list[str]], Any]] = {
    "backend.options": lambda items: backend_options(None, None, None, items),
    "overrides": parse_overrides,
    "rewards": parse_rewards,
    "eval_rewards": list,
    "reward_options": parse_reward_options,
}


def _shown_default(value: Any) -> str | None:
    if value is None or value == {} or value == []:
        return None
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    if isinstance(value, bool):
        return None
    return str(value)


def _options() -> list[inspect.Parameter]:
    """One keyword parameter per setting of :func:`treesdk.run_settings`, then :data:`COMMAND_FLAGS`."""
    params = []
    order = list(PANEL_TITLES)
    for s in sorted(treesdk.run_settings(), key=lambda s: order.index(s.panel)):
        shown = _shown_default(s.default)
        text = s.help + (f" \\[default: {shown}]" if shown is not None else "")
        decls = [f"{s.flags[0]}/--no-{s.flags[0][2:]}"] if s.kind == "flag" else list(s.flags)
        option = typer.Option(*decls, help=text, rich_help_panel=PANEL_TITLES[s.panel], metavar=s.metavar,
                              show_default=False)
        kind = Optional[list[str]] if s.kind == "repeat" else Optional[s.type]
        params.append(inspect.Parameter(s.name, inspect.Parameter.KEYWORD_ONLY, default=None,
                                        annotation=Annotated[kind, option]))
    for name, (kind, option) in COMMAND_FLAGS.items():
        default = False if kind is bool else None
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                        annotation=Annotated[kind, option]))
    return params


def _set(data: dict[str, Any], path: str, value: Any) -> None:
    *sections, leaf = path.split(".")
    for section in sections:
        data[section] = dict(data.get(section) or {})
        data = data[section]
    data[leaf] = value


def build_config(config_file: str | None, values: dict[str, Any]) -> treesdk.RunConfig:
    """The :class:`treesdk.RunConfig` of ``treesdk train``: a run file given with ``--config`` (or a
    plain recipe file, told apart by its keys), then every setting given on the command line on top
    (``values``: the setting's name -> its flag's value, None or empty when not given)."""
    data: dict[str, Any] = {}
    if config_file is not None:
        raw = treesdk.read_config_file(config_file)
        data = raw if treesdk.is_run_file_data(raw) else {"recipe": config_file}
    settings = [s for s in treesdk.run_settings() if values.get(s.name) not in (None, [], ())]
    given = {s.path: s for s in settings}
    value = {s.path: values[s.name] for s in settings}

    # the backend and its options: --model/--resolution, then --backend-opt, then the first-class flags
    backend = dict(data.get("backend") or {})
    if "backend.name" in value:
        backend["name"] = value.pop("backend.name")
    name = backend.get("name") or "digits"
    valid = treesdk.option_names("backend", name)
    extra = {p.removeprefix("backend.options."): value.pop(p) for p in list(value)
             if p.startswith("backend.options.") and p.removeprefix("backend.options.") not in FIRST_CLASS}
    extra.update(REPEATABLE["backend.options"](value.pop("backend.options", [])))
    check_option_keys("--backend-opt", f"backend {name!r}", extra, valid)
    first = {p.removeprefix("backend.options."): value.pop(p) for p in list(value) if p.startswith("backend.options.")}
    extra = apply_first_class(extra, valid, name, **first)
    if extra:
        backend["options"] = {**(backend.get("options") or {}), **extra}
    check_option_keys("backend.options:", f"backend {name!r}", backend.get("options") or {}, valid)
    if backend:
        data["backend"] = backend

    if "recipe" in value:
        algo = value.pop("recipe")
        if not (config_file is not None and data.get("recipe") == config_file):  # a recipe file given with --config wins
            data["recipe"] = algo
    overrides = {p.removeprefix("overrides."): value.pop(p) for p in list(value) if p.startswith("overrides.")}
    overrides.update(REPEATABLE["overrides"](value.pop("overrides", [])))  # --set last: the explicit dotted key wins
    if overrides:
        data["overrides"] = {**(data.get("overrides") or {}), **overrides}
    if "prompts.file" in value:
        data["prompts"] = {k: v for k, v in (data.get("prompts") or {}).items() if k != "items"}  # a file replaces items
    for path, item in value.items():
        parsed = REPEATABLE[path](item) if path in REPEATABLE else item
        if path == "reward_options":
            parsed = {**(data.get("reward_options") or {}), **parsed}
        _set(data, path, parsed)
    if "precision" not in data:
        data["precision"] = treesdk.default_precision()  # accelerate launch --mixed_precision bf16

    for reward, options in {**(data.get("reward_options") or {}),
                            **{n: r.get("options") or {} for n, r in _reward_sections(data).items()}}.items():
        check_option_keys("--reward-opt", f"reward {reward!r}", options, treesdk.option_names("reward", reward))
    flags = {path: s.flags[0] for path, s in given.items()}
    flags.update({f"rewards.{n}.weight": f"--reward {n}" for n in data.get("rewards", {}) if "rewards" in given})
    return treesdk.run_config_from_data(data, config_file or "<command line>", flags)


def _reward_sections(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``rewards``/``eval_rewards`` of run-file data that carry options (``{name: {options: ...}}``)."""
    out: dict[str, dict[str, Any]] = {}
    for key in ("rewards", "eval_rewards"):
        section = data.get(key)
        if isinstance(section, dict):
            out.update({n: v for n, v in section.items() if isinstance(v, dict)})
    return out


def train_command(**values: Any) -> None:
    """Post-train a model with a tree (or baseline) RL algorithm; writes a run folder."""
    command = {name: values.pop(name) for name in COMMAND_FLAGS}
    out, resume = command["out"], command["resume"]
    with clean_errors():
        if resume and out is None:
            raise UserError("--resume needs --out RUN_DIR (the run folder to continue)")
        stored = None
        if resume and command["config"] is None and (out / "config.json").is_file():
            stored = str(out / "config.json")  # the run's own configuration, flags on top
        run_config = build_config(command["config"] or stored, values)
        if command["dry_run"] or command["json_"] or command["gpu_memory"] is not None:
            from .dry_run import dry_run as print_plan

            print_plan(run_config, command["dry_run"], command["json_"], command["gpu_memory"])
            return
        run = treesdk.run_training(run_config, out, resume=resume, allow_config_change=command["allow_config_change"],
                                   console=console)
    if run.exit_code:  # stopped by SIGINT/SIGTERM after its checkpoint (130/143): not a finished run
        raise typer.Exit(code=run.exit_code)


train_command.__signature__ = inspect.Signature(_options())  # type: ignore[attr-defined]


def register(app: typer.Typer) -> None:
    app.command("train")(train_command)
