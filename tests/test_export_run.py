"""``export_run`` / ``treesdk export`` on a digits run folder: the native file, metadata, --check,
and bad input (format the backend cannot write, unwritable path, missing run) as one-line errors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

import treesdk
from treesdk.export_files import check_file
from treesdk.training.exporting.export import export_run
from treesdk.interfaces import RewardModel
from treesdk_backends.digits import DigitsBackend, DigitsFlowNet, save_digits_checkpoint
from treesdk_cli.main import app


class Brightness(RewardModel):
    name = "brightness"

    def score(self, images, prompts):
        return images.float().mean(dim=(1, 2, 3))


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits-export")
    torch.manual_seed(0)
    base = root / "base.safetensors"
    save_digits_checkpoint(DigitsFlowNet(channels=8, emb_dim=16), base, {})
    options = {"model": str(base)}
    backend = treesdk.load_backend("digits", **options)
    recipe = treesdk.load_algorithm("grpo", **{"steps": 3, "tree.roots": 2, "optim.lr": 1e-2})
    treesdk.train(recipe, backend, {"brightness": Brightness()}, ["a handwritten digit 3"], iters=2, batch=1,
                  seed=0, out_dir=root / "run", backend_options=options)
    return root, base, backend


def _velocity(backend):
    x = torch.randn(3, *backend.latent_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return backend.velocity(x, torch.tensor([0.9, 0.5, 0.1]), backend.encode(["a handwritten digit 3"] * 3))


def test_digits_export_reloads_to_the_trained_velocity_with_metadata(digits_run, tmp_path):
    root, base, trained = digits_run
    files = export_run(root / "run", "digits", tmp_path / "policy.safetensors")
    assert files == [str(tmp_path / "policy.safetensors")]
    reloaded = DigitsBackend(model=files[0])
    torch.testing.assert_close(_velocity(reloaded), _velocity(trained))
    assert not torch.allclose(_velocity(DigitsBackend(model=str(base))), _velocity(trained))
    with safe_open(files[0], framework="pt") as handle:
        meta = handle.metadata()
    assert meta["treesdk.backend"] == "digits" and meta["treesdk.base_model"] == str(base)
    assert meta["treesdk.iterations"] == "2" and meta["treesdk.algorithm"] == "grpo"
    assert json.loads(meta["treesdk.recipe"])["steps"] == 3 and meta["treesdk.version"] == treesdk.__version__


def test_checkpoint_folder_and_default_target(digits_run):
    root, _, _ = digits_run
    ckpt = sorted((root / "run" / "checkpoints").iterdir())[-1]
    files = export_run(ckpt, "digits")
    assert files == [str(root / "run" / "export" / "digits.safetensors")]


def test_check_digits_file_and_wrong_shape(digits_run, tmp_path):
    root, base, _ = digits_run
    file = export_run(root / "run", "digits", tmp_path / "p.safetensors")[0]
    report = check_file(file)
    assert report.format == "digits" and report.ok and report.base == str(base), report.summary()
    with safe_open(file, framework="pt") as handle:
        meta = handle.metadata()
    state = load_file(file)
    key = next(iter(state))
    state[key] = torch.zeros(*state[key].shape[:-1], state[key].shape[-1] + 1)
    save_file(state, tmp_path / "bad.safetensors", metadata=meta)
    result = CliRunner().invoke(app, ["export", "--check", str(tmp_path / "bad.safetensors")])
    assert result.exit_code == 1 and key in result.output and "FAILED" in result.output
    no_base = {k: v for k, v in meta.items() if k != "treesdk.base_model"}
    save_file(load_file(file), tmp_path / "nobase.safetensors", metadata=no_base)
    assert not check_file(tmp_path / "nobase.safetensors").ok
    assert check_file(tmp_path / "nobase.safetensors", base=str(base)).ok


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--format", "lora"], "cannot export format 'lora'"),
        (["--format", "diffusers"], "cannot export format 'diffusers'"),
        (["--format", "digits", "--out", "{blocker}/x.safetensors"], "a_file"),
    ],
)
def test_bad_exports_are_one_line_errors_and_touch_nothing(digits_run, tmp_path, args, message):
    root, _, _ = digits_run
    blocker = tmp_path / "a_file"
    blocker.write_text("keep")
    existing = tmp_path / "out.safetensors"
    existing.write_bytes(b"old")
    args = [a.replace("{blocker}", str(blocker)) for a in args]
    if "--out" not in args:
        args += ["--out", str(existing)]
    result = CliRunner().invoke(app, ["export", str(root / "run"), *args])
    assert result.exit_code == 1, result.output
    assert result.output.count("\n") == 1 and result.output.startswith("error:") and message in result.output
    assert existing.read_bytes() == b"old" and blocker.read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "out.safetensors"]


def test_cli_usage_errors(tmp_path):
    runner = CliRunner()
    assert runner.invoke(app, ["export"]).exit_code == 2
    result = runner.invoke(app, ["export", str(tmp_path / "nope")])
    assert result.exit_code == 1 and "does not exist" in result.output
    assert runner.invoke(app, ["export", str(tmp_path), "--format", "onnx"]).exit_code == 2


def test_export_dtype_and_missing_output_folders_are_created(digits_run, tmp_path):
    root, _, _ = digits_run
    target = tmp_path / "new" / "deeper" / "policy.safetensors"  # folders created before the model loads
    files = export_run(root / "run", "digits", target, dtype="bf16")
    assert files == [str(target)]
    with safe_open(str(target), framework="pt") as handle:
        assert {handle.get_tensor(k).dtype for k in handle.keys()} == {torch.bfloat16}
        assert handle.metadata()["treesdk.dtype"] == "bfloat16"
    with pytest.raises(ValueError, match="--dtype 'fp8'"):
        export_run(root / "run", "digits", tmp_path / "x.safetensors", dtype="fp8")
