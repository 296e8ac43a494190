"""``treesdk examples``: the examples are installed as ``treesdk_examples`` and can be copied out."""

from __future__ import annotations

from typer.testing import CliRunner

from treesdk_cli.main import app


def test_examples_are_listed_and_copied(tmp_path):
    runner = CliRunner()
    listed = runner.invoke(app, ["examples"])
    assert listed.exit_code == 0 and "hybrid.yaml" in listed.output and "custom_reward/pyproject.toml" in listed.output
    copied = runner.invoke(app, ["examples", "--copy", str(tmp_path / "ex")])
    assert copied.exit_code == 0, copied.output
    assert (tmp_path / "ex" / "hybrid.yaml").is_file()
    assert (tmp_path / "ex" / "custom_reward" / "treesdk_colorfulness" / "__init__.py").is_file()
    again = runner.invoke(app, ["examples", "--copy", str(tmp_path / "ex")])
    assert again.exit_code == 1 and "--force" in again.output
