"""Helpers shared by the CLI commands: loading parts by name, clean one-line errors."""

from __future__ import annotations

import contextlib
import sys
import os
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import typer
from rich.console import Console

from treesdk.errors import UserError

console = Console(stderr=False)
err_console = Console(stderr=True)


def user_error_types() -> tuple[type[BaseException], ...]:
    """The exception types :func:`clean_errors` prints as one line (imported lazily: start-up speed)."""
    from treesdk.errors import DistributedError, NonFiniteLossError, UserError
    from treesdk.recipes import RecipeError
    from treesdk.registry import PluginError
    from treesdk.rewards import NonFiniteRewardError

    types: list[type[BaseException]] = [UserError, RecipeError, PluginError, ValueError, OSError,
                                        DistributedError, NonFiniteRewardError, NonFiniteLossError]
    try:
        from treesdk_plugins.common import MissingExtraError

        types.append(MissingExtraError)
    except ImportError:  # pragma: no cover - plugins package not installed
        pass
    return tuple(types)


class _EchoHandler(logging.Handler):
    """Library warnings (logger ``treesdk``) as plain lines on the current stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        typer.echo(self.format(record), err=True)


def show_library_warnings() -> None:
    """Print the ``treesdk`` logger's warnings (a damaged checkpoint skipped, ...) on stderr, once."""
    logger = logging.getLogger("treesdk")
    if not any(isinstance(h, _EchoHandler) for h in logger.handlers):
        logger.addHandler(_EchoHandler(logging.WARNING))
        logger.propagate = False


def print_error(message: str) -> None:
    """``error: MESSAGE`` in red on stderr (rich markup in the message is not interpreted)."""
    err_console.print("[bold red]error:[/] ", end="", markup=True, highlight=False, soft_wrap=True)
    err_console.print(message, markup=False, highlight=False, soft_wrap=True)


@contextlib.contextmanager
def clean_errors() -> Iterator[None]:
    """Turn the errors a user can cause into one red line and exit code 1 (no traceback).

    User errors are :class:`treesdk.errors.UserError` and the other types of
    :func:`user_error_types` (``ValueError`` and ``OSError`` included: they are what input checks
    raise). Any other exception is a programming error and propagates with its traceback. Ctrl-C
    prints ``interrupted`` and exits 130. With ``--debug`` / ``TREESDK_DEBUG=1`` nothing is
    converted: every exception shows its traceback.
    """
    from treesdk.errors import debug_enabled

    try:
        yield
    except KeyboardInterrupt:
        if debug_enabled():
            raise
        err_console.print("[yellow]interrupted[/]", markup=True, highlight=False)
        raise typer.Exit(code=130) from None
    except Exception as exc:
        if debug_enabled() or not isinstance(exc, user_error_types()):
            raise
        print_error(str(exc))
        from treesdk.errors import DistributedError

        if isinstance(exc, DistributedError):
            # a failed collective leaves the process group's transport threads blocked; tearing them
            # down at interpreter exit can abort the process (SIGABRT) instead of exiting 1
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(1)
        raise typer.Exit(code=1) from None


def parse_rewards(options: Sequence[str] | None) -> dict[str, float]:
    """``["a", "b=0.2"]`` -> ``{"a": 1.0, "b": 0.2}``."""
    from treesdk.rewards import parse_reward_option

    return dict(parse_reward_option(o) for o in options or [])


def parse_reward_options(items: Sequence[str] | None) -> dict[str, dict[str, Any]]:
    """``["hpsv2.1:checkpoint=/p/HPS_v2.1_compressed.pt"]`` -> ``{"hpsv2.1": {"checkpoint": "/p/..."}}``
    (values parsed as YAML)."""
    from treesdk.safe_load import parse_value

    out: dict[str, dict[str, Any]] = {}
    for item in items or []:
        name, colon, rest = item.partition(":")
        key, eq, value = rest.partition("=")
        if not colon or not eq or not name.strip() or not key.strip():
            raise UserError(f"--reward-opt {item!r}: expected NAME:KEY=VALUE, e.g. hpsv2.1:checkpoint=/path/file.pt")
        out.setdefault(name.strip(), {})[key.strip()] = parse_value(value, f"--reward-opt {name.strip()}:{key.strip()}")
    return out


def check_reward_options(options: dict[str, dict[str, Any]], names: Sequence[str]) -> None:
    """Every ``--reward-opt`` must name a reward that is used."""
    unknown = sorted(set(options) - set(names))
    if unknown:
        raise UserError(f"--reward-opt names {unknown}, which are not among the rewards used: {list(names)}")


def load_rewards(names: Sequence[str], device: str | None, options: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Reward models by registry name with their ``--reward-opt`` options, on ``device``."""
    import treesdk

    options = options or {}
    models = {}
    for name in names:
        model = treesdk.load_reward(name, **options.get(name, {}))
        models[name] = model.to(device) if device else model
    return models


def backend_options(model: str | None, resolution: int | None, device: str | None, extra: Sequence[str] | None) -> dict[str, Any]:
    """Backend keyword options from the shared flags and ``--backend-opt KEY=VALUE`` (YAML values)."""
    from treesdk.safe_load import parse_value

    options: dict[str, Any] = {}
    if model is not None:
        options["model"] = model
    if resolution is not None:
        options["resolution"] = resolution
    if device is not None:
        from treesdk.devices import check_device_name

        options["device"] = check_device_name(device)
    for item in extra or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"--backend-opt {item!r}: expected KEY=VALUE")
        options[key.strip()] = parse_value(value, f"--backend-opt {key.strip()}")
    return options


def parse_overrides(items: Sequence[str] | None) -> dict[str, Any]:
    """``--set tree.k=3`` style recipe overrides (values parsed as YAML)."""
    from treesdk.safe_load import parse_value

    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"--set {item!r}: expected DOTTED.KEY=VALUE, e.g. --set noise.level=0.8")
        out[key.strip()] = parse_value(value, f"--set {key.strip()}")
    return out


def read_prompts(path: str | None) -> list[str] | None:
    """One prompt per non-empty line of ``path`` (None: no file)."""
    if path is None:
        return None
    from treesdk.safe_load import MAX_PROMPT_BYTES, read_text

    lines = [line.strip() for line in read_text(path, "prompt file", MAX_PROMPT_BYTES).splitlines()]
    prompts = [line for line in lines if line and not line.startswith("#")]
    if not prompts:
        raise UserError(f"prompt file {path} holds no prompts")
    return prompts


def prompt_seed_pairs(prompts: Sequence[str], seeds: int) -> tuple[list[str], list[int]]:
    """Every prompt with seeds ``0..seeds-1``: ``(prompts repeated, seeds)``, prompt-major."""
    return [p for p in prompts for _ in range(seeds)], [s for _ in prompts for s in range(seeds)]
