"""The interfaces every part of treesdk is written against, and the data passed between them.

Conventions shared by all of them:

* Rectified flow as in diffusers: ``x_sigma = (1 - sigma) * x0 + sigma * noise`` with ``sigma`` in
  ``[0, 1]``; ``sigma = 1`` is pure noise, sampling walks sigma *down* a grid ``1 = s_0 > ... > s_T = 0``.
* A velocity model predicts ``v = noise - x0``.
* Latents are float tensors ``[B, *latent_shape]``; the leading dimension is always the batch.
* Log-probabilities of transitions are Gaussian log densities **averaged over all non-batch
  elements** (one scalar per sample), never summed.
* Images are float tensors in ``[0, 1]``, shape ``[B, 3, H, W]`` (a one-channel backend repeats its
  channel).
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

#: A backend's encoded prompt batch: every tensor has the batch as its first dimension, so the
#: sampler can select rows with :func:`select_cond`. What the keys mean is the backend's business
#: (CLIP/T5 embeddings, pooled projections, the unconditional half for CFG, ...).
Cond = dict[str, Tensor]


#: an SDE family's transition: ``(x, v, sigma, sigma_next, noise_level) -> (mean, std)``, mean
#: float32 ``[B, ...]``, std the transition std (broadcastable to ``x``)
MeanStd = Callable[[Tensor, Tensor, Any, Any, Any], tuple[Tensor, Tensor]]


def select_cond(cond: Cond, index: Tensor) -> Cond:
    """Rows ``index`` (a 1-D long tensor) of every tensor in ``cond``."""
    return {key: value.index_select(0, index.to(value.device)) for key, value in cond.items()}


class FlowModel(ABC):
    """What a model must provide (the narrow backend contract): prompts -> conditioning,
    ``(x, sigma, cond) -> v``, latents -> images, the sigma grid, and its trainable part.

    Abstract: :attr:`latent_shape`, :attr:`device`, :meth:`encode`, :meth:`velocity`,
    :meth:`decode`, :meth:`sigmas`, :meth:`trainable_parameters`, :meth:`trainable_state_dict`,
    :meth:`load_trainable_state_dict`. Optional: :meth:`reference` (adapter off, for KL),
    :meth:`train_mode`, :meth:`fsdp_modules`. Classifier-free guidance and guidance embeddings live
    *inside* :meth:`velocity`; callers see one velocity per latent. ``treesdk.testing`` checks every
    method (``check_backend``).
    """

    #: registry name, e.g. ``"flux"``
    name: str = "velocity-model"

    @property
    @abstractmethod
    def latent_shape(self) -> tuple[int, ...]:
        """Shape of one latent without the batch dimension (at the configured resolution)."""

    @property
    @abstractmethod
    def device(self) -> torch.device:
        """Device the transformer runs on; latents are created there."""

    @abstractmethod
    def encode(self, prompts: Sequence[str]) -> Cond:
        """Encode ``B`` prompts into a :data:`Cond` whose tensors all have leading dimension ``B``.

        Raises ``ValueError`` naming the prompt for prompts the backend cannot condition on.
        """

    @abstractmethod
    def velocity(self, x: Tensor, sigma: Tensor, cond: Cond) -> Tensor:
        """Predicted velocity ``v = noise - x0``.

        Args:
            x: latents ``[B, *latent_shape]`` (any float dtype; the backend casts to its own).
            sigma: noise level per sample, ``[B]``, in ``[0, 1]`` (1 = pure noise).
            cond: conditioning with leading dimension ``B``.

        Returns:
            ``[B, *latent_shape]`` in ``x``'s dtype. Differentiable w.r.t. the trainable parameters
            when called with gradients enabled.
        """

    @abstractmethod
    def decode(self, x: Tensor) -> Tensor:
        """Latents ``[B, *latent_shape]`` at sigma 0 -> images ``[B, 3, H, W]`` float in ``[0, 1]``."""

    @abstractmethod
    def sigmas(self, num_steps: int) -> Tensor:
        """The backend's sigma grid for ``num_steps`` steps: float32 ``[num_steps + 1]``, from 1
        (or the shifted maximum) down to 0, with the backend's time shift applied."""

    @abstractmethod
    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """Parameters the optimiser updates (LoRA weights, or the whole transformer)."""

    @abstractmethod
    def trainable_state_dict(self) -> dict[str, Tensor]:
        """The trainable weights by stable names, for checkpoints (safetensors)."""

    @abstractmethod
    def load_trainable_state_dict(self, state: Mapping[str, Tensor]) -> None:
        """Inverse of :meth:`trainable_state_dict`; raises on missing or unexpected keys."""

    def reference(self) -> contextlib.AbstractContextManager[None]:
        """Context in which :meth:`velocity` is the *base* policy (for KL).

        LoRA backends disable their adapter here, so no second copy of the model is kept. The
        default raises: a full fine-tune has no free reference.
        """
        raise NotImplementedError(
            f"backend {self.name!r} has no reference policy (KL needs a LoRA adapter to disable)"
        )

    def train_mode(self, enabled: bool = True) -> None:
        """Switch the trainable module between train and eval mode (dropout, checkpointing)."""

    def fsdp_modules(self) -> list[torch.nn.Module] | None:
        """The modules to wrap with FSDP2 ``fully_shard`` for ``--fsdp``, innermost first and the
        module holding all trainable parameters (the root) last, e.g. a transformer's blocks then
        the transformer. None (the default): this backend does not support FSDP. A backend that
        supports it only in some configurations (full fine-tune, not LoRA) raises ``ValueError``
        saying why in the others."""
        return None

#: iterations of a run that sets none, for a backend that names no ``default_iters`` of its own
DEFAULT_ITERS = 60


class ProductDefaults:
    """What the product adds on top of a model, each with a working default: training prompts and
    rewards, the evaluation set, scale-dependent recipe overrides, run-config facts, export formats.

    A backend overrides only what it knows better (the digits backend names its prompts and reward;
    the diffusers backends their export formats).
    """

    #: registry name, e.g. ``"flux"``
    name: str = "velocity-model"
    #: the recipe ``treesdk train`` runs when none is named (``RunConfig.recipe`` unset): a preset
    #: name, to which :meth:`recipe_defaults` then apply, or a complete recipe mapping (nested form,
    #: taken as is, like a recipe file). A class attribute, so a run can be checked before loading.
    default_recipe: ClassVar[str | Mapping[str, Any]] = "treegrpo"
    #: iterations of a run that does not set ``iters`` (sized so the default run is a few minutes
    #: on the machine the backend is made for)
    default_iters: ClassVar[int] = DEFAULT_ITERS

    def default_prompts(self) -> list[str]:
        """Training prompts used when the user gives none."""
        return [
            "a photo of a cat sitting on a windowsill",
            "a watercolor painting of a lighthouse at dawn",
            "a red bicycle leaning against a brick wall",
            "a bowl of ramen, studio lighting",
        ]

    def default_rewards(self) -> dict[str, float]:
        """Training rewards (name -> weight) used when the user names none; empty = must be given."""
        return {}

    def heldout_rewards(self) -> list[str]:
        """Rewards scored only at evaluation (to show reward hacking); empty when none is known."""
        return []

    def reference_images(self, prompts: Sequence[str]) -> dict[str, Tensor]:
        """Real images of what each prompt should look like, for fidelity and coverage (precision and
        recall, :mod:`treesdk.diversity`): ``{prompt: images float [M, 3, H, W] in [0, 1]}`` for the
        prompts among ``prompts`` that have them; empty (the default) when the backend has none."""
        return {}

    def fidelity_features(self, images: Tensor) -> Tensor | None:
        """Features for precision, recall and diversity when no reward offers ``features``: float32
        ``[B, D]`` for images ``[B, 3, H, W]`` in ``[0, 1]``, or ``None`` (the default: flattened
        pixels are used). A backend whose images vary in ways the task ignores (a word's position on a
        sign) maps them out here, so distances measure what the task cares about."""
        return None

    def eval_set(self) -> tuple[list[str], list[int]]:
        """The fixed evaluation prompts and seeds (one image per pair)."""
        prompts = self.default_prompts()
        return prompts, list(range(len(prompts)))

    def recipe_defaults(self) -> dict[str, Any]:
        """Scale-dependent recipe overrides (dotted keys, e.g. ``{"optim.lr": 3e-4}``) applied to a
        preset before the user's own overrides; the papers' values are for multi-billion-parameter
        models."""
        return {}

    def describe(self) -> dict[str, Any]:
        """JSON-serialisable facts about the loaded model (for run configs and export metadata)."""
        return {"backend": self.name}

    def export(self, fmt: str, path: str, metadata: Mapping[str, str]) -> list[str]:
        """Write the trained policy in format ``fmt`` under ``path``; returns the files written.

        Backends list what they can write in :attr:`export_formats`.
        """
        raise ValueError(
            f"backend {self.name!r} cannot export format {fmt!r}; it supports: "
            f"{', '.join(self.export_formats) or 'nothing'}"
        )

    #: formats :meth:`export` understands
    export_formats: tuple[str, ...] = ()

    def default_export_format(self) -> str | None:
        """The format written into ``RUN/export/`` at the end of training (None: no export)."""
        return self.export_formats[0] if self.export_formats else None


class VelocityModel(FlowModel, ProductDefaults):
    """A backend: the model contract (:class:`FlowModel`) plus the product defaults
    (:class:`ProductDefaults`). Implementations subclass it, are registered under the
    ``treesdk.backends`` entry-point group and constructed by :func:`treesdk.load_backend`.
    """


class RewardModel(ABC):
    """Scores images against prompts. Registered under ``treesdk.rewards``.

    ``score`` runs under ``torch.no_grad()``, batches internally by :attr:`batch_size`, and returns
    one float32 value per image on the CPU. Higher is better.
    """

    name: str = "reward"
    batch_size: int = 32
    #: True for a reward that mostly waits (an HTTP service): the trainer then samples the trees of an
    #: iteration in groups and scores each group while the next is sampled (:mod:`treesdk.reward_scoring`)
    io_bound: bool = False

    @abstractmethod
    def score(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        """``images`` float ``[B, 3, H, W]`` in ``[0, 1]``, ``prompts`` B strings -> float32 ``[B]``."""

    def to(self, device: torch.device | str) -> RewardModel:
        """Move to ``device`` (default: no-op for weight-free rewards)."""
        return self


@dataclass
class TreeLayer:
    """One stochastic step of the sampled forest: every parent gets ``k`` children.

    Parents are ordered prompt-major (all nodes of prompt 0, then prompt 1, ...); child ``j`` of
    parent ``n`` is node ``n * k + j`` of the next layer (or leaf list), so the structure is implicit.

    Attributes:
        step: index ``i`` in the sigma grid; the transition goes ``sigmas[i] -> sigmas[i + 1]``.
        depth: depth of the parents inside the branching window (0 for the first window step); -1
            for stochastic steps outside the window (GRPO).
        sigma, sigma_next: python floats of the transition.
        noise_scale: the noise level ``a`` used (noise level times depth factor).
        k: children per parent.
        parents: ``[N, *latent]`` parent states (float32).
        children: ``[N, k, *latent]`` child states (float32).
        log_probs: ``[N, k]`` behaviour log-probs (averaged over elements).
        velocity: ``[N, *latent]`` behaviour velocity of each parent (detached).
        parent_prompt: ``[N]`` long, prompt index of each parent.
        leaves_below: leaves under each child (product of the later branching factors).
    """

    step: int
    depth: int
    sigma: float
    sigma_next: float
    noise_scale: float
    k: int
    parents: Tensor
    children: Tensor
    log_probs: Tensor
    velocity: Tensor
    parent_prompt: Tensor
    leaves_below: int = 1

    @property
    def num_parents(self) -> int:
        return int(self.parents.shape[0])

    @property
    def num_edges(self) -> int:
        return self.num_parents * self.k


@dataclass
class Forest:
    """Trees for ``P`` prompts sampled in one iteration, with everything training needs.

    Attributes:
        prompts: the ``P`` prompts.
        cond: the backend conditioning for the ``P`` prompts (leading dim ``P``).
        sigmas: the grid used, ``[T + 1]``.
        layers: the stochastic steps in order (the trainable edges).
        leaves: ``[P * L, *latent]`` final latents at sigma 0, prompt-major.
        leaves_per_prompt: ``L``.
        window_start: first step of the branching window.
        nfe: velocity evaluations the sampler made (one per node per step it computed).
        mean_std: the SDE family's transition ``(x, v, sigma, sigma_next, noise_level) -> (mean,
            std)`` the stochastic steps were sampled with; the update recomputes log-probs with it.
    """

    prompts: list[str]
    cond: Cond
    sigmas: Tensor
    layers: list[TreeLayer]
    leaves: Tensor
    leaves_per_prompt: int
    window_start: int
    nfe: int
    mean_std: MeanStd

    @property
    def num_prompts(self) -> int:
        return len(self.prompts)

    @property
    def leaf_prompt(self) -> Tensor:
        """``[P * L]`` prompt index of each leaf."""
        return torch.arange(self.num_prompts).repeat_interleave(self.leaves_per_prompt)


@dataclass
class EdgeAdvantages:
    """Per-layer training targets computed by an :class:`AdvantageEstimator`.

    For layer ``l`` with ``N`` parents, ``k`` children and ``M`` terms per edge:
    ``advantages[l]`` and ``clip_rewards[l]`` are ``[N, k, M]``. ``M = 1`` under ``edge`` attribution
    (one backed-up advantage per edge); under ``path`` attribution ``M`` is the number of leaves below
    the edge and term ``m`` carries leaf ``m``'s advantage (each root-to-leaf path is a trajectory).
    ``clip_rewards`` are the raw (weighted) rewards used by reward-adaptive clipping.
    ``leaf_advantages`` ``[P * L]`` and ``leaf_rewards`` ``[P * L]`` are kept for metrics and SFT.
    ``trained``: per layer ``[N]`` bool, the parents whose edges the update trains (None: all;
    BranchGRPO's pruning, :mod:`treesdk.pruning`).
    """

    advantages: list[Tensor]
    clip_rewards: list[Tensor]
    leaf_advantages: Tensor
    leaf_rewards: Tensor
    trained: list[Tensor] | None = None


class AdvantageEstimator(ABC):
    """Rewards on the leaves of a :class:`Forest` -> advantages on its edges."""

    @abstractmethod
    def __call__(self, forest: Forest, rewards: Mapping[str, Tensor], weights: Mapping[str, float]) -> EdgeAdvantages:
        """``rewards[name]`` is float32 ``[P * L]`` (prompt-major leaves); ``weights[name]`` its weight."""


@dataclass
class EdgeBatch:
    """What a :class:`LossTerm` sees for one chunk of parents of one layer.

    Shapes: ``N`` parents, ``k`` children, ``M`` terms per edge.

    Attributes:
        layer: the layer the chunk comes from (its step, depth, sigmas, noise level).
        old_log_probs: ``[N, k]`` behaviour log-probs.
        new_log_probs: ``[N, k]`` log-probs under the current parameters (differentiable).
        new_velocity: ``[N, *latent]`` current velocity of the parents (differentiable).
        advantages: ``[N, k, M]``.
        clip_rewards: ``[N, k, M]`` raw rewards for reward-adaptive clipping.
        new_mean: ``[N, *latent]`` SDE mean under current parameters (for KL), or None.
        ref_mean: ``[N, *latent]`` SDE mean under the reference policy, or None.
        std: transition std (scalar tensor) of the layer.
        sft_target: ``[N, *latent]`` detached LayerTuning target velocity, or None.
        kl_std: the std Flow-GRPO's KL divides by (``std_t``, without ``sqrt(-dt)``; see
            :class:`treesdk.sde.SDEFamily`), scalar tensor, or None.
        old_mean: ``[N, *latent]`` SDE mean of the behaviour policy (from the stored velocity), for
            GRPO-Guard's ratio normalisation, or None.
    """

    layer: TreeLayer
    old_log_probs: Tensor
    new_log_probs: Tensor
    new_velocity: Tensor
    advantages: Tensor
    clip_rewards: Tensor
    std: Tensor
    new_mean: Tensor | None = None
    ref_mean: Tensor | None = None
    sft_target: Tensor | None = None
    kl_std: Tensor | None = None
    old_mean: Tensor | None = None


class LossTerm(ABC):
    """One weighted term of the loss to minimise, composed by a recipe.

    :meth:`__call__` returns the term's **mean over its elements in this chunk** and the number of
    elements, so the trainer can weight chunks and the accumulated gradient is that of the mean over
    the whole iteration. It also returns metrics (floats) summed by the trainer with the same weights.
    """

    name: ClassVar[str] = "loss"
    #: set when the term needs ``EdgeBatch.ref_mean`` (one extra no-grad forward with the adapter off)
    needs_reference: ClassVar[bool] = False
    #: set when the term needs ``EdgeBatch.sft_target``
    needs_sft_target: ClassVar[bool] = False
    #: set when the term needs ``EdgeBatch.old_mean`` (the behaviour policy's SDE mean, no extra forward)
    needs_old_mean: ClassVar[bool] = False

    @abstractmethod
    def __call__(self, batch: EdgeBatch) -> tuple[Tensor, dict[str, float]]:
        """Scalar loss (mean over this chunk's terms) and metrics."""


def iter_chunks(n: int, size: int) -> Iterator[slice]:
    """Slices covering ``range(n)`` in order, each at most ``size`` long."""
    size = max(1, int(size))
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))
