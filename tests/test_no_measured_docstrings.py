"""No docstring states a measurement: measured figures go stale, so they live in
``benchmarks/results/`` and the pages that cite them, never in the code's documentation."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("treesdk", "backends", "plugins", "cli")

#: a number with a unit of time, memory, share or speed-up
FIGURE = re.compile(r"~?\d+(?:\.\d+)?\s?(?:s|ms|us|sec|seconds?|min|minutes?|hours?|h|GiB|MiB|KiB|GB|MB|kB|%|x)(?![\w.-]*\w)", re.I)
#: words saying the figure was observed rather than defined
MEASURED = re.compile(r"\b(?:measured|took|takes|runs? in|ran in|timed|faster|slower|speed-?up|peak(?:ed|s)?|H100|H200|A100|on (?:a|one|2|two) (?:CPU|GPU|core)s?)\b", re.I)
#: a metric's value, which is always an observation ("recall 0.46", "accuracy of 0.91")
METRIC = re.compile(r"\b(?:recall|precision|accuracy|held-out score|reward)(?: of(?: the)? [\w-]+)?(?: of)? (?:0|1)\.\d+", re.I)
#: sentences allowed to pair a figure with such a word: they define a unit or a limit, not a result
ALLOWED = (
    "1 MiB",  # safe_load.py: the size limit of recipe files
)


def _docstrings(tree: ast.Module):
    yield "<module>", ast.get_docstring(tree)
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            yield node.name, ast.get_docstring(node)


def measured_sentences(text: str) -> list[str]:
    """The sentences of ``text`` that pair a figure with a unit and a word of measurement."""
    found = []
    for sentence in re.split(r"(?<=[.;:])\s+|\n\s*\n", text):
        stated = (FIGURE.search(sentence) and MEASURED.search(sentence)) or METRIC.search(sentence)
        if stated and not any(a in sentence for a in ALLOWED):
            found.append(" ".join(sentence.split()))
    return found


def test_the_detector_catches_a_measurement_and_spares_a_definition():
    assert measured_sentences("A 2-thread run is ~7x slower than a 1-thread one (measured).")
    assert measured_sentences("One step took 4.2 s on an H100.")
    assert measured_sentences("The peak is 31.5 GiB at k = 2.")
    assert measured_sentences("With the KL term the run levels off (recall 0.46).")
    assert not measured_sentences("Sizes are in kilobytes (bytes / 1000); the limit is 4 MiB.")
    assert not measured_sentences("sigma in [0, 1] (1 = pure noise); lr 1e-4, T = 10.")


def test_no_docstring_states_a_measured_figure():
    offenders = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for name, doc in _docstrings(tree):
                for sentence in measured_sentences(doc or ""):
                    offenders.append(f"{path.relative_to(ROOT)}:{name}: {sentence}")
    assert not offenders, "measured figures in docstrings (move them to benchmarks/results):\n" + "\n".join(offenders)
