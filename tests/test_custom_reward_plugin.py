"""A third-party reward distribution (``examples/custom_reward``) installed with pip from a local
path is found through the entry-point registry and the ``treesdk plugins`` command, and scores.

``custom_reward_plugin`` (session fixture) installs it once (``--no-deps --no-build-isolation
--no-index``: no network) into the running environment and uninstalls it at the end of the session;
other tests (e.g. a short training run) can request it and use ``treesdk.load_reward(<name>)``.
"""

from __future__ import annotations

import json

import pytest
import torch

import treesdk
import treesdk.registry as registry
from _example_install import installed_example

DISTRIBUTION = "treesdk-colorfulness"
REWARD_NAME = "colorfulness"


@pytest.fixture(scope="session")
def custom_reward_plugin(tmp_path_factory):
    """Install ``examples/custom_reward`` for the session; yields the reward's registry name."""
    with installed_example("custom_reward", DISTRIBUTION, "treesdk_colorfulness", tmp_path_factory.mktemp("custom_reward")):
        yield REWARD_NAME


def reference_colorfulness(images: torch.Tensor) -> torch.Tensor:
    """Hasler & Suesstrunk on [0, 1] images, written out with numpy-style steps."""
    out = []
    for image in images.double():
        r, g, b = image
        rg, yb = (r - g).flatten(), (0.5 * (r + g) - b).flatten()
        out.append((rg.std(unbiased=False) ** 2 + yb.std(unbiased=False) ** 2).sqrt() + 0.3 * (rg.mean() ** 2 + yb.mean() ** 2).sqrt())
    return torch.stack(out).float()


def test_installed_plugin_is_registered_and_listed(custom_reward_plugin):
    from typer.testing import CliRunner

    from treesdk_cli.main import app

    assert custom_reward_plugin in registry.available("reward")
    result = CliRunner().invoke(app, ["plugins", "--json", "--kind", "reward"])
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.output)}
    row = rows[custom_reward_plugin]
    assert row["distribution"] == DISTRIBUTION and row["version"] == "0.1.0" and row["ok"], row
    assert row["value"] == "treesdk_colorfulness:ColorfulnessReward"


def test_installed_plugin_scores_images(custom_reward_plugin):
    reward = treesdk.load_reward(custom_reward_plugin, batch_size=2)
    gray = torch.full((1, 3, 16, 16), 0.5)
    images = torch.cat([gray, torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))])
    scores = reward.score(images, ["a"] * 4)
    assert scores.shape == (4,) and scores.dtype == torch.float32
    torch.testing.assert_close(scores, reference_colorfulness(images), atol=1e-5, rtol=1e-5)
    assert scores[0] == 0 and (scores[1:] > scores[0]).all()


def test_installed_plugin_drives_a_short_training_run(custom_reward_plugin, tmp_path):
    """`treesdk train --reward colorfulness=0.5 --reward digit-classifier` uses the third-party reward."""
    from typer.testing import CliRunner

    from treesdk_cli.main import app

    out = tmp_path / "run"
    result = CliRunner().invoke(
        app,
        ["train", "--iters", "2", "--batch", "2", "--k", "2", "--d", "2", "--steps", "4", "--out", str(out),
         "--reward", f"{custom_reward_plugin}=0.5", "--reward", "digit-classifier"],
    )
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if not r.get("eval")]
    assert len(train_rows) == 2
    assert all(0.0 <= r[f"{custom_reward_plugin}_mean"] for r in train_rows)
    config = json.loads((out / "config.json").read_text())
    assert {name: r["weight"] for name, r in config["rewards"].items()} == {custom_reward_plugin: 0.5, "digit-classifier": 1.0}
