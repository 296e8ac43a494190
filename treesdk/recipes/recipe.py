"""Algorithms as data: a validated pydantic :class:`Recipe` composed of small part specs.

A recipe names a tree shape, a window schedule, a noise schedule, an SDE step family, an advantage
estimator and a list of weighted loss terms (optax-style composition: a hybrid is a different list,
not new code). Every part is a pydantic model whose fields carry defaults, bounds and descriptions,
declared once in the registry of parts (:mod:`treesdk.recipes.parts`) with its builder, so the same
spec drives validation, ``--help``, config files, JSON Schema and generated ComfyUI nodes.

Conventions: sigma runs from 1 (pure noise) to 0 (data) over the ``steps`` grid; step ``i`` goes
``sigmas[i] -> sigmas[i + 1]``; transition log-probs are averaged over the latent's elements.
Loading (presets, files, overrides) lives in :mod:`treesdk.recipes.loading`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, SerializeAsAny, WithJsonSchema, model_validator

from treesdk.advantages import DepthwiseAdvantage, GroupAdvantage, TreeBackupAdvantage
from treesdk.losses import ClippedSurrogate, KLToReference, LayerTuningSFT
from treesdk.recipes.parts import Part, PartDecl, declare, parts, validate_part
from treesdk.recipes.pruning import PruneSpec
from treesdk.recipes.windows import FixedWindow, RandomWindow, SlidingWindow, WindowSpec
from treesdk.sampler import nfe_per_tree  # noqa: F401 - re-exported (treesdk.recipes.nfe_per_tree)
from treesdk.sde import SDE_FAMILIES


def _slot(slot: str, default_kind: str | None = None) -> Any:
    """Type of a recipe field whose parts come from the registry (built-in or entry point)."""
    schema = {"type": "object", "required": [] if default_kind else ["kind"],
              "properties": {"kind": {"type": "string", "description": f"a registered {slot} kind (`treesdk nodes`)"}},
              "description": f"a {slot} part; its `kind` selects the spec (see `treesdk nodes`)"}
    return Annotated[
        SerializeAsAny[Part],
        BeforeValidator(lambda value: validate_part(slot, value, default_kind)),
        WithJsonSchema(schema),
    ]


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
    split_steps: list[int] | None = Field(
        None, description="branch points (Flow-GRPO-Fast, BranchGRPO): branch k ways at exactly these steps "
                          "(d of them) instead of in a window of d consecutive steps; the window part is then unused")
    split_fractions: list[float] | None = Field(
        None, description="branch points as fractions of the sampling steps T, in [0, 1): step round(f * T) (half up), "
                          "so a preset's splits follow any T (BranchGRPO's 0, 3, 6, 9 of 20 are 0, 0.15, 0.3, 0.45); "
                          "tree.split_steps, when given, takes precedence")
    sde_steps: list[int] | None = Field(
        None, description="with sde_outside_window: only these non-branching steps are SDE (trained), the others ODE "
                          "(BranchGRPO's mixed ODE/SDE tree); None: all of them")
    prune: PruneSpec | None = Field(None, description="BranchGRPO's depth / width pruning of the trained edges")

    @property
    def leaves_per_prompt(self) -> int:
        return self.roots * self.k**self.d

    @model_validator(mode="after")
    def _splits_match_depth(self) -> TreeSpec:
        if self.split_fractions is not None and self.split_steps is None:  # split_steps takes precedence
            f = self.split_fractions
            if f != sorted(f) or len(set(f)) != len(f) or any(not 0.0 <= x < 1.0 for x in f):
                raise ValueError(f"tree.split_fractions must be increasing distinct fractions in [0, 1), got {f}")
            if len(f) != self.d:
                raise ValueError(f"tree.split_fractions has {len(f)} values but tree.d = {self.d}; "
                                 "set d to the number of split points")
        if self.split_steps is not None:
            if len(set(self.split_steps)) != len(self.split_steps) or self.split_steps != sorted(self.split_steps):
                raise ValueError(f"tree.split_steps must be increasing distinct steps, got {self.split_steps}")
            if len(self.split_steps) != self.d:
                raise ValueError(f"tree.split_steps has {len(self.split_steps)} steps but tree.d = {self.d}; "
                                 "set d to the number of split steps")
        return self

    @model_validator(mode="after")
    def _sde_steps_need_sde_outside(self) -> TreeSpec:
        if self.sde_steps is not None and (not self.sde_outside_window or any(i < 0 for i in self.sde_steps)):
            raise ValueError(f"tree.sde_steps {self.sde_steps} picks SDE steps among the non-branching ones: it needs "
                             "tree.sde_outside_window: true and steps >= 0")
        return self

    @model_validator(mode="after")
    def _leaves_within_bound(self) -> TreeSpec:
        if self.leaves_per_prompt > self.max_leaves:
            raise ValueError(
                f"roots * k**d = {self.roots} * {self.k}**{self.d} = {self.leaves_per_prompt} leaves per prompt "
                f"exceeds max_leaves = {self.max_leaves}; lower k, d or roots (or raise max_leaves)"
            )
        return self


# ----------------------------------------------------------------------------------------------
# noise schedule


class NoiseSpec(Part):
    """Noise of the stochastic steps: the SDE family and its level ``a`` per step.

    ``kind``: ``constant`` (``a = level``), ``linear`` (Dynamic-TreeRPO's growth with window depth,
    ``a(depth) = level * (1 + beta * depth / d)``, depth 0 = first window step) or ``per-step``
    (``a = levels[i]`` at sampling step ``i``, any schedule over the ``T`` steps). The step family
    that turns ``a`` into noise is the recipe's ``sde`` part.
    """

    kind: Literal["constant", "linear", "per-step"] = "constant"
    level: float = Field(0.7, gt=0, le=10, description="base noise level a of the SDE")
    beta: float = Field(0.0, ge=0, le=100, description="growth with depth (kind=linear)")
    levels: list[float] | None = Field(
        None, description="noise level at each sampling step 0..T-1 (kind=per-step)"
    )
    branch_scale: float = Field(1.0, gt=0, le=100, description="factor on the level at branching steps (window or "
                                                               "split steps; BranchGRPO's split noise scale)")

    @model_validator(mode="after")
    def _levels_given(self) -> NoiseSpec:
        if self.kind == "per-step" and not self.levels:
            raise ValueError("noise.kind = per-step needs noise.levels, one level per sampling step")
        if self.levels is not None and any(not (0 < a <= 10) for a in self.levels):
            raise ValueError(f"noise.levels must lie in (0, 10], got {self.levels}")
        return self

    def at_depth(self, depth: int, num_layers: int) -> float:
        if self.kind != "linear" or num_layers <= 0:
            return self.level
        return self.level * (1.0 + self.beta * depth / num_layers)

    def at(self, step: int, depth: int, num_layers: int) -> float:
        """Level ``a`` at sampling step ``step`` (window depth ``depth``, -1 outside the window)."""
        scale = self.branch_scale if depth >= 0 and self.branch_scale != 1.0 else 1.0
        if self.kind == "per-step":
            assert self.levels is not None
            return self.levels[step] * scale
        return self.at_depth(max(depth, 0), num_layers) * scale


# ----------------------------------------------------------------------------------------------
# SDE step families (the transition of every stochastic step, in sampling and in the update)


class FlowSDESpec(Part):
    """Flow-GRPO SDE step: ``std_t = a sqrt(s / (1 - s))``, ``dt = s_next - s < 0``,
    ``mean = x (1 + std_t^2 dt / (2 s)) + v (1 + std_t^2 (1 - s) / (2 s)) dt``, transition std
    ``std_t sqrt(-dt)``; ``a`` comes from the noise schedule."""

    kind: Literal["flow-sde"] = "flow-sde"


class DanceSDESpec(Part):
    """DanceGRPO's ``flux_step`` (MixGRPO's default): ``x0 = x - s v``,
    ``score = -(x - (1 - s) x0) / s^2``, ``mean = x + dt (v - a^2 score / 2)``, transition std
    ``a sqrt(s - s_next)``; ``a`` (DanceGRPO's eta) comes from the noise schedule."""

    kind: Literal["dance-sde"] = "dance-sde"


class CPSSpec(Part):
    """Flow-GRPO's coefficients-preserving sampler: transition std ``s_next sin(a pi / 2)``,
    ``mean = (1 - s_next) x0 + sqrt(s_next^2 - std^2) x1`` (``x1 = x + (1 - s) v``); log-prob
    ``-mean((x_next - mean)^2)`` as Flow-GRPO; ``a`` in ``(0, 1]`` from the noise schedule."""

    kind: Literal["cps"] = "cps"


class ODESpec(Part):
    """Deterministic Euler step ``x + (s_next - s) v`` everywhere: no transition density, so a recipe
    with this family has no trained edges (for sampling-only recipes)."""

    kind: Literal["ode"] = "ode"


# ----------------------------------------------------------------------------------------------
# advantage estimators and loss terms: each class is its own part (spec and runtime object), in
# treesdk.advantages and treesdk.losses; the *Spec names are the recipe-side names of the same classes

GroupAdvantageSpec = GroupAdvantage
TreeBackupSpec = TreeBackupAdvantage
DepthwiseSpec = DepthwiseAdvantage
ClippedSurrogateSpec = ClippedSurrogate
LayerTuningSpec = LayerTuningSFT
KLSpec = KLToReference


# ----------------------------------------------------------------------------------------------
# optimisation


class OptimSpec(Part):
    """The optimiser, its lr schedule over the run, and the update schedule of one iteration
    (``passes x minibatches`` optimiser steps; see :mod:`treesdk.training.optimisation.optimization`)."""

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
    """A whole algorithm. See the presets in :mod:`treesdk.recipes.presets`."""

    name: str = Field("custom", description="recipe name")
    steps: int = Field(10, ge=1, le=1000, description="sampling steps T")
    tree: TreeSpec = Field(default_factory=TreeSpec)
    window: WindowSpec = Field(default_factory=FixedWindow)
    noise: NoiseSpec = Field(default_factory=NoiseSpec)
    sde: _slot("sde", "flow-sde") = Field(default_factory=FlowSDESpec, description="SDE step family of the stochastic steps")
    advantage: _slot("advantage") = Field(default_factory=TreeBackupSpec, description="advantage estimator")
    losses: list[_slot("loss")] = Field(default_factory=lambda: [ClippedSurrogateSpec()], min_length=1, description="weighted loss terms")
    optim: OptimSpec = Field(default_factory=OptimSpec)
    chunk: int = Field(64, ge=1, description="max nodes per velocity call (sampling; training and decode too unless "
                                             "train_chunk / decode_chunk say otherwise)")
    train_chunk: int | None = Field(None, ge=1, description="max nodes per training velocity call (None = chunk)")
    decode_chunk: int | None = Field(None, ge=1, description="max leaves per VAE decode call (None = chunk)")

    @property
    def training_chunk(self) -> int:
        """Rows per training velocity call: ``train_chunk``, else ``chunk``."""
        return self.train_chunk or self.chunk

    @property
    def decoding_chunk(self) -> int:
        """Leaves per decode call: ``decode_chunk``, else ``chunk``."""
        return self.decode_chunk or self.chunk

    @model_validator(mode="after")
    def _window_fits(self) -> Recipe:
        T, d = self.steps, self.tree.d
        if self.noise.kind == "per-step" and len(self.noise.levels or []) != T:
            raise ValueError(f"noise.levels has {len(self.noise.levels or [])} values, expected one per step (steps = {T})")
        if d > T:
            raise ValueError(f"tree.d = {d} exceeds steps = {T}: the window must fit in the T sampling steps")
        win = self.window
        splits = self.branch_steps
        if splits is not None:
            if self.tree.split_steps is None and len(set(splits)) != len(splits):
                raise ValueError(f"tree.split_fractions {self.tree.split_fractions} fall on the steps {splits} at steps = {T}: "
                                 "two split points share a step; raise steps or give tree.split_steps")
            if splits and splits[-1] >= T:
                raise ValueError(f"tree.split_steps {splits} reach past steps = {T}: every split step must be < T")
            return self
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

    @model_validator(mode="after")
    def _trained_edges_have_a_density(self) -> Recipe:
        if self.sde.kind == "ode" and (self.tree.d > 0 or self.tree.sde_outside_window):
            raise ValueError("sde kind 'ode' has no transition density, so the window's edges (tree.d > 0) and "
                             "tree.sde_outside_window cannot be trained; use sde kind 'flow-sde', 'dance-sde' or 'cps'")
        return self

    def window_start(self, iteration: int, seed: int) -> int:
        """Start step of the branching window at ``iteration``, deterministic in ``seed`` and
        ``iteration``: fixed: ``start``; sliding: ``start + stride * (iteration // every)`` wrapped
        into ``[start, max_start]``; random: truncated geometric, drawn from a generator seeded by
        ``(seed, iteration)`` so every rank and every resume draws the same value.
        A tree with split points has no window: its first split step."""
        splits = self.branch_steps
        if splits is not None:
            return splits[0] if splits else 0
        return self.window.start_at(iteration, seed, self.steps, self.tree.d)

    @property
    def branch_steps(self) -> list[int] | None:
        """The tree's split points as steps of ``[0, steps)``: ``tree.split_steps``, or
        ``tree.split_fractions`` at this recipe's ``steps`` (``floor(f * T + 0.5)``); None for a
        window tree."""
        if self.tree.split_steps is not None:
            return list(self.tree.split_steps)
        if self.tree.split_fractions is not None:
            return [int(f * self.steps + 0.5) for f in self.tree.split_fractions]
        return None


# ----------------------------------------------------------------------------------------------
# the built-in parts, declared once; see treesdk.recipes.parts


for _decl in (
    PartDecl("tree", TreeSpec, node="tree", kind="tree"),
    PartDecl("window", FixedWindow, node="fixed-window"),
    PartDecl("window", SlidingWindow, node="sliding-window"),
    PartDecl("window", RandomWindow, node="random-window"),
    PartDecl("noise", NoiseSpec, node="noise-schedule", kind="noise-schedule"),
    PartDecl("sde", FlowSDESpec, build=lambda spec: SDE_FAMILIES["flow-sde"]),
    PartDecl("sde", DanceSDESpec, build=lambda spec: SDE_FAMILIES["dance-sde"]),
    PartDecl("sde", CPSSpec, build=lambda spec: SDE_FAMILIES["cps"]),
    PartDecl("sde", ODESpec, build=lambda spec: SDE_FAMILIES["ode"]),
    PartDecl("advantage", GroupAdvantage, node="group-advantage"),  # estimators and loss terms are their own runtime objects
    PartDecl("advantage", TreeBackupAdvantage),
    PartDecl("advantage", DepthwiseAdvantage, node="depthwise-advantage"),
    PartDecl("loss", ClippedSurrogate),
    PartDecl("loss", LayerTuningSFT),
    PartDecl("loss", KLToReference),
    PartDecl("optim", OptimSpec, node="adamw", kind="adamw"),
):
    declare(_decl)

__all__ = [
    "ClippedSurrogateSpec",
    "CPSSpec",
    "DanceSDESpec",
    "DepthwiseSpec",
    "FixedWindow",
    "FlowSDESpec",
    "ODESpec",
    "GroupAdvantageSpec",
    "KLSpec",
    "LayerTuningSpec",
    "NoiseSpec",
    "OptimSpec",
    "PruneSpec",
    "RandomWindow",
    "Recipe",
    "SlidingWindow",
    "TreeBackupSpec",
    "TreeSpec",
    "nfe_per_tree",
]
