"""Entry-point registry: backends, rewards and algorithms, built-in or third-party alike.

Groups: ``treesdk.backends``, ``treesdk.rewards``, ``treesdk.algorithms``, and for recipe parts
``treesdk.losses``, ``treesdk.estimators``, ``treesdk.sde`` (each entry a
:class:`treesdk.recipes.parts.PartDecl`), and ``treesdk.recipe_forms`` (readers of recipe files
written in another form than the nested one: ``graph``, :func:`treesdk.nodes.graph.compile_graph`),
``treesdk.diffusers_families`` (the family adapters of the generic diffusers backend, each a
``treesdk_backends.diffusers.FamilyAdapter`` subclass). A third-party package registers a plugin with a few lines
of its ``pyproject.toml``::

    [project.entry-points."treesdk.rewards"]
    my-reward = "my_package.reward:MyReward"

Entry points are read with :func:`importlib.metadata.entry_points`. An entry that fails to import
is reported by name with its error (:func:`plugin_status`) and never breaks the others.
"""

from __future__ import annotations

import importlib.metadata as metadata
import traceback
from dataclasses import dataclass
from typing import Any

GROUPS = {
    "backend": "treesdk.backends",
    "reward": "treesdk.rewards",
    "algorithm": "treesdk.algorithms",
    "loss": "treesdk.losses",
    "estimator": "treesdk.estimators",
    "sde": "treesdk.sde",
    "recipe_form": "treesdk.recipe_forms",
    "diffusers_family": "treesdk.diffusers_families",
}


class PluginError(RuntimeError):
    """A registered plugin could not be found or imported."""


@dataclass(frozen=True)
class PluginInfo:
    """One registered entry point and whether it imports."""

    kind: str
    name: str
    value: str
    distribution: str | None
    version: str | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def _entry_points(kind: str) -> dict[str, metadata.EntryPoint]:
    if kind not in GROUPS:
        raise ValueError(f"unknown plugin kind {kind!r}; expected one of {sorted(GROUPS)}")
    found: dict[str, metadata.EntryPoint] = {}
    for ep in metadata.entry_points(group=GROUPS[kind]):
        found.setdefault(ep.name, ep)  # first distribution on sys.path wins, as importlib does
    return found


def available(kind: str) -> list[str]:
    """Registered names of ``kind`` (a key of :data:`GROUPS`), sorted."""
    return sorted(_entry_points(kind))


def entry_point_value(kind: str, name: str) -> str:
    """``"module:attribute"`` of the entry point registered as ``name`` in ``kind``'s group."""
    eps = _entry_points(kind)
    return eps[name].value if name in eps else "?"


def provider(kind: str, name: str, obj: Any = None) -> str:
    """Where the plugin ``name`` of ``kind`` comes from, for messages: ``"distribution NAME VERSION"``
    of its entry point, else the module of ``obj``'s class (a plugin passed in from Python)."""
    ep = _entry_points(kind).get(name)
    dist = getattr(ep, "dist", None) if ep is not None else None
    if dist is not None:
        return f"distribution {dist.metadata['Name']} {dist.version}"
    module = type(obj).__module__ if obj is not None else None
    return f"module {module}" if module else "an unregistered plugin"


def load(kind: str, name: str) -> Any:
    """Import and return the object registered as ``name`` in ``kind``'s group.

    Raises :class:`PluginError` naming the plugin, the entry point and the underlying error.
    """
    eps = _entry_points(kind)
    if name not in eps:
        raise PluginError(
            f"no {kind} named {name!r} is registered (entry-point group {GROUPS[kind]!r}); "
            f"available: {', '.join(sorted(eps)) or 'none'}"
        )
    ep = eps[name]
    try:
        return ep.load()
    except IMPORT_FAILURES as exc:  # any import failure is reported, not raised raw
        raise PluginError(f"{kind} plugin {name!r} ({ep.value}) failed to import: {describe_failure(exc)}") from exc


#: what a plugin's import may raise without taking treesdk down: any error, and ``SystemExit``
#: (a plugin calling ``sys.exit()`` at import). ``KeyboardInterrupt`` still stops the program.
IMPORT_FAILURES: tuple[type[BaseException], ...] = (Exception, SystemExit)


def describe_failure(exc: BaseException) -> str:
    """``TypeName: message`` of an import failure (``SystemExit`` says it called ``sys.exit``)."""
    if isinstance(exc, SystemExit):
        return f"SystemExit: the module called sys.exit({exc.code!r}) while being imported"
    return f"{type(exc).__name__}: {exc}"


def check_options(kind: str, name: str, factory: Any, options: dict[str, Any], flag: str) -> None:
    """Raise ``UserError`` when ``options`` holds keywords ``factory`` does not accept, naming them,
    the flag they came from (``--backend-opt``) and the accepted ones. Factories taking
    ``**kwargs`` accept everything."""
    import inspect

    from .errors import UserError

    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    accepted = [p for p, v in params.items() if v.kind in (v.POSITIONAL_OR_KEYWORD, v.KEYWORD_ONLY) and p != "self"]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        from .suggest import closest_first

        raise UserError(
            f"{flag}: {kind} {name!r} has no option {', '.join(map(repr, unknown))}; "
            f"its options are (closest first): {', '.join(closest_first(unknown[0], accepted)) or 'none'}"
        )


def plugin_status(kinds: tuple[str, ...] = tuple(GROUPS)) -> list[PluginInfo]:
    """Every registered entry point with its distribution, version and import status."""
    rows: list[PluginInfo] = []
    for kind in kinds:
        for name, ep in sorted(_entry_points(kind).items()):
            dist = getattr(ep, "dist", None)
            error = None
            try:
                ep.load()
            except IMPORT_FAILURES as exc:
                error = describe_failure(exc)
                last = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
                if last:
                    error += f" ({last[0].filename}:{last[0].lineno})"
            rows.append(
                PluginInfo(
                    kind=kind,
                    name=name,
                    value=ep.value,
                    distribution=dist.metadata["Name"] if dist is not None else None,
                    version=dist.version if dist is not None else None,
                    error=error,
                )
            )
    return rows
