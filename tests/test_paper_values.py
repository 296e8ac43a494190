"""The presets carry the papers' values: every row of docs/algorithms.md's table, read here."""

from pathlib import Path

import pytest

import treesdk

TABLE = Path(__file__).resolve().parents[1] / "docs" / "algorithms.md"


def _rows():
    text = TABLE.read_text()
    section = text[text.index("## The papers' values"):]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[0] in {"grpo", "mixgrpo", "treegrpo", "dynamic-treerpo"}:
            rows.append(tuple(cells))
    return rows


def _get(recipe, dotted):
    node = recipe.model_dump(mode="json")
    for part in dotted.split("."):
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


def _parse(text):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"True": True, "False": False}.get(text, text)


def test_the_table_covers_every_preset():
    assert {row[0] for row in _rows()} == {"grpo", "mixgrpo", "treegrpo", "dynamic-treerpo"}
    assert len(_rows()) >= 30


def _same(value, expected):
    return value == pytest.approx(expected, rel=1e-9) if isinstance(expected, float) else value == expected


@pytest.mark.parametrize("preset,field,paper,digits,source", _rows())
def test_preset_equals_the_cited_value(preset, field, paper, digits, source):
    assert source, "every value names its source"
    assert _same(_get(treesdk.load_algorithm(preset), field), _parse(paper))
    on_digits = _get(treesdk.load_algorithm(preset, **treesdk.load_backend("digits").recipe_defaults()), field)
    assert _same(on_digits, _parse(paper) if digits == "=" else _parse(digits))
