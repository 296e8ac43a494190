"""Install an example distribution from ``examples/`` into the running environment for a test scope.

Used by the third-party plugin tests (reward, recipe parts, backend). pip runs with ``--no-deps
--no-build-isolation --no-index`` (no network) on a copy of the example, so setuptools' ``build/`` and
``egg-info`` never land in the source tree; the distribution is uninstalled on the way out, and one
left over by an interrupted session is removed first.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _pip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, timeout=300)


@contextlib.contextmanager
def installed_example(example: str, distribution: str, module: str, workdir: Path) -> Iterator[Path]:
    """Install ``examples/<example>`` (distribution ``distribution``, top-level ``module``) from a copy
    under ``workdir``; yields the example's source folder; uninstalls on exit."""
    if importlib.util.find_spec(module) is not None:  # left over by an interrupted session
        _pip("uninstall", "--yes", "--quiet", distribution)
        importlib.invalidate_caches()
    source = workdir / example
    shutil.copytree(EXAMPLES / example, source)
    done = _pip("install", "--no-deps", "--no-build-isolation", "--no-index", "--quiet", str(source))
    assert done.returncode == 0, done.stdout + done.stderr
    importlib.invalidate_caches()
    try:
        yield EXAMPLES / example
    finally:
        undone = _pip("uninstall", "--yes", "--quiet", distribution)
        importlib.invalidate_caches()
        sys.modules.pop(module, None)
        assert undone.returncode == 0, undone.stdout + undone.stderr
