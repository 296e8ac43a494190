"""Where a run's metrics, sample grids and reward histograms go (``--report-to jsonl,tensorboard,wandb``).

* ``jsonl``: ``RUN/metrics.jsonl``, one JSON line per iteration and per evaluation (``"eval": true``).
  A run folder always has it (it is the run's record, read by tools and tests): a run folder gets
  it whatever ``report_to`` says.
  Lines are strict JSON (NaN/inf as ``null``). On resume the lines past the checkpoint's
  iteration are dropped first (atomic rewrite), so the file describes
  exactly the iterations the weights went through. Images are not written there (they are
  ``RUN/samples/*.png``); histograms neither.
* ``tensorboard``: ``RUN/tb/`` events: scalars under ``train/`` and ``eval/``, sample grids
  (``add_image``) and reward histograms (``add_histogram``).
* ``wandb``: Weights & Biases, optional (``pip install wandb``). Its files go to ``RUN/wandb/``;
  the run id is derived from the run folder so a resumed run continues the same wandb run. The
  mode is ``WANDB_MODE`` when set; otherwise ``online`` when an API key is configured
  (``WANDB_API_KEY`` or ``wandb login``), else ``offline`` (nothing leaves the machine;
  ``wandb sync RUN/wandb/offline-run-*`` uploads later). The project is ``WANDB_PROJECT`` or ``treesdk``.

Every logger is written by rank 0 only (the trainer creates them there). ``step`` is the iteration.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from treesdk.io import strict_json_line, truncate_jsonl
from treesdk.suggest import unknown_name_message

#: logger names understood by :func:`build_loggers`
LOGGERS = ("jsonl", "tensorboard", "wandb")
#: what ``report_to=None`` means
DEFAULT_REPORT_TO = ("jsonl", "tensorboard")


def _scalars(row: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in row.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "iteration"}


class Logger:
    """Base class: every method may be a no-op."""

    name = "logger"

    def log_metrics(self, row: Mapping[str, Any], step: int) -> None:
        """One metrics row (evaluation rows carry ``"eval": True``)."""

    def log_images(self, tag: str, grid: Tensor, step: int) -> None:
        """A sample grid ``[3, H, W]`` float in ``[0, 1]``."""

    def log_histogram(self, tag: str, values: Tensor, step: int) -> None:
        """A 1-D tensor of values (e.g. every leaf's reward)."""

    def close(self) -> None:
        """Flush and release files."""


class JsonlLogger(Logger):
    name = "jsonl"

    def __init__(self, out_dir: Path, resume_from: int | None = None) -> None:
        self.path = Path(out_dir) / "metrics.jsonl"
        if resume_from is not None and self.path.is_file():  # drop lines past the checkpoint (atomic rewrite)
            truncate_jsonl(self.path, lambda row: row.get("iteration", 0) <= resume_from)

    def log_metrics(self, row: Mapping[str, Any], step: int) -> None:  # noqa: ARG002 - the row holds it
        with open(self.path, "a") as handle:
            handle.write(strict_json_line(dict(row)) + "\n")  # NaN/inf written as null


class TensorBoardLogger(Logger):
    name = "tensorboard"

    def __init__(self, out_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(Path(out_dir) / "tb"))

    def log_metrics(self, row: Mapping[str, Any], step: int) -> None:
        prefix = "eval/" if row.get("eval") else "train/"
        for key, value in _scalars(row).items():
            self.writer.add_scalar(prefix + key, value, step)
        self.writer.flush()

    def log_images(self, tag: str, grid: Tensor, step: int) -> None:
        self.writer.add_image(tag, grid.detach().float().clamp(0, 1).cpu(), step, dataformats="CHW")
        self.writer.flush()

    def log_histogram(self, tag: str, values: Tensor, step: int) -> None:
        self.writer.add_histogram(tag, values.detach().float().cpu(), step)

    def close(self) -> None:
        self.writer.close()


def wandb_mode(environ: Mapping[str, str] | None = None) -> str:
    """``WANDB_MODE`` if set; ``online`` with an API key (env or ``~/.netrc``); else ``offline``."""
    env = os.environ if environ is None else environ
    if env.get("WANDB_MODE"):
        return env["WANDB_MODE"]
    if env.get("WANDB_API_KEY"):
        return "online"
    netrc = Path(env.get("NETRC", Path.home() / ".netrc"))
    try:
        return "online" if "api.wandb.ai" in netrc.read_text() else "offline"
    except OSError:
        return "offline"


class WandbLogger(Logger):
    name = "wandb"

    def __init__(self, out_dir: Path, config: Mapping[str, Any] | None = None, resume: bool = False) -> None:
        try:
            import wandb
        except ImportError:
            raise ValueError("--report-to wandb needs the wandb package: pip install wandb "
                             "(or drop wandb from --report-to)") from None
        self.wandb = wandb
        out = Path(out_dir).resolve()
        run_id = "treesdk-" + hashlib.sha1(str(out).encode()).hexdigest()[:12]
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "treesdk"), name=out.name, id=run_id, dir=str(out),
            config=dict(config or {}), mode=wandb_mode(), resume="allow" if resume else None,
            settings=wandb.Settings(silent=True),
        )

    def log_metrics(self, row: Mapping[str, Any], step: int) -> None:
        prefix = "eval/" if row.get("eval") else "train/"
        self.run.log({prefix + k: v for k, v in _scalars(row).items()}, step=step)

    def log_images(self, tag: str, grid: Tensor, step: int) -> None:
        array = (grid.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype("uint8")
        self.run.log({tag: self.wandb.Image(array)}, step=step)

    def log_histogram(self, tag: str, values: Tensor, step: int) -> None:
        self.run.log({tag: self.wandb.Histogram(values.detach().float().cpu().numpy())}, step=step)

    def close(self) -> None:
        self.run.finish()


class Loggers(Logger):
    """Several loggers behind one object (what the trainer holds); empty for ranks other than 0."""

    name = "loggers"

    def __init__(self, loggers: Sequence[Logger] = ()) -> None:
        self.loggers = list(loggers)

    @property
    def names(self) -> list[str]:
        return [logger.name for logger in self.loggers]

    def log_metrics(self, row: Mapping[str, Any], step: int) -> None:
        for logger in self.loggers:
            logger.log_metrics(row, step)

    def log_images(self, tag: str, grid: Tensor, step: int) -> None:
        for logger in self.loggers:
            logger.log_images(tag, grid, step)

    def log_histogram(self, tag: str, values: Tensor, step: int) -> None:
        values = torch.as_tensor(values).flatten()
        if values.numel():
            for logger in self.loggers:
                logger.log_histogram(tag, values, step)

    def log_reward_histograms(self, leaf_rewards: Tensor, scores: Mapping[str, Tensor], step: int) -> None:
        """Histograms of an iteration's weighted leaf rewards (``train/leaf_reward``) and of each
        reward's raw scores (``train/<name>``)."""
        self.log_histogram("train/leaf_reward", leaf_rewards, step)
        for name, values in scores.items():
            self.log_histogram(f"train/{name}", values, step)

    def close(self) -> None:
        for logger in self.loggers:
            logger.close()


def parse_report_to(report_to: str | Sequence[str] | None) -> list[str]:
    """``"tensorboard,wandb"`` / ``["jsonl", "wandb"]`` -> checked names; ``None`` -> the default;
    ``"none"`` -> none. Unknown names are a one-line error listing the valid ones, closest first."""
    if report_to is None:
        return list(DEFAULT_REPORT_TO)
    items = [report_to] if isinstance(report_to, str) else list(report_to)
    names = [n.strip().lower() for item in items for n in str(item).split(",") if n.strip()]
    if names in (["none"], []):
        return []
    if "none" in names:
        raise ValueError("'none' turns every logger off and cannot be combined with others; give it alone or drop it")
    if "all" in names:
        names = list(LOGGERS)
    for name in names:
        if name not in LOGGERS:
            raise ValueError(f"{unknown_name_message('logger', name, LOGGERS)}; or 'none' alone")
    if "wandb" in names and importlib.util.find_spec("wandb") is None:  # fail before any model is loaded
        raise ValueError("--report-to wandb needs the wandb package: pip install wandb (or drop wandb from --report-to)")
    return list(dict.fromkeys(names))


def build_loggers(report_to: str | Sequence[str] | None, out_dir: str | Path | None, *,
                  config: Mapping[str, Any] | None = None, resume_from: int | None = None) -> Loggers:
    """``metrics.jsonl`` and the loggers named in ``report_to``, writing into the run folder
    ``out_dir`` (None: none).

    ``resume_from`` is the checkpoint's iteration when the run resumes (metrics.jsonl is cut
    there; wandb continues the same run)."""
    names = parse_report_to(report_to)
    if out_dir is None:
        return Loggers()
    names = ["jsonl", *(n for n in names if n != "jsonl")]  # metrics.jsonl is the run folder's record
    out = Path(out_dir)
    built: list[Logger] = []
    for name in names:
        if name == "jsonl":
            built.append(JsonlLogger(out, resume_from))
        elif name == "tensorboard":
            built.append(TensorBoardLogger(out))
        elif name == "wandb":
            built.append(WandbLogger(out, config, resume=resume_from is not None))
    return Loggers(built)
