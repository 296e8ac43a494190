"""The run configuration: everything one training run needs, as one validated pydantic model.

:class:`RunConfig` is what ``treesdk train`` builds from its flags (or reads from ``--config``), what
:func:`treesdk.train` takes, what a run folder's ``config.json`` stores (itself a valid run file:
``treesdk train --config runs/X/config.json --out runs/Y`` repeats run X), and what resume, export,
sample and eval read back (:func:`read_run_config`).

A run file (YAML or JSON) holds the same keys::

    backend: {name: digits, options: {model: null, resolution: null}}
    recipe: treegrpo                 # a preset name, a recipe file, or the recipe itself (a mapping);
                                     # unset: the backend's default_recipe (treegrpo unless it names another)
    overrides: {tree.k: 3}           # dotted recipe overrides, applied after the backend's defaults
    rewards: {digit-classifier: 1.0} # name -> weight, or name -> {weight: 1.0, options: {...}}
    eval_rewards: [digit-evaluator]  # held-out rewards (None: the backend's)
    prompts: {file: prompts.txt}     # or {items: [...]}; file: text/CSV/JSONL/JSON/parquet/datasets folder,
                                     # with column and split; none: the backend's default prompts
    batch: 8
    iters: 60
    seed: 0
    device: cpu
    checkpoint: {every: 0, keep: 3}
    export: {format: null}           # null: the backend's default format; "none": no export
    launch: {nproc_per_node: 1, nnodes: 1}
    precision: fp32                  # or bf16/fp16: autocast around the model (weights keep dtype)
    ema: {decay: 0.0, every: 1, use: eval+export}
    logging: {report_to: [jsonl, tensorboard], eval_every: 0}

A recipe given by name or file is *resolved* when the run starts (preset, then the backend's
scale defaults for presets, then ``overrides``); ``config.json`` holds the resolved recipe inline.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from treesdk.interfaces import DEFAULT_ITERS
from treesdk.recipes import Recipe, RecipeError, load_recipe
from treesdk.training.run_folder.loggers import parse_report_to
from treesdk.training.optimisation.optimization import EMAConfig
from treesdk.safe_load import excerpt, read_json_file, read_mapping_file
from treesdk.validation import validation_message


def cli(panel: str, flag: str, *aliases: str, kind: str | None = None, metavar: str | None = None) -> dict[str, Any]:
    """``json_schema_extra`` of a field ``treesdk train`` exposes: its help panel, its flag (and
    short aliases), and for a field whose flag is not a plain value its ``kind``: ``"str"`` (one
    string the field's validator parses, e.g. ``jsonl,tensorboard``) or ``"repeat"`` (a repeatable
    flag whose items the command line parses, e.g. ``--reward NAME=WEIGHT``). The field's
    description is the flag's help (:mod:`treesdk.training.settings`)."""
    return {"cli": {"panel": panel, "flags": (flag, *aliases), "kind": kind, "metavar": metavar}}


class _Section(BaseModel):
    # NaN and infinity are never a valid number of a run (a weight, a rate): refused by name
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


#: backend options that are sizes, by the flag that sets them: checked before any model loads
POSITIVE_OPTIONS = {"resolution": "--resolution", "max_sequence_length": "--max-sequence-length"}


class BackendConfig(_Section):
    """The velocity model: a registered backend name and its constructor options."""

    name: str = Field("digits", description="velocity-model backend (entry point in treesdk.backends)",
                      json_schema_extra=cli("model", "--backend"))
    options: dict[str, Any] = Field(default_factory=dict, description="backend option KEY=VALUE, e.g. lora_rank=32",
                                    json_schema_extra=cli("model", "--backend-opt", kind="repeat", metavar="KEY=VALUE"))
    describe: dict[str, Any] = Field(default_factory=dict, description="facts the loaded backend reported (written by the "
                                     "trainer; fill options the run was not given explicitly when it is rebuilt)")

    @field_validator("options")
    @classmethod
    def _positive_sizes(cls, options: dict[str, Any]) -> dict[str, Any]:
        """Sizes every backend reads the same way must be positive integers (a backend checks its own limits)."""
        for key, flag in POSITIVE_OPTIONS.items():
            value = options.get(key)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{flag} must be a positive whole number, got {value!r}")
        return options


class RewardConfig(_Section):
    """One reward: its weight in the training objective and its constructor options."""

    weight: float = Field(1.0, description="weight of its normalised advantage")
    options: dict[str, Any] = Field(default_factory=dict, description="keyword options of the reward")


class PromptsConfig(_Section):
    """Where the training prompts come from: an inline list or a file / datasets folder
    (:func:`treesdk.training.prompts.load_prompts`); neither: the backend's default prompts."""

    items: list[str] | None = Field(None, description="the prompts")
    file: str | None = Field(None, description="prompts: text file (one per line), CSV/TSV, JSONL, JSON, parquet or a "
                             "datasets folder (default: the backend's prompts)", json_schema_extra=cli("prompts", "--prompts"))
    column: str | None = Field(None, description="column/field of --prompts (default: prompt, caption or text)",
                               json_schema_extra=cli("prompts", "--prompt-column"))
    split: str | None = Field(None, description="split of a datasets folder given to --prompts (default: train)",
                              json_schema_extra=cli("prompts", "--prompt-split"))

    def load(self, default: list[str]) -> list[str]:
        """The prompts (``default`` when none are configured)."""
        if self.items is not None and self.file is not None:
            raise ValueError("prompts: give either `items` or `file`, not both")
        if self.items is not None:
            prompts = [p.strip() for p in self.items if p.strip()]
            if not prompts:
                raise ValueError("prompts.items holds no prompt")
            return prompts
        if self.file is not None:
            from treesdk.training.prompts import load_prompts

            return load_prompts(self.file, self.column, self.split)
        return list(default)


class CheckpointConfig(_Section):
    every: int = Field(0, ge=0, description="iterations between checkpoints (0: only at the end)",
                       json_schema_extra=cli("logging", "--checkpoint-every"))
    keep: int = Field(3, ge=1, description="newest checkpoints kept in the run folder",
                      json_schema_extra=cli("logging", "--keep-checkpoints"))


class ExportConfig(_Section):
    format: str | None = Field(None, description="format exported at the end (default: the backend's; 'none': no export)",
                               json_schema_extra=cli("export", "--export-format"))


class LaunchConfig(_Section):
    """Processes of the run (``treesdk train`` starts torchrun when more than one is asked for).
    The values are checked together, with the flag names, by :func:`treesdk.training.parallel.launch.torchrun_argv`;
    a worker records the processes it ran with (``nproc_per_node`` x ``nnodes``)."""

    nproc_per_node: int = Field(1, description="processes (GPUs) per node; >1 launches through torchrun",
                                json_schema_extra=cli("distributed", "--nproc-per-node"))
    nnodes: int = Field(1, description="number of nodes (run the same command on each)",
                        json_schema_extra=cli("distributed", "--nnodes"))
    node_rank: int | None = Field(None, description="this node's rank 0..nnodes-1 (static rendezvous; default: c10d assigns)",
                                  json_schema_extra=cli("distributed", "--node-rank"))
    rdzv_endpoint: str | None = Field(None, description="HOST:PORT of the rendezvous (first node), for --nnodes > 1",
                                      json_schema_extra=cli("distributed", "--rdzv-endpoint"))
    max_restarts: int = Field(0, description="torchrun restarts after a worker failure; each resumes from the last checkpoint",
                              json_schema_extra=cli("distributed", "--max-restarts"))
    fsdp: bool = Field(False, description="shard a full fine-tune over the ranks with FSDP2 fully_shard (not for LoRA)",
                       json_schema_extra=cli("distributed", "--fsdp"))


class LoggingConfig(_Section):
    """Loggers (:mod:`treesdk.training.run_folder.loggers`) and evaluations during training."""

    report_to: list[str] = Field(default_factory=lambda: ["jsonl", "tensorboard"],
                                 description="loggers: jsonl, tensorboard, wandb (a list or 'a,b'; 'none': none)",
                                 json_schema_extra=cli("logging", "--report-to", kind="str", metavar="A,B"))
    tensorboard: bool = Field(True, description="False drops tensorboard from report_to")
    eval_every: int = Field(0, ge=0, description="evaluate every N iterations too: samples/iter_N.png and logger images "
                            "(0: before and after only)", json_schema_extra=cli("logging", "--eval-every"))
    profile: bool = Field(False, description="seconds and peak memory per phase in metrics.jsonl (\"profile\") and a "
                                              "table at the end; on CUDA it synchronises at every phase edge",
                          json_schema_extra=cli("logging", "--profile"))

    @field_validator("report_to", mode="before")
    @classmethod
    def _loggers(cls, value: Any) -> list[str]:
        return parse_report_to(value)


class RunConfig(_Section):
    """One training run. See the module docstring for the file form."""

    backend: BackendConfig = Field(default_factory=BackendConfig)
    recipe: Recipe | str | None = Field(
        None, description="preset (grpo, mixgrpo, treegrpo, dynamic-treerpo, ...), a recipe file, or the recipe (unset: "
        "the backend's default_recipe; digits: tree-nft, others: treegrpo)",
        json_schema_extra=cli("algorithm", "--algo", kind="str"))
    overrides: dict[str, Any] = Field(default_factory=dict, description="recipe override DOTTED.KEY=VALUE, e.g. noise.level=0.8",
                                      json_schema_extra=cli("algorithm", "--set", kind="repeat", metavar="KEY=VALUE"))
    rewards: dict[str, RewardConfig] = Field(default_factory=dict, description="training reward NAME or NAME=WEIGHT "
                                             "(default: the backend's)",
                                             json_schema_extra=cli("rewards", "--reward", kind="repeat", metavar="NAME[=W]"))
    eval_rewards: dict[str, RewardConfig] | None = Field(
        None, description="held-out reward scored only at evaluation (default: the backend's)",
        json_schema_extra=cli("rewards", "--eval-reward", kind="repeat", metavar="NAME"))
    reward_options: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="reward option NAME:KEY=VALUE, e.g. hpsv2.1:checkpoint=/p/HPS_v2.1_compressed.pt",
        json_schema_extra=cli("rewards", "--reward-opt", kind="repeat", metavar="NAME:KEY=VALUE"))
    prompts: PromptsConfig = Field(default_factory=PromptsConfig)
    batch: int = Field(8, ge=1, description="prompts (trees) per iteration, over all ranks",
                       json_schema_extra=cli("optimisation", "--batch"))
    iters: int | None = Field(None, ge=1, description="total iterations of the run (unset: the backend's default_iters, 60 unless it names another)",
                              json_schema_extra=cli("optimisation", "--iters"))
    seed: int = Field(0, ge=0, description="seed of prompt order, windows and tree noise",
                      json_schema_extra=cli("algorithm", "--seed"))
    device: str | None = Field(None, description="torch device of backend and rewards (cpu, cuda, cuda:1; default: the backend's)",
                               json_schema_extra=cli("model", "--device"))
    dtype: str | None = Field(None, description="weights dtype: float32, bfloat16, float16 (default: the backend's; CPU float32)",
                              json_schema_extra=cli("model", "--dtype"))
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    launch: LaunchConfig = Field(default_factory=LaunchConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    precision: str = Field("fp32", description="compute precision: fp32, or bf16/fp16 autocast around the model (weights "
                           "keep --dtype; the command line's default follows accelerate's ACCELERATE_MIXED_PRECISION)",
                           json_schema_extra=cli("model", "--precision"))
    ema: EMAConfig = Field(default_factory=EMAConfig, description="EMA of the trainable weights (decay 0: off)")

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str | None) -> str | None:
        from treesdk.devices import check_device_name

        return None if value is None else check_device_name(value, None)

    @field_validator("precision")
    @classmethod
    def _known_precision(cls, value: str) -> str:
        from treesdk.dtypes import parse_precision

        parse_precision(value)  # a one-line error naming the valid values
        return value

    @field_validator("rewards", "eval_rewards", mode="before")
    @classmethod
    def _short_rewards(cls, value: Any) -> Any:
        """``{name: weight}`` and ``[name, ...]`` are short for ``{name: {weight: w}}``."""
        if isinstance(value, (list, tuple)):
            return {str(name): {} for name in value}
        if isinstance(value, Mapping):
            return {name: ({"weight": v} if isinstance(v, (int, float)) else v) for name, v in value.items()}
        return value

    @field_validator("recipe", mode="before")
    @classmethod
    def _recipe_mapping(cls, value: Any) -> Any:
        if isinstance(value, Mapping):
            try:
                return load_recipe(value)  # nested or graph form, errors naming the field
            except RecipeError as exc:
                raise ValueError(str(exc)) from None
        return value

    # -- resolution ------------------------------------------------------------------------------

    def backend_options(self) -> dict[str, Any]:
        """Keyword options for ``treesdk.load_backend(self.backend.name, ...)``."""
        options = dict(self.backend.options)
        if self.device is not None:
            options["device"] = self.device
        if self.dtype is not None:
            options["dtype"] = self.dtype
        return options

    def resolve_recipe(self, recipe_defaults: Mapping[str, Any] | None = None,
                       default_recipe: str | Mapping[str, Any] | None = None) -> Recipe:
        """The recipe of this run: preset or file (plus ``recipe_defaults``, the backend's scale
        defaults, for presets only: a recipe file's values are the user's own), then ``overrides``.

        An unset ``recipe`` is the backend's ``default_recipe`` (``"treegrpo"`` when not given): a
        preset name gets ``recipe_defaults`` like any preset, a mapping is taken as is."""
        recipe = self.recipe if self.recipe is not None else (default_recipe if default_recipe is not None else "treegrpo")
        if isinstance(recipe, Recipe):
            return load_recipe(recipe, **self.overrides) if self.overrides else recipe
        if isinstance(recipe, Mapping):
            return load_recipe(recipe, **self.overrides)
        is_file = Path(recipe).suffix.lower() in {".yaml", ".yml", ".json"}
        overrides = {**({} if is_file else dict(recipe_defaults or {})), **self.overrides}
        return load_recipe(recipe, **overrides)

    def check_recipe(self, default_recipe: str | Mapping[str, Any] | None = None) -> None:
        """Check the recipe before the backend loads (its scale defaults are not known yet): a recipe
        file or mapping completely, a preset's name and the paths of the overrides; an override value
        the backend's defaults may still change is judged by :meth:`resolve_recipe` once it loads."""
        from treesdk.errors import UserError

        recipe = self.recipe if self.recipe is not None else default_recipe
        if isinstance(recipe, Recipe):
            return
        if isinstance(recipe, Mapping) or (isinstance(recipe, str) and Path(recipe).suffix.lower() in {".yaml", ".yml", ".json"}):
            self.resolve_recipe({}, default_recipe)
            return
        try:
            self.resolve_recipe({}, default_recipe)  # an unknown preset or a bad override path fails here
        except UserError:
            raise
        except ValueError:  # a value the backend's defaults may still change: judged after it loads
            pass

    def resolved(self, recipe: Recipe, rewards: Mapping[str, float], eval_rewards: list[str], default_iters: int = DEFAULT_ITERS) -> RunConfig:
        """This config with the recipe inline (no overrides left), the rewards named explicitly and
        ``iters`` set (``default_iters`` when unset): what ``config.json`` stores."""
        unknown = sorted(set(self.reward_options) - {*rewards, *eval_rewards})
        if unknown:
            raise ValueError(f"reward options name {unknown}, which are not among the rewards used: {[*rewards, *eval_rewards]}")

        def keep(name: str, source: dict[str, RewardConfig] | None, weight: float = 1.0) -> RewardConfig:
            given = (source or {}).get(name)
            options = {**self.reward_options.get(name, {}), **(given.options if given else {})}
            return RewardConfig(weight=weight, options=options)

        return self.model_copy(update={
            "recipe": recipe,
            "overrides": {},
            "reward_options": {},
            "rewards": {n: keep(n, self.rewards, float(w)) for n, w in rewards.items()},
            "eval_rewards": {n: keep(n, self.eval_rewards) for n in eval_rewards},
            "iters": self.iters if self.iters is not None else int(default_iters),
        })

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True) + "\n"


class RunConfigError(ValueError):
    """An invalid run file; the message names the file and every bad field."""


#: top-level keys that mark a run file (a recipe file has none of them)
RUN_KEYS = frozenset({"backend", "rewards", "eval_rewards", "reward_options", "prompts", "batch", "iters", "seed", "checkpoint", "export",
                      "launch", "logging", "overrides", "device", "dtype", "precision", "ema"})


def is_run_file_data(data: Mapping[str, Any]) -> bool:
    """Whether parsed file data is a run file (``RunConfig``) rather than a recipe file (nested
    form: recipe fields at the top; graph form: ``nodes`` and a ``recipe`` section)."""
    return "nodes" not in data and bool(set(data) & (RUN_KEYS | {"recipe"}))


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Parsed YAML/JSON mapping of ``path`` (a first-release run's ``config.json`` upgraded in
    memory, :mod:`treesdk.training.legacy`)."""
    return _upgraded(read_mapping_file(path, "config file"), str(path))


def _upgraded(data: Any, source: str) -> Any:
    from treesdk.training.legacy import is_first_release_config, upgrade_run_data

    return upgrade_run_data(data, source) if is_first_release_config(data) else data


def run_config_from_data(data: Mapping[str, Any], source: str = "<config>",
                         flags: Mapping[str, str] | None = None) -> RunConfig:
    """A :class:`RunConfig` from parsed data; :class:`RunConfigError` naming each bad field (by
    the command-line flag that set it when ``flags`` maps its dotted name to one, e.g.
    ``{"iters": "--iters"}``)."""
    try:
        return RunConfig.model_validate(dict(data))
    except ValidationError as exc:
        header = f"invalid run file {source!r}:" if source != "<command line>" else "invalid command line:"
        raise RunConfigError(validation_message(header, exc, whole="(run)", rename=flags)) from None


def read_run_config(run_dir: str | Path) -> RunConfig:
    """The :class:`RunConfig` stored in ``RUN/config.json`` (also one written by the first release,
    read in memory as today's format: :mod:`treesdk.training.legacy`)."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {run_dir} is not a run folder written by treesdk train")
    data = read_json_file(path, "run configuration")
    if not isinstance(data, dict):
        raise RunConfigError(f"run configuration {path} must hold a mapping, got {type(data).__name__}")
    return run_config_from_data(_upgraded(data, str(path)), str(path))


__all__ = [
    "BackendConfig",
    "CheckpointConfig",
    "ExportConfig",
    "LaunchConfig",
    "LoggingConfig",
    "PromptsConfig",
    "RewardConfig",
    "RunConfig",
    "RunConfigError",
    "is_run_file_data",
    "read_config_file",
    "read_run_config",
    "run_config_from_data",
]
