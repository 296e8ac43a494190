"""Run folders of treesdk's first release (0.1, written before :class:`RunConfig` existed), read as they are.

The first release wrote ``RUN/config.json`` as a plain mapping::

    {"backend": {"name": ..., "options": {...}, "describe": {...}}, "recipe": {... resolved ...},
     "rewards": {"digit-classifier": 1.0}, "eval_rewards": ["digit-evaluator"],
     "iters": 60, "batch": 8, "seed": 0, "world_size": 1, "cli": {"algo": ..., "config": ...}}

and ``RUN/checkpoints/iter_NNNNNN/state.json`` without the size and SHA-256 of its files. Both are
accepted today:

* :func:`upgrade_run_data` turns such a ``config.json`` into the data of a :class:`RunConfig` **in
  memory** (the file is never rewritten): the recipe stays inline, with the fields added since
  pinned to what the first release computed (:data:`FIRST_RELEASE_RECIPE`); rewards and weights,
  held-out rewards, batch, iterations, seed and the backend's name, options and facts carry over;
  ``world_size`` and ``cli`` (facts, not settings) are dropped; the precision it trained in
  (``describe["dtype"]``) becomes ``dtype`` for its own backends. The first release did not record
  the training prompts (``--prompts``) or reward options (``--reward-opt``): the config reads the
  backend's default prompts and no options, and ``--resume`` accepts them again
  (:func:`resume_harmless_fields`).
* A checkpoint without checksums is checked for structure only (every safetensors header must
  account for the bytes of its file, so a truncated file still fails) and used with a warning
  (:func:`warn_unverified`). ``--resume`` writes its *new* checkpoints in the current format.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

_log = logging.getLogger("treesdk")

#: the version that wrote such run folders, as named in messages
FIRST_RELEASE = "treesdk 0.1 (first release)"

#: top-level keys of a first-release ``config.json`` that the current format has under the same name
_CARRIED = ("backend", "recipe", "rewards", "eval_rewards", "iters", "batch", "seed")
#: top-level keys the first release wrote that are facts about the run, not settings (dropped)
_FACTS = ("world_size", "cli")

#: the first release's own backends, which all take a ``dtype`` option (its precision came from
#: the backend's default, recorded in ``describe``; today CPU runs default to float32 instead)
_OWN_BACKENDS = ("digits", "flux", "sd3")

#: recipe fields added after the first release, at the values that reproduce its computation
#: (dotted path -> value; ``advantage.backup`` only for the ``tree-backup`` estimator that has it)
FIRST_RELEASE_RECIPE: dict[str, Any] = {
    "sde.kind": "flow-sde",            # the Flow-GRPO SDE, the only one of the first release
    "advantage.std": "population",     # leaf normalisation by the population std (unbiased=False)
    "advantage.backup": "softmax",     # TreeGRPO backup: softmax over sibling log-probs
    "optim.optimizer": "adamw",        # torch.optim.AdamW, the only optimiser of the first release
    "optim.lr_schedule": "constant",   # no schedule, no warm-up
    "optim.lr_warmup": 0,
}

_WARNED: set[str] = set()


def is_first_release_config(data: Any) -> bool:
    """Whether parsed ``config.json`` data was written by the first release: a mapping with its
    top-level ``world_size`` fact (every first-release run wrote it, no :class:`RunConfig` has it)
    and an inline recipe mapping."""
    return isinstance(data, Mapping) and "world_size" in data and isinstance(data.get("recipe"), Mapping)


def _pin_recipe(recipe: Mapping[str, Any]) -> dict[str, Any]:
    """``recipe`` with each field of :data:`FIRST_RELEASE_RECIPE` it lacks set to the first release's value."""
    pinned = copy.deepcopy(dict(recipe))
    for dotted, value in FIRST_RELEASE_RECIPE.items():
        section, name = dotted.split(".")
        if dotted == "advantage.backup" and (pinned.get("advantage") or {}).get("kind") != "tree-backup":
            continue
        part = pinned.setdefault(section, {})
        if isinstance(part, dict):
            part.setdefault(name, value)
    return pinned


def upgrade_run_data(data: Mapping[str, Any], source: str = "config.json") -> dict[str, Any]:
    """The :class:`RunConfig` data of a first-release ``config.json`` (see the module docstring);
    logs one warning per ``source`` saying what was read and what the first release did not record.
    Keys it does not know (facts a script passed to ``treesdk.train(config=...)``) are dropped and named."""
    out: dict[str, Any] = {key: copy.deepcopy(data[key]) for key in _CARRIED if key in data}
    backend = dict(out.get("backend") or {})
    out["backend"] = {key: backend[key] for key in ("name", "options", "describe") if key in backend}
    out["recipe"] = _pin_recipe(data["recipe"])
    dtype = (out["backend"].get("describe") or {}).get("dtype")
    if out["backend"].get("name") in _OWN_BACKENDS and dtype and "dtype" not in (out["backend"].get("options") or {}):
        out["dtype"] = dtype  # the precision it trained in, kept on resume/sample/eval whatever the device
    rewards = out.get("rewards")
    if isinstance(rewards, Mapping):
        out["rewards"] = {str(n): ({"weight": w} if isinstance(w, (int, float)) else w) for n, w in rewards.items()}
    if "eval_rewards" in out and out["eval_rewards"] is not None:
        out["eval_rewards"] = {str(n): {} for n in out["eval_rewards"]}
    dropped = sorted(set(data) - set(_CARRIED) - set(_FACTS))
    if source and source not in _WARNED:  # "": no warning (a second look at the same data)
        _WARNED.add(source)
        _log.warning(
            "warning: %s was written by %s; it is read as today's run configuration in memory and left as it is. "
            "That release did not record the training prompts or reward options: the backend's default prompts "
            "are assumed (pass --prompts/--reward-opt again when resuming)%s", source, FIRST_RELEASE,
            f"; ignored keys: {', '.join(dropped)}" if dropped else "")
    return out


def resume_harmless_fields(stored: Mapping[str, Any]) -> tuple[str, ...]:
    """Fields ``--resume`` may set on a first-release run beyond the usual ones: what that release
    never recorded (the prompts, every reward's options; the dtype of a backend not its own);
    ``()`` for a current run folder.
    ``stored``: the raw ``config.json`` data."""
    if not is_first_release_config(stored):
        return ()
    names = [*(stored.get("rewards") or {}), *(stored.get("eval_rewards") or [])]
    dtype = () if "dtype" in upgrade_run_data(stored, "") else ("dtype",)
    return ("prompts", "reward_options", *dtype, *(f"rewards.{n}.options" for n in names),
            *(f"eval_rewards.{n}.options" for n in names))


def warn_unverified(folder: str | Path) -> None:
    """Say once per checkpoint folder that it has no checksums (first release) and was checked
    for structure only."""
    key = str(Path(folder).resolve())
    if key in _WARNED:
        return
    _WARNED.add(key)
    _log.warning("warning: checkpoint %s has no checksums (written by %s): its files are complete, but their "
                 "contents could not be verified", folder, FIRST_RELEASE)


__all__ = ["FIRST_RELEASE", "FIRST_RELEASE_RECIPE", "is_first_release_config", "resume_harmless_fields",
           "upgrade_run_data", "warn_unverified"]
