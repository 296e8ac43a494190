"""A third-party backend distribution (``examples/custom_backend``: a rectified-flow model in plain
torch, not diffusers) installed with pip from a local path: found through the ``treesdk.backends``
entry point, passes the conformance suite (``check_backend`` and ``pytest --pyargs
treesdk.testing``) and trains with ``treesdk train --backend rectflow-example``.

``rectflow_backend`` (session fixture) installs it once (``--no-deps --no-build-isolation
--no-index``: no network) and uninstalls it at the end of the session.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import treesdk
import treesdk.registry as registry
from treesdk.testing import check_backend
from _example_install import installed_example

DISTRIBUTION = "treesdk-rectflow"
BACKEND_NAME = "rectflow-example"


@pytest.fixture(scope="session")
def rectflow_backend(tmp_path_factory):
    """Install ``examples/custom_backend`` for the session; yields the backend's registry name."""
    with installed_example("custom_backend", DISTRIBUTION, "treesdk_rectflow", tmp_path_factory.mktemp("custom_backend")):
        yield BACKEND_NAME


def test_installed_backend_is_registered(rectflow_backend):
    assert rectflow_backend in registry.available("backend")
    backend = treesdk.load_backend(rectflow_backend, device="cpu")
    assert type(backend).__module__ == "treesdk_rectflow" and backend.latent_shape == (3, 16, 16)


def test_installed_backend_passes_check_backend_with_its_own_sampler(rectflow_backend):
    backend = treesdk.load_backend(rectflow_backend, device="cpu")
    report = check_backend(backend, reference_sampler=backend.sample, parity_atol=1e-5)
    assert report["ode_parity"]["max_abs_diff"] <= 1e-5 and report["nfe"]["nfe"] == report["nfe"]["formula"]
    assert "skipped" not in report["adapter_on_off"]


def test_pytest_pyargs_runs_the_suite_against_it(rectflow_backend, tmp_path):
    env = {**os.environ, "TREESDK_BACKEND": rectflow_backend, "TREESDK_BACKEND_OPTIONS": '{"device": "cpu"}',
           "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--pyargs", "treesdk.testing"],
                          capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "6 passed" in done.stdout


def test_treesdk_train_runs_with_the_third_party_backend(rectflow_backend, tmp_path):
    from typer.testing import CliRunner

    from treesdk_cli.main import app

    out = tmp_path / "run"
    result = CliRunner().invoke(app, [
        "train", "--backend", rectflow_backend, "--algo", "treegrpo", "--k", "2", "--d", "2", "--steps", "4",
        "--iters", "2", "--batch", "2", "--reward", "jpeg-compressibility", "--device", "cpu", "--lr", "1e-2",
        "--out", str(out),
    ])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [line for line in lines if not line.get("eval")]
    assert len(train) == 2 and all(line["leaves"] == 8 for line in train)
    assert all(line["loss"] == line["loss"] for line in train)  # finite
    assert json.loads((out / "config.json").read_text())["backend"]["name"] == rectflow_backend
