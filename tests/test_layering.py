"""The layers of treesdk/ as folders: the kernel imports nothing above it, no import circle, small modules.

Layers, bottom to top: the kernel (the modules at treesdk/ top level), ``treesdk.recipes``,
``treesdk.training``, ``treesdk.nodes``. A module may import its own layer and the ones below.
Imports are read from the source (module-level and function-level alike), so the test needs no
import side effects.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "treesdk"
LAYERS = {"kernel": 0, "recipes": 1, "training": 2, "nodes": 3}
#: top-level modules that are not part of the kernel: the benchmark drives training (its own layer)
#: and the package's __init__/__main__ re-export or start everything
ABOVE_THE_KERNEL = {"bench", "__init__", "__main__"}
#: function-level imports allowed to reach up a layer, each for a reason stated at the import
UPWARD_ALLOWED = {("treesdk.recipes.loading", "treesdk.nodes.graph")}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer(module: str) -> int:
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in LAYERS:
        return LAYERS[parts[1]]
    return LAYERS["kernel"]


def resolve(module: str, node: ast.ImportFrom | ast.Import, is_package: bool) -> list[str]:
    """treesdk modules an import statement names."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.startswith("treesdk")]
    if node.level:
        base = module.split(".")
        base = base[: len(base) - node.level + (1 if is_package else 0)]
        target = ".".join([*base, *([node.module] if node.module else [])])
    else:
        target = node.module or ""
    if not target.startswith("treesdk") or target.startswith("treesdk_"):
        return []
    out = []
    for alias in node.names:
        sub = f"{target}.{alias.name}"
        out.append(sub if sub in MODULES else target)
    return out


def imports(module: str, top_level_only: bool) -> set[str]:
    path = MODULES[module]
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    for node in nodes:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.update(resolve(module, node, path.name == "__init__.py"))
    return {m for m in found if m != module}


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
    (the root package is left out: it runs before anything else)."""
    out = set(found)
    for m in found:
        parts = m.split(".")
        out.update(p for p in (".".join(parts[:i]) for i in range(2, len(parts))) if not importer.startswith(p + "."))
    return out


def test_no_import_circle_at_module_level():
    graph = {m: with_packages(m, imports(m, top_level_only=True)) & set(MODULES) - {"treesdk", m} for m in MODULES}
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycle = path[path.index(n):] + [n]
                raise AssertionError("import circle: " + " -> ".join(cycle))
            if n not in state:
                visit(n)
        path.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_modules_stay_under_450_lines(module):
    lines = len(MODULES[module].read_text().splitlines())
    assert lines <= 450, f"{module} has {lines} lines; split it by concern"
