"""The layers of the tree: no import circle anywhere, the packages above the core use its public
surface, and inside treesdk/ the kernel imports nothing above it.

Packages, bottom to top: ``treesdk`` (treesdk/), then ``treesdk_backends`` (backends/) and
``treesdk_plugins`` (plugins/), then ``treesdk_cli`` (cli/). Inside ``treesdk``, layers bottom to
top: the kernel (the modules at treesdk/ top level), ``treesdk.recipes``, ``treesdk.training``,
``treesdk.nodes``; a module may import its own layer and the ones below.

``treesdk.training`` is the run machinery, not an API: backends, plugins and the CLI use the
top-level ``treesdk`` names and the kernel modules (``treesdk.interfaces``, ``treesdk.io``,
``treesdk.errors``, ``treesdk.state_dicts``, ``treesdk.export_files``, ``treesdk.model_facts``,
``treesdk.evaluation``, ...). Imports are read from the source (module-level and function-level
alike; ``if TYPE_CHECKING:`` blocks left out), so the test needs no import side effects.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: import name -> folder of the four packages
PACKAGES = {"treesdk": "treesdk", "treesdk_backends": "backends", "treesdk_plugins": "plugins", "treesdk_cli": "cli"}
PACKAGE = ROOT / "treesdk"
LAYERS = {"kernel": 0, "recipes": 1, "training": 2, "nodes": 3}
#: top-level modules that are not part of the kernel: the package's __init__/__main__ re-export or
#: start everything (the benchmark runner lives in the CLI package, treesdk_cli.bench_runner)
ABOVE_THE_KERNEL = {"__init__", "__main__"}
#: function-level imports allowed to reach up a layer, each for a reason stated at the import
UPWARD_ALLOWED: set[tuple[str, str]] = set()
#: modules outside treesdk/ still importing treesdk.training, TEMPORARY: the train command,
#: whose run logic moves into the library on another branch; empty this set once it lands
TRAINING_IMPORTS_PENDING: set[str] = set()


def module_name(path: Path) -> str:
    for package, folder in PACKAGES.items():
        base = ROOT / folder
        if path.is_relative_to(base):
            parts = (package, *path.relative_to(base).with_suffix("").parts)
            return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    raise ValueError(path)


ALL_MODULES = {module_name(p): p for folder in PACKAGES.values() for p in sorted((ROOT / folder).rglob("*.py"))}
MODULES = {m: p for m, p in ALL_MODULES.items() if m.split(".")[0] == "treesdk"}


def layer(module: str) -> int:
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in LAYERS:
        return LAYERS[parts[1]]
    return LAYERS["kernel"]


def _known(name: str) -> str | None:
    """The module of the tree ``name`` lives in (``treesdk.sde.sde_step`` -> ``treesdk.sde``)."""
    while name and name not in ALL_MODULES:
        name = name.rpartition(".")[0]
    return name or None


def resolve(module: str, node: ast.ImportFrom | ast.Import, is_package: bool) -> list[str]:
    """Modules of the tree an import statement names (``from a import b``: ``a.b`` when that is a
    module, else ``a``)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        if node.level:
            base = module.split(".")
            base = base[: len(base) - node.level + (1 if is_package else 0)]
            target = ".".join([*base, *([node.module] if node.module else [])])
        else:
            target = node.module or ""
        names = [f"{target}.{a.name}" if f"{target}.{a.name}" in ALL_MODULES else target for a in node.names]
    return [m for m in (_known(n) for n in names) if m is not None]


def _statements(body: list[ast.stmt], top_level_only: bool):
    """Import statements of ``body``: inside ``if``/``try``/``with``/class bodies too, inside
    functions unless ``top_level_only``; never under ``if TYPE_CHECKING:``."""
    for node in body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if not top_level_only:
                yield from _statements(node.body, top_level_only)
        else:
            for field in ("body", "orelse", "finalbody"):
                yield from _statements(getattr(node, field, None) or [], top_level_only)
            for handler in getattr(node, "handlers", None) or []:
                yield from _statements(handler.body, top_level_only)
            for case in getattr(node, "cases", None) or []:
                yield from _statements(case.body, top_level_only)


def imports(module: str, top_level_only: bool) -> set[str]:
    path = ALL_MODULES[module]
    found: set[str] = set()
    for node in _statements(ast.parse(path.read_text()).body, top_level_only):
        found.update(resolve(module, node, path.name == "__init__.py"))
    return {m for m in found if m != module}


def test_the_import_reader_sees_every_kind_of_import():
    """The reader finds imports in functions, methods, try and with blocks, and skips TYPE_CHECKING."""
    assert "treesdk.recipes.parts" in imports("treesdk.nodes.catalog", top_level_only=True)
    assert "treesdk.safe_load" in imports("treesdk.training.loop.runs", top_level_only=False)  # in a function
    assert "treesdk.safe_load" not in imports("treesdk.training.loop.runs", top_level_only=True)
    assert "treesdk_cli.common" in imports("treesdk_cli.tiny", top_level_only=True)  # a relative import
    assert "treesdk_backends.tiny" in imports("treesdk_cli.tiny", top_level_only=False)  # inside try, in a function
    assert {"treesdk_cli.train", "treesdk_cli.flags"} <= set(ALL_MODULES)
    assert {"treesdk_backends.diffusers.families.flux", "treesdk_plugins.digits"} <= set(ALL_MODULES)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_a_module_imports_only_its_layer_and_the_ones_below(module):
    if module.split(".")[-1] in ABOVE_THE_KERNEL or module == "treesdk":
        return
    own = layer(module)
    upward = sorted(m for m in imports(module, top_level_only=False)
                    if m != "treesdk" and layer(m) > own and (module, m) not in UPWARD_ALLOWED)
    assert not upward, f"{module} (layer {own}) imports from a layer above it: {upward}"


def test_the_kernel_imports_nothing_above_it():
    kernel = [m for m in MODULES if layer(m) == 0 and m.split(".")[-1] not in ABOVE_THE_KERNEL and m != "treesdk"]
    assert {"treesdk.interfaces", "treesdk.sde", "treesdk.sampler", "treesdk.advantages", "treesdk.losses"} <= set(kernel)
    for module in kernel:
        assert all(layer(m) == 0 for m in imports(module, top_level_only=False) if m != "treesdk"), module


def with_packages(importer: str, found: set[str]) -> set[str]:
    """Importing ``treesdk.a.b`` from outside ``treesdk.a`` first runs ``treesdk/a/__init__.py``
    (a root package is left out: it runs before anything else of its package)."""
    out = set(found)
    for m in found:
        parts = m.split(".")
        out.update(p for p in (".".join(parts[:i]) for i in range(2, len(parts))) if not importer.startswith(p + "."))
    return out


ROOTS = set(PACKAGES)


def import_graph(top_level_only: bool) -> dict[str, set[str]]:
    """Module -> the modules of the tree its imports run (package ``__init__`` files included)."""
    return {m: with_packages(m, imports(m, top_level_only)) & set(ALL_MODULES) - ROOTS - {m} for m in ALL_MODULES}


def find_circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``graph`` (``[a, b, ..., a]``), or None."""
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return path[path.index(n):] + [n]
            if n not in state and (found := visit(n)):
                return found
        path.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_the_circle_finder_finds_a_circle():
    assert find_circle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_circle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("top_level_only", [True, False], ids=["module-level", "with-function-level"])
def test_no_import_circle_in_the_four_packages(top_level_only):
    """No circle among treesdk/, backends/, plugins/ and cli/: neither in the imports that run at
    import time nor once the imports inside functions are counted too (a function-level import is
    a circle postponed, not removed)."""
    circle = find_circle(import_graph(top_level_only))
    assert circle is None, "import circle: " + " -> ".join(circle or [])


def test_the_root_packages_import_no_module_that_imports_them_back():
    """``treesdk/__init__.py`` (and each package root) runs first; a module it imports at import
    time must not need the root's own names then (``import treesdk`` / ``from treesdk import
    load_backend`` at module level)."""
    graph = import_graph(top_level_only=True)
    for root in ROOTS:
        reached, todo = set(), [m for m in imports(root, top_level_only=True) if m not in ROOTS]
        while todo:
            m = todo.pop()
            if m not in reached:
                reached.add(m)
                todo.extend(graph[m])
        back = sorted(m for m in reached if root in imports(m, top_level_only=True))
        assert not back, f"{root} imports {back} at import time, which import {root} back"


def _imports_of(package: str) -> dict[str, set[str]]:
    return {m: imports(m, top_level_only=False) for m in ALL_MODULES if m.split(".")[0] == package}


@pytest.mark.parametrize("package", ["treesdk_backends", "treesdk_plugins", "treesdk_cli"])
def test_backends_plugins_and_cli_do_not_import_treesdk_training(package):
    """The public surface is enough: nothing above the core reaches into ``treesdk.training``
    (save the train command's files listed in :data:`TRAINING_IMPORTS_PENDING`)."""
    users = sorted(m for m, found in _imports_of(package).items()
                   if m not in TRAINING_IMPORTS_PENDING and any(i.startswith("treesdk.training") for i in found))
    assert not users, f"{users} import treesdk.training; use the top-level treesdk names or a kernel module"


def test_the_pending_training_imports_are_still_pending():
    """Each module of :data:`TRAINING_IMPORTS_PENDING` exists and still imports treesdk.training:
    once one stops, this fails and the allow-list shrinks (it must end empty)."""
    for module in TRAINING_IMPORTS_PENDING:
        assert module in ALL_MODULES, f"{module} is gone: remove it from TRAINING_IMPORTS_PENDING"
        assert any(i.startswith("treesdk.training") for i in imports(module, top_level_only=False)), (
            f"{module} no longer imports treesdk.training: remove it from TRAINING_IMPORTS_PENDING")


def test_packages_import_only_downward():
    """treesdk imports none of the other three (but ``treesdk.__main__``, which starts the CLI);
    backends and plugins do not import the CLI."""
    for module, found in _imports_of("treesdk").items():
        if module != "treesdk.__main__":
            assert not [m for m in found if m.split(".")[0] != "treesdk"], module
    for package in ("treesdk_backends", "treesdk_plugins"):
        for module, found in _imports_of(package).items():
            assert not [m for m in found if m.startswith("treesdk_cli")], module


#: the concerns of ``treesdk.training`` (a sub-package, or top-level modules grouped), bottom to
#: top, and the concerns each may import: the run loop sits above everything, and nothing below it
#: reaches back into the loop, so each concern can be read, tested and replaced on its own
TRAINING_CONCERNS: dict[str, set[str]] = {
    "legacy": set(),  # first-release run folders read as today's
    "optimisation": set(),  # optimisers, learning-rate schedules, EMA
    "run_folder": {"legacy"},  # checkpoints, loggers, progress, profiling, the folder lock
    "parallel": {"run_folder"},  # torch.distributed, FSDP, the torchrun launcher
    "settings": {"legacy", "optimisation", "run_folder"},  # RunConfig and its sections, flags, prompt files
    "exporting": {"settings", "run_folder", "optimisation"},  # export, model card, rebuilding a trained policy
    "loop": {"legacy", "optimisation", "run_folder", "parallel", "settings", "exporting"},  # the session and trainer
}
_TOP_LEVEL_CONCERN = {"config": "settings", "settings": "settings", "prompts": "settings", "legacy": "legacy"}


def training_concern(module: str) -> str | None:
    """The concern of a ``treesdk.training`` module (None: outside it, or its package ``__init__``)."""
    parts = module.split(".")
    if parts[:2] != ["treesdk", "training"] or len(parts) < 3:
        return None
    if parts[2] in TRAINING_CONCERNS:
        return parts[2]
    concern = _TOP_LEVEL_CONCERN.get(parts[2])
    assert concern is not None, f"{module}: a top-level training module that names no concern; put it in a sub-package"
    return concern


@pytest.mark.parametrize("module", sorted(m for m in MODULES if training_concern(m)))
def test_each_training_concern_imports_only_the_ones_below_it(module):
    own = training_concern(module)
    reached = {training_concern(m) for m in imports(module, top_level_only=False)} - {None, own}
    assert reached <= TRAINING_CONCERNS[own], (
        f"{module} ({own}) imports {sorted(reached - TRAINING_CONCERNS[own])}; {own} may import {sorted(TRAINING_CONCERNS[own])}")


def test_training_concerns_form_a_layering():
    """The allowed imports have no circle, so the concerns stack (no two lean on each other)."""
    order: list[str] = []
    pending = dict(TRAINING_CONCERNS)
    while pending:
        ready = [name for name, below in pending.items() if below <= set(order)]
        assert ready, f"the concerns {sorted(pending)} import one another in a circle"
        order += sorted(ready)
        for name in ready:
            pending.pop(name)
    assert order[-1] == "loop"


@pytest.mark.parametrize("module", sorted(ALL_MODULES))
def test_every_module_states_its_job(module):
    """A module docstring whose first line says what the module is for (one job per module)."""
    source = ALL_MODULES[module].read_text()
    if not source.strip():
        return  # an empty package marker
    doc = ast.get_docstring(ast.parse(source))
    assert doc and len(doc.splitlines()[0].split()) >= 3, f"{module}: no module docstring stating its job"
