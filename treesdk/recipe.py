"""Algorithms as data: a validated pydantic :class:`Recipe` composed of small part specs.

A recipe names a tree shape, a window schedule, a noise schedule, an advantage estimator and a
list of weighted loss terms (optax-style composition: a hybrid is a different list, not new code).
Every part is a pydantic model whose fields carry defaults, bounds and descriptions, so the same
spec drives validation, ``--help``, config files, JSON Schema and generated ComfyUI nodes.

Recipes load from YAML/JSON files or preset names (entry-point group ``treesdk.algorithms``) and
accept dotted overrides such as ``{"tree.k": 3, "window.start": 2}``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class Part(BaseModel):
    """Base of every recipe part: unknown fields are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# ----------------------------------------------------------------------------------------------
# tree shape


class TreeSpec(Part):
    """Shape of the sampled forest per prompt: ``roots`` independent roots, each branching ``k``
    ways at each of the ``d`` steps of the SDE window; ``roots * k**d`` leaves per prompt."""

    k: int = Field(3, ge=1, le=64, description="children per node at each window step (branching factor)")
    d: int = Field(3, ge=0, le=64, description="window length in steps = depth of the tree")
    roots: int = Field(1, ge=1, le=1024, description="independent roots (initial noises) per prompt; G for GRPO")
    sde_outside_window: bool = Field(
        False, description="stochastic (trained, non-branching) steps outside the window, as GRPO; else ODE there"
    )
    outside_noise_level: float | None = Field(
        None, gt=0, le=10, description="noise level of SDE steps outside the window (default: the noise schedule's level)"
    )
    max_leaves: int = Field(4096, ge=1, description="memory bound: leaves per prompt may not exceed this")

    @property
    def leaves_per_prompt(self) -> int:
        return self.roots * self.k**self.d

    @model_validator(mode="after")
    def _leaves_within_bound(self) -> TreeSpec:
        if self.leaves_per_prompt > self.max_leaves:
            raise ValueError(
                f"roots * k**d = {self.roots} * {self.k}**{self.d} = {self.leaves_per_prompt} leaves per prompt "
                f"exceeds max_leaves = {self.max_leaves}; lower k, d or roots (or raise max_leaves)"
            )
        return self


# ----------------------------------------------------------------------------------------------
# window schedules


class FixedWindow(Part):
    """The window always starts at step ``start``."""

    kind: Literal["fixed"] = "fixed"
    start: int = Field(0, ge=0, description="first step of the window (0 = the noisiest step)")


class SlidingWindow(Part):
    """MixGRPO / Dynamic-TreeRPO: start at ``start``, advance by ``stride`` every ``every`` iterations,
    wrap back to ``start`` after ``max_start`` (default ``T - d``)."""

    kind: Literal["sliding"] = "sliding"
    start: int = Field(0, ge=0, description="first window start")
    stride: int = Field(1, ge=1, description="steps the window advances each move")
    every: int = Field(1, ge=1, description="iterations between moves")
    max_start: int | None = Field(None, ge=0, description="last start before wrapping (default T - d)")


class RandomWindow(Part):
    """TreeGRPO: start drawn from a truncated geometric law ``P(s) ∝ p (1 - p)^(s - min_start)`` on
    ``[min_start, max_start]`` (default ``max_start = T - d``), so early (noisy) steps are favoured."""

    kind: Literal["random"] = "random"
    p: float = Field(0.5, gt=0, le=1, description="geometric success probability; 1 = always min_start")
    min_start: int = Field(0, ge=0, description="smallest start")
    max_start: int | None = Field(None, ge=0, description="largest start (default T - d)")


WindowSpec = Annotated[Union[FixedWindow, SlidingWindow, RandomWindow], Field(discriminator="kind")]


# ----------------------------------------------------------------------------------------------
# noise schedule


class NoiseSpec(Part):
    """SDE noise level ``a`` per window depth: constant, or Dynamic-TreeRPO's linear growth
    ``a(depth) = level * (1 + beta * depth / d)`` (depth 0 = first window step)."""

    kind: Literal["constant", "linear"] = "constant"
    level: float = Field(0.7, gt=0, le=10, description="base noise level a of the Flow-GRPO SDE")
    beta: float = Field(0.0, ge=0, le=100, description="growth with depth (kind=linear)")

    def at_depth(self, depth: int, num_layers: int) -> float:
        if self.kind == "constant" or num_layers <= 0:
            return self.level
        return self.level * (1.0 + self.beta * depth / num_layers)


# ----------------------------------------------------------------------------------------------
# advantage estimators


class GroupAdvantageSpec(Part):
    """Group-normalised leaf advantage ``(r - mean_prompt) / (std + eps)``; every edge gets the mean
    advantage of the leaves below it (for non-branching trajectories: the trajectory's advantage)."""

    kind: Literal["group"] = "group"
    attribution: Literal["edge", "path"] = Field("edge", description="edge: one value per edge; path: one per root-to-leaf path")
    global_std: bool = Field(False, description="normalise by the std over all leaves of the batch, not per prompt")
    clip: float | None = Field(None, gt=0, description="clip advantages to [-clip, clip]")
    eps: float = Field(1e-4, gt=0, description="added to the std")


class TreeBackupSpec(Part):
    """TreeGRPO backup: leaf advantages as :class:`GroupAdvantageSpec`, then each internal edge gets
    ``sum_c softmax(logp_c / temperature) * A_c`` over its child edges (stored behaviour log-probs).

    Log-probs are averaged over latent elements, so they differ little between siblings and the
    softmax is near-uniform at temperature 1 (close to the plain mean). A smaller temperature
    sharpens it toward the most likely child; a larger one makes it exactly uniform.
    """

    kind: Literal["tree-backup"] = "tree-backup"
    attribution: Literal["edge", "path"] = Field("edge", description="edge (TreeGRPO) or path (Dynamic-TreeRPO eq. 9)")
    temperature: float = Field(1.0, gt=0, description="softmax temperature over sibling log-probs")
    global_std: bool = Field(False, description="normalise by the std over all leaves of the batch")
    clip: float | None = Field(None, gt=0, description="clip advantages to [-clip, clip]")
    eps: float = Field(1e-4, gt=0, description="added to the std")


AdvantageSpec = Annotated[Union[GroupAdvantageSpec, TreeBackupSpec], Field(discriminator="kind")]


# ----------------------------------------------------------------------------------------------
# loss terms


class ClippedSurrogateSpec(Part):
    """PPO clipped surrogate ``-min(rho A, clip(rho, 1 - e_lo, 1 + e_hi) A)``.

    ``clip``: ``fixed`` uses ``eps`` both sides; ``asymmetric`` uses ``eps_low``/``eps_high``;
    ``reward-adaptive`` uses ``e = eps_low + (eps_high - eps_low) * exp(-eta * R)`` on both sides,
    ``R`` the raw reward of the path's leaf (best leaf below the edge under edge attribution).
    """

    kind: Literal["clipped-surrogate"] = "clipped-surrogate"
    weight: float = Field(1.0, ge=0, description="weight of this term")
    clip: Literal["fixed", "asymmetric", "reward-adaptive"] = "fixed"
    eps: float = Field(1e-4, gt=0, le=1, description="clip range (fixed)")
    eps_low: float = Field(1e-4, gt=0, le=1, description="lower clip range / adaptive minimum")
    eps_high: float = Field(1e-4, gt=0, le=1, description="upper clip range / adaptive maximum")
    eta: float = Field(1.0, ge=0, description="reward-adaptive decay rate")


class LayerTuningSpec(Part):
    """LayerTuning-RL SFT: per tree layer, MSE of every node's velocity to the detached velocity of
    the node on the best leaf's path at that layer, times ``weight`` (lambda)."""

    kind: Literal["layertuning-sft"] = "layertuning-sft"
    weight: float = Field(0.1, ge=0, description="lambda")


class KLSpec(Part):
    """KL to the base policy (Flow-GRPO): ``||mean_theta - mean_ref||^2 / (2 std^2)`` averaged over
    elements, the reference obtained by disabling the adapter; times ``weight`` (beta)."""

    kind: Literal["kl"] = "kl"
    weight: float = Field(0.004, ge=0, description="beta")


LossSpec = Annotated[Union[ClippedSurrogateSpec, LayerTuningSpec, KLSpec], Field(discriminator="kind")]


# ----------------------------------------------------------------------------------------------
# optimisation


class OptimSpec(Part):
    """The optimiser, its lr schedule over the run, and the update schedule of one iteration
    (``passes x minibatches`` optimiser steps; see :mod:`treesdk.optimization`)."""

    optimizer: Literal["adamw", "adamw-8bit", "adafactor", "sgd"] = Field(
        "adamw", description="optimiser: adamw, adamw-8bit (bitsandbytes), adafactor, sgd (momentum betas[0])")
    lr_schedule: Literal["constant", "linear", "cosine"] = Field(
        "constant", description="lr over the run's iterations after the warm-up: constant, linear or cosine decay")
    lr_warmup: int = Field(0, ge=0, description="iterations of linear lr warm-up")
    lr_min_factor: float = Field(0.0, ge=0, le=1, description="final lr of linear/cosine decay, as a fraction of lr")

    lr: float = Field(1e-4, gt=0, le=1, description="learning rate")
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = Field(0.0, ge=0)
    eps: float = Field(1e-8, gt=0)
    grad_clip: float | None = Field(1.0, gt=0, description="max global gradient norm (None = off)")
    passes: int = Field(1, ge=1, le=64, description="optimisation passes over the stored edges per iteration")
    minibatches: int = Field(1, ge=1, description="optimiser steps per pass; trees are split between them")


class Recipe(Part):
    """A whole algorithm. See the presets in :mod:`treesdk.presets`."""

    name: str = Field("custom", description="recipe name")
    steps: int = Field(10, ge=1, le=1000, description="sampling steps T")
    tree: TreeSpec = Field(default_factory=TreeSpec)
    window: WindowSpec = Field(default_factory=FixedWindow)
    noise: NoiseSpec = Field(default_factory=NoiseSpec)
    advantage: AdvantageSpec = Field(default_factory=TreeBackupSpec)
    losses: list[LossSpec] = Field(default_factory=lambda: [ClippedSurrogateSpec()], min_length=1)
    optim: OptimSpec = Field(default_factory=OptimSpec)
    chunk: int = Field(64, ge=1, description="max nodes per velocity call (sampling and training)")

    @model_validator(mode="after")
    def _window_fits(self) -> Recipe:
        T, d = self.steps, self.tree.d
        if d > T:
            raise ValueError(f"tree.d = {d} exceeds steps = {T}: the window must fit in the T sampling steps")
        win = self.window
        if isinstance(win, FixedWindow) and win.start + d > T:
            raise ValueError(f"window.start + tree.d = {win.start} + {d} > steps = {T}: the window runs past T")
        if isinstance(win, (SlidingWindow, RandomWindow)):
            if win.max_start is not None and win.max_start + d > T:
                raise ValueError(f"window.max_start + tree.d = {win.max_start} + {d} > steps = {T}: the window runs past T")
            first = win.start if isinstance(win, SlidingWindow) else win.min_start
            last = win.max_start if win.max_start is not None else T - d
            if first > last:
                raise ValueError(f"window starts at {first} but its last start is {last}; with steps = {T}, d = {d}")
        return self

    def window_start(self, iteration: int, seed: int) -> int:
        """Window start for ``iteration`` (deterministic in ``seed`` and ``iteration``)."""
        return window_start(self, iteration, seed)


def window_start(recipe: Recipe, iteration: int, seed: int) -> int:
    """Start step of the branching window at ``iteration``.

    fixed: ``start``; sliding: ``start + stride * (iteration // every)`` wrapped into
    ``[start, max_start]``; random: truncated geometric, drawn from a generator seeded by
    ``(seed, iteration)`` so every rank and every resume draws the same value.
    """
    import numpy as np

    T, d, win = recipe.steps, recipe.tree.d, recipe.window
    if isinstance(win, FixedWindow):
        return win.start
    last = win.max_start if win.max_start is not None else T - d
    if isinstance(win, SlidingWindow):
        span = last - win.start + 1
        return win.start + (win.stride * (iteration // win.every)) % span
    first = win.min_start
    starts = np.arange(first, last + 1)
    probs = win.p * (1.0 - win.p) ** (starts - first) if win.p < 1 else (starts == first).astype(float)
    probs = probs / probs.sum()
    rng = np.random.default_rng([seed, iteration, 0x57A27])
    return int(rng.choice(starts, p=probs))


# ----------------------------------------------------------------------------------------------
# loading, overrides


def apply_overrides(data: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Set dotted keys (``"tree.k"``, ``"losses.0.eps"``) in a nested dict/list, in place."""
    for dotted, value in overrides.items():
        parts = dotted.split(".")
        node: Any = data
        for i, part in enumerate(parts[:-1]):
            key: Any = int(part) if isinstance(node, list) else part
            if isinstance(node, dict) and key not in node:
                node[key] = {}
            try:
                node = node[key]
            except (IndexError, KeyError, TypeError) as exc:
                raise ValueError(f"override {dotted!r}: no field {'.'.join(parts[: i + 1])!r} in the recipe") from exc
        last = parts[-1]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return data


def read_recipe_file(path: str | Path) -> dict[str, Any]:
    """Recipe data from a ``.yaml``/``.yml`` or ``.json`` file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"recipe file {path} does not exist")
    text = path.read_text()
    if path.suffix.lower() in {".yaml", ".yml"}:
        import yaml

        data = yaml.safe_load(text)
    else:
        data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f"recipe file {path} must hold a mapping, got {type(data).__name__}")
    return data


def load_recipe(name_or_path: str | Recipe | Mapping[str, Any], **overrides: Any) -> Recipe:
    """A preset name, a recipe file, a mapping or a Recipe, with dotted ``overrides`` applied.

    Raises :class:`RecipeError` with pydantic's messages (naming the field) when invalid.
    """
    from . import registry

    if isinstance(name_or_path, Recipe):
        data = name_or_path.model_dump(mode="json")
    elif isinstance(name_or_path, Mapping):
        data = json.loads(json.dumps(dict(name_or_path)))
    elif Path(str(name_or_path)).suffix.lower() in {".yaml", ".yml", ".json"}:
        data = read_recipe_file(name_or_path)
    else:
        factory = registry.load("algorithm", str(name_or_path))
        preset = factory() if callable(factory) else factory
        data = preset.model_dump(mode="json") if isinstance(preset, Recipe) else dict(preset)
    if "nodes" in data:  # a recipe graph (treesdk.graph): compile it to the nested form first
        from .graph import compile_graph

        source = str(name_or_path) if isinstance(name_or_path, (str, Path)) else "<mapping>"
        data = compile_graph(data, source=source).model_dump(mode="json")
    data = apply_overrides(data, overrides)
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(str(name_or_path) if not isinstance(name_or_path, Recipe) else name_or_path.name, exc) from exc


class RecipeError(ValueError):
    """An invalid recipe; the message lists every bad field with its location."""

    def __init__(self, source: str, error: ValidationError) -> None:
        lines = [f"invalid recipe {source!r}:"]
        for item in error.errors():
            loc = ".".join(str(p) for p in item["loc"]) or "(recipe)"
            lines.append(f"  {loc}: {item['msg']} (got {item.get('input')!r})")
        super().__init__("\n".join(lines))
        self.errors = error.errors()


def nfe_per_tree(steps: int, start: int, depth: int, k: int) -> int:
    """Velocity evaluations of one tree: ``s + (1 + k + ... + k^(d-1)) + k^d (T - s - d)``."""
    internal = depth if k == 1 else (k**depth - 1) // (k - 1)
    return start + internal + k**depth * (steps - start - depth)


__all__ = [
    "ClippedSurrogateSpec",
    "FixedWindow",
    "GroupAdvantageSpec",
    "KLSpec",
    "LayerTuningSpec",
    "NoiseSpec",
    "OptimSpec",
    "RandomWindow",
    "Recipe",
    "RecipeError",
    "SlidingWindow",
    "TreeBackupSpec",
    "TreeSpec",
    "apply_overrides",
    "load_recipe",
    "nfe_per_tree",
    "window_start",
]
