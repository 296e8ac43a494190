"""Bad input, one class per test: every case exits non-zero with one line naming the flag, file or
field, never a traceback (docs/reliability.md lists the classes and these tests)."""

from __future__ import annotations

import json

import pytest
from _hardening_plugins import fake_distribution
from typer.testing import CliRunner

from treesdk import registry
from treesdk.errors import UserError
from treesdk.safe_load import load_yaml
from treesdk_cli.common import clean_errors
from treesdk_cli.main import app

runner = CliRunner()

ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi")
)


def one_line_error(result, code: int = 1) -> str:
    """Assert exit ``code``, no traceback, and a short error; return the output."""
    out = result.output
    assert result.exit_code == code, out
    assert "Traceback" not in out, out
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert len(out) < 2000, f"error of {len(out)} characters"
    return out


@pytest.fixture
def files(tmp_path):
    (tmp_path / "bomb.yaml").write_text(ALIAS_BOMB)
    (tmp_path / "cut.json").write_text('{"name": "x", "tree": {"k": ')
    (tmp_path / "binary.yaml").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe")
    (tmp_path / "syntax.yaml").write_text("name: x\ntree: [1, 2\n")
    (tmp_path / "huge-value.yaml").write_text("name: x\nsteps: " + "9" * 5000 + "x\n")
    (tmp_path / "list.json").write_text("[1, 2, 3]")
    return tmp_path


@pytest.mark.parametrize("args, words", [
    (["--set", "tree.k=["], ["--set tree.k", "line 1"]),
    (["--set", "tree.k.x=1"], ["--set tree.k.x", "'tree.k' is a value"]),
    (["--set", "losses.5=1"], ["--set losses.5", "not an index"]),
    (["--set", "losses.first=1"], ["--set losses.first", "not an index"]),
    (["--set", "tree.k"], ["--set 'tree.k'", "DOTTED.KEY=VALUE"]),
    (["--backend-opt", "lora_rank=4"], ["--backend-opt", "'lora_rank'", "its options are"]),
    (["--backend-opt", "resolution=[a"], ["--backend-opt resolution", "YAML"]),
    (["--reward-opt", "digit-classifier:colour=1"], ["digit-classifier", "'colour'"]),
    (["--config", "{d}/bomb.yaml"], ["bomb.yaml", "more than 1000000 values"]),
    (["--config", "{d}/cut.json"], ["cut.json", "line 1", "truncated"]),
    (["--config", "{d}/binary.yaml"], ["binary.yaml", "not UTF-8"]),
    (["--config", "{d}/syntax.yaml"], ["syntax.yaml", "line 3"]),
    (["--config", "{d}/list.json"], ["list.json", "must hold a mapping"]),
    (["--config", "{d}/huge-value.yaml"], ["steps", "..."]),
    (["--prompts", "{d}/binary.yaml"], ["prompt file", "binary.yaml", "not UTF-8"]),
    (["--config", "{d}/absent.yaml"], ["absent.yaml", "does not exist"]),
])
def test_parsers_name_the_flag_or_file_and_bound_the_echo(files, args, words):
    """Class 5: YAML/JSON syntax, binary and truncated files, alias bombs, bad override paths and
    unknown option keys; the error echoes at most a short excerpt of the input."""
    argv = ["train", "--iters", "1", "--out", str(files / "run"), *[a.format(d=files) for a in args]]
    out = one_line_error(runner.invoke(app, argv))
    for word in words:
        assert word in out, (word, out)
    assert not (files / "run").exists()  # nothing written for a bad input


def test_nodes_check_names_the_file(files):
    for name, word in (("syntax.yaml", "line 3"), ("bomb.yaml", "more than"), ("binary.yaml", "UTF-8")):
        out = one_line_error(runner.invoke(app, ["nodes", "--check", str(files / name)]))
        assert name in out and word in out, out


def test_an_alias_bomb_is_refused_before_it_is_walked():
    with pytest.raises(UserError, match="more than 1000000 values"):
        load_yaml(ALIAS_BOMB, "bomb")
    with pytest.raises(UserError, match="refers to a node that contains it"):
        load_yaml("a: &a [1, *a]", "loop")


def test_a_plugin_calling_sys_exit_at_import_hides_nothing(tmp_path, monkeypatch, request):
    """Class 6: ``sys.exit()`` while a plugin imports is that plugin's error; the others load."""
    from treesdk import nodes

    monkeypatch.syspath_prepend(str(fake_distribution(tmp_path / "site")))
    nodes.refresh()  # the node catalogue caches the plugins it found
    request.addfinalizer(nodes.refresh)  # forget the test's plugins again
    result = runner.invoke(app, ["plugins", "--kind", "reward", "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.output)}
    assert not rows["exits-at-import"]["ok"] and "SystemExit" in rows["exits-at-import"]["error"]
    assert rows["digit-classifier"]["ok"] and rows["brightness"]["ok"]
    result = runner.invoke(app, ["nodes", "--json"])
    assert result.exit_code == 0 and '"reward:brightness"' in result.output
    with pytest.raises(registry.PluginError, match="sys.exit"):
        registry.load("reward", "exits-at-import")
    out = one_line_error(runner.invoke(app, ["eval", "--reward", "exits-at-import"]))
    assert "exits-at-import" in out and "sys.exit" in out


def test_programming_errors_keep_their_traceback_and_debug_shows_every_one(monkeypatch):
    """The error policy: user errors become one line; a bug (KeyError, RuntimeError...) is not
    hidden; ``--debug`` / ``TREESDK_DEBUG=1`` shows the traceback of user errors too; Ctrl-C is 130."""
    import typer

    monkeypatch.delenv("TREESDK_DEBUG", raising=False)
    for bug in (KeyError("internal"), RuntimeError("internal"), TypeError("internal")):
        with pytest.raises(type(bug)), clean_errors():
            raise bug
    with pytest.raises(typer.Exit) as stopped, clean_errors():
        raise UserError("--flag: bad")
    assert stopped.value.exit_code == 1
    with pytest.raises(typer.Exit) as stopped, clean_errors():
        raise KeyboardInterrupt
    assert stopped.value.exit_code == 130
    monkeypatch.setenv("TREESDK_DEBUG", "0")  # the --debug callback sets it; monkeypatch restores it
    result = runner.invoke(app, ["--debug", "train", "--set", "tree.k=["])
    assert isinstance(result.exception, UserError) and result.exit_code == 1


def test_sample_and_eval_check_flags_and_outputs_before_loading_a_model(tmp_path):
    """Class 8 (small ones): ``--seeds 0``, an image suffix no writer knows, an unwritable
    ``--json``; and ``--out x.jpg`` writes JPEG bytes."""
    out = one_line_error(runner.invoke(app, ["sample", "--seeds", "0"]), code=2)
    assert "--seeds" in out
    out = one_line_error(runner.invoke(app, ["eval", "--seeds", "0"]), code=2)
    assert "--seeds" in out
    out = one_line_error(runner.invoke(app, ["sample", "--out", str(tmp_path / "grid.gif")]))
    assert "grid.gif" in out and ".png" in out
    (tmp_path / "a-file").write_text("")
    out = one_line_error(runner.invoke(app, ["eval", "--json", str(tmp_path / "a-file" / "r.json")]))
    assert "--json" in out and "is a file" in out
    jpg = tmp_path / "grid.jpg"
    result = runner.invoke(app, ["sample", "--prompt", "the digit seven", "--seeds", "1", "--steps", "2", "--out", str(jpg)])
    assert result.exit_code == 0, result.output
    assert jpg.read_bytes()[:3] == b"\xff\xd8\xff"  # JPEG, not PNG bytes under a .jpg name


def test_comfyui_nodes_run_with_their_defaults_and_refuse_a_merged_file_as_lora(tmp_path, monkeypatch):
    """Class 9: a ``None`` default of type Any is an optional widget (empty = None), and load-lora
    given full weights (a merged ``comfyui`` export) says to use "Load Diffusion Model"."""
    import sys
    import types

    import torch
    from safetensors.torch import save_file

    from treesdk import nodes
    from treesdk.nodes import comfyui_pack

    spec = nodes.get_node("backend:flux")
    optional = spec.input_types()["optional"]
    assert "pipeline" in optional and optional["pipeline"][1]["default"] == ""
    _, values = comfyui_pack._split_inputs(spec, {"pipeline": "", "model": "", "device": ""})
    assert spec.validate(values).pipeline is None

    comfy = types.ModuleType("comfy")  # the import only: the file is refused before ComfyUI is called
    for name in ("sd", "utils"):
        module = types.ModuleType(f"comfy.{name}")
        setattr(comfy, name, module)
        monkeypatch.setitem(sys.modules, f"comfy.{name}", module)
    monkeypatch.setitem(sys.modules, "comfy", comfy)
    merged = tmp_path / "comfyui.safetensors"
    save_file({"double_blocks.0.img_attn.qkv.weight": torch.zeros(2, 2)}, str(merged))
    with pytest.raises(ValueError, match="Load Diffusion Model"):
        comfyui_pack.load_lora(str(merged), 1.0, model=object())


def test_bench_checks_its_inputs_before_training(tmp_path):
    """Class 4: ``bench`` refuses an unwritable ``--out``, a missing prompt file, an unknown
    algorithm and bad numbers at once, not after minutes of training."""
    (tmp_path / "a-file").write_text("")
    for args, words in ((["--out", str(tmp_path / "a-file" / "bench")], ["--out", "is a file"]),
                        (["--prompts", str(tmp_path / "absent.txt")], ["absent.txt"]),
                        (["--algo", "no-such-algo"], ["no-such-algo"]),
                        (["--set", "tree.k=["], ["--set tree.k"])):
        out = one_line_error(runner.invoke(app, ["bench", "--out", str(tmp_path / "b"), *args]))
        assert all(word in out for word in words), out
    assert "--batch" in one_line_error(runner.invoke(app, ["bench", "--batch", "0"]), code=2)
    assert not (tmp_path / "b").exists()


def test_python_api_refuses_a_string_of_prompts_and_weights_of_unknown_rewards():
    """Class 6: ``prompts="a cat"`` would train on the letters; ``weights`` for a reward that is
    not passed would be ignored."""
    import treesdk
    from analytic import BrightnessReward, MixtureFlow

    rewards = {"brightness": BrightnessReward()}
    with pytest.raises(UserError, match="one string"):
        treesdk.train("grpo", MixtureFlow(), rewards, "a cat", iters=1, batch=1)
    with pytest.raises(UserError, match="weights name \\['typo'\\]"):
        treesdk.train("grpo", MixtureFlow(), rewards, ["a cat"], weights={"typo": 1.0}, iters=1, batch=1)


def test_a_missing_reward_checkpoint_reads_as_english():
    """Class 8: the message of a reward whose weights are not on disk ("no the LAION ..." before)."""
    from treesdk_plugins.aesthetic import _FORMAT, FILENAME
    from treesdk_plugins.common import resolve_file

    with pytest.raises(FileNotFoundError) as missing:
        resolve_file(None, filename=FILENAME, repo_id=None, what=_FORMAT, option="checkpoint")
    assert str(missing.value).startswith("could not find the LAION aesthetic") and "checkpoint=" in str(missing.value)
