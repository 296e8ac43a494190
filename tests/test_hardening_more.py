"""The third round of hardening, each fault reproduced through the command line first: stop
signals during ``export`` and ``tiny``, odd export targets (symlinks, existing files, read-only
folders simulated, folders a failed export made), markup in the model card's facts, ``bench``
with tiny or absurd budgets, a second ``train`` on a folder in use, ``--report-to`` values,
``plugins --json`` with a chatty plugin, run files with Python tags, alias bombs and wrong types,
and prompt files of every format with the wrong content. Each ends with one line, no traceback,
nothing half-written and nothing that existed damaged."""

from __future__ import annotations

import json
import os
import shutil
import signal

import pytest
import yaml
from _hardening_common import (  # noqa: F401 - fixtures
    MIXTURE, digits_run, failed, finished, invoke, plugins, run_cli_script, snapshot, train,
)

# ---------------------------------------------------------------- signals during export and tiny

#: runs ``treesdk ARGS`` (argv[1:]) with the first fsync of an atomic write sending SIGNAL to this
#: very process: the signal lands after a temporary file was written and before its rename
_SIGNAL_IN_WRITE = """
import os, signal, sys
import treesdk.io as io
sig = getattr(signal, sys.argv[1])
signal.signal(signal.SIGINT, signal.default_int_handler)  # a job started in the background inherits SIGINT ignored
real, sent = io.os.fsync, []
def fsync(fd):
    if not sent:
        sent.append(1)
        os.kill(os.getpid(), sig)
    return real(fd)
io.os.fsync = fsync
sys.argv = ["treesdk", *sys.argv[2:]]
from treesdk_cli.entry import main
main()
"""


def _script_with_args(script: str, *args) -> str:
    return f"import sys; sys.argv = ['-c', {', '.join(repr(str(a)) for a in args)}]\n" + script


@pytest.mark.parametrize("name, code", [("SIGINT", 130), ("SIGTERM", 143)])
def test_a_stop_signal_during_export_leaves_the_previous_export_whole(digits_run, tmp_path, name, code):
    """SIGTERM in the middle of an export ended the process at once: exit -15, no word, a
    temporary file left beside the target. Now both signals unwind: the previous export is byte
    for byte what it was, no temporary file is left, a folder the export made is removed again,
    exit 130/143 with one line."""
    run = tmp_path / "run"
    shutil.copytree(digits_run, run)
    previous = (run / "export" / "digits.safetensors").read_bytes()
    proc = run_cli_script(_script_with_args(_SIGNAL_IN_WRITE, name, "export", run, "--format", "digits"), cwd=tmp_path)
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr and f"interrupted ({name})" in proc.stderr, proc.stderr
    assert "no file was left half-written" in proc.stderr
    assert (run / "export" / "digits.safetensors").read_bytes() == previous
    assert sorted(p.name for p in (run / "export").iterdir()) == ["digits.safetensors"]  # no .tmp left
    fresh = tmp_path / "new" / "deeper" / "digits.safetensors"
    proc = run_cli_script(_script_with_args(_SIGNAL_IN_WRITE, name, "export", run, "--format", "digits", "--out", fresh),
                          cwd=tmp_path)
    assert proc.returncode == code, proc.stderr
    assert not (tmp_path / "new").exists()  # the folders it made for the export are gone again


def test_a_stop_signal_while_tiny_builds_leaves_no_half_built_folder(tmp_path):
    """``treesdk tiny`` wrote straight into --out: SIGTERM left a folder of weights without
    ``treesdk_defaults.json`` that every command then took for a finished pipeline. Now it builds
    under a temporary name and renames when complete; a signal removes the partial folder."""
    pytest.importorskip("diffusers")
    script = """
import os, signal, sys
import treesdk_backends.diffusers.folder_defaults as fd
real = fd.write_folder_defaults
def stop_then_write(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)  # the weights are written, the defaults not yet
    return real(*args, **kwargs)
fd.write_folder_defaults = stop_then_write
sys.argv = ["treesdk", "tiny", "--family", "flux", "--out", "tiny-flux"]
from treesdk_cli.entry import main
main()
"""
    proc = run_cli_script(script, cwd=tmp_path)
    assert proc.returncode == 143, proc.stderr
    assert "Traceback" not in proc.stderr and "interrupted (SIGTERM)" in proc.stderr, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [], sorted(p.name for p in tmp_path.iterdir())


def test_tiny_refuses_a_seed_torch_cannot_take_before_building(tmp_path):
    """``tiny --seed 99999999999999999999`` built half the pipeline, then ended in torch's
    "Overflow when unpacking long long"; the seed's range is now checked by the command line."""
    out = failed(invoke("tiny", "--family", "flux", "--seed", str(2**64), "--out", tmp_path / "t"), code=2)
    assert "--seed" in out
    assert not (tmp_path / "t").exists() and not list(tmp_path.iterdir())


# ---------------------------------------------------------------- export targets


@pytest.fixture
def run(digits_run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    copy = tmp_path / "run"
    shutil.copytree(digits_run, copy)
    return copy


def test_export_onto_a_symlink_replaces_the_link_and_never_the_file_it_points_to(run, tmp_path):
    """The documented behaviour: an existing file is replaced atomically; a symlink at --out is
    replaced by the exported file, the file it pointed to (here outside the run) is left as it was;
    an existing file where a folder target goes (no suffix) is refused by name (was ``[Errno 17]``)."""
    outside = tmp_path / "elsewhere" / "precious.bin"
    outside.parent.mkdir()
    outside.write_bytes(b"precious")
    link = tmp_path / "link.safetensors"
    link.symlink_to(outside)
    assert invoke("export", run, "--format", "digits", "--out", link).exit_code == 0
    assert not link.is_symlink() and link.stat().st_size > 1000
    assert outside.read_bytes() == b"precious"
    plain = tmp_path / "plainfile"  # no suffix: a folder target, but a file is there ("[Errno 17] File exists")
    plain.write_bytes(b"x")
    out = failed(invoke("export", run, "--format", "digits", "--out", plain))
    assert "an existing file without a suffix" in out and plain.read_bytes() == b"x", out
    existing = tmp_path / "existing.safetensors"
    existing.write_bytes(b"old")
    assert invoke("export", run, "--format", "digits", "--out", existing).exit_code == 0
    from safetensors.torch import load_file

    assert load_file(existing).keys() == load_file(link).keys()


def test_an_unwritable_export_target_is_one_line_naming_it_and_leaves_nothing(run, tmp_path, monkeypatch):
    """Root ignores permission bits, so a read-only folder is simulated twice: ``os.access``
    saying no (a folder the check sees), and the temporary file's creation failing with EACCES /
    EROFS (a folder that only refuses the write). The second named the temporary file
    (``.digits.safetensors.PID.XXXX.tmp``) instead of the file asked for."""
    import errno
    import tempfile

    import treesdk.io as io

    target = tmp_path / "ro" / "digits.safetensors"
    target.parent.mkdir()
    real_access = os.access
    monkeypatch.setattr(io.os, "access", lambda p, mode: False if str(p) == str(target.parent) else real_access(p, mode))
    out = failed(invoke("export", run, "--format", "digits", "--out", target))
    assert f"cannot write {target}" in out and "is not writable" in out, out
    monkeypatch.setattr(io.os, "access", real_access)
    for code in (errno.EACCES, errno.EROFS):
        def refuse(*args, code=code, **kwargs):
            raise OSError(code, os.strerror(code), os.path.join(kwargs.get("dir", "."), ".digits.safetensors.1.x.tmp"))

        monkeypatch.setattr(tempfile, "mkstemp", refuse)
        out = failed(invoke("export", run, "--format", "digits", "--out", target))
        assert str(target) in out and os.strerror(code) in out and ".tmp" not in out, out
    monkeypatch.undo()
    assert list(target.parent.iterdir()) == []


def test_a_failed_export_removes_the_folders_it_made(run, tmp_path, monkeypatch):
    """``export --out new/dir`` made ``new/dir`` before loading the model and left it empty when
    the export then failed; the folders it made are removed again (one it did not make is kept)."""
    import treesdk.training.run_folder.checkpoint as checkpoint

    def damaged(*args, **kwargs):
        raise OSError("simulated read error")

    monkeypatch.setattr(checkpoint, "load_trainable", damaged)
    out = failed(invoke("export", run, "--format", "digits", "--out", tmp_path / "new" / "dir"))
    assert "simulated read error" in out
    assert not (tmp_path / "new").exists()
    (tmp_path / "kept").mkdir()
    failed(invoke("export", run, "--format", "digits", "--out", tmp_path / "kept" / "x.safetensors"))
    assert (tmp_path / "kept").is_dir()


# ---------------------------------------------------------------- the model card


HOSTILE = {
    "treesdk.version": "0.1.0",
    "treesdk.backend": "flux",
    "treesdk.family": "flux",
    "treesdk.base_model": "/models/a|b`c\nd <img src=x onerror=alert(1)>",
    "treesdk.algorithm": "<script>alert(1)</script>|x\n# injected heading: [link](javascript:alert(1))",
    "treesdk.recipe": json.dumps({"name": "```\n<script>alert(2)</script>", "steps": 3}),
    "treesdk.iterations": "7",
}


def _outside_code(markdown: str) -> str:
    """``markdown`` with fenced blocks and inline code spans removed (what renders as markup)."""
    import re

    text = re.sub(r"(?ms)^(`{3,})[^\n]*\n.*?^\1\s*$", "", markdown)
    return re.sub(r"(`+).*?\1", "", text)


def test_markup_in_the_card_facts_stays_text(tmp_path):
    """A recipe named ``<script>...|x`` with a line break, a model path with a pipe and a
    backtick, a reward name with markup: the card's table gained columns and rows, the heading
    rendered HTML, the front matter's YAML broke and a recipe string holding a fence closed the
    JSON block. Each is now text: one table row per fact, no HTML outside code, YAML that
    parses to the same tag, fences that hold."""
    from treesdk.training.exporting.model_card import MARKER, model_card, write_model_card

    card = model_card(HOSTILE, "lora", ["/x/lora.safetensors"], rewards={"my|`<b>reward": 1.0})
    _, front, body = card.split("---\n", 2)
    assert HOSTILE["treesdk.algorithm"].replace("\n", " ") in yaml.safe_load(front)["tags"]
    rows = [line for line in body.splitlines() if line.startswith("| ")]
    assert [r.split(" | ")[0] for r in rows] == ["|", "| base model", "| backend", "| algorithm", "| rewards",
                                                "| iterations", "| export format", "| files"], rows
    for row in rows:  # three unescaped pipes: two columns
        assert len([i for i, c in enumerate(row) if c == "|" and (i == 0 or row[i - 1] != "\\")]) == 3, row
    rendered = _outside_code(body)
    assert "<script" not in rendered and "<img" not in rendered and "](javascript" not in rendered, rendered
    assert not [line for line in body.splitlines() if line.startswith("# injected")]
    assert "alert(2)" in card and card.count("````") == 2  # the recipe's fence is longer than its content's
    written = write_model_card([str(tmp_path / "lora.safetensors")], "lora", HOSTILE)
    assert written.read_text().startswith("---") and MARKER in written.read_text()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


# ---------------------------------------------------------------- bench budgets


def test_bench_with_absurd_or_infinite_budgets_ends_cleanly(tmp_path, monkeypatch):
    """``--steps 100000`` (or a window longer than the steps) ended in ``RuntimeError: no
    algorithm could be evaluated`` with a traceback after the backend loaded; ``--seconds inf``
    wrote ``Infinity`` into bench.json, which strict JSON readers refuse. Now the recipes are
    checked before anything runs, and bench.json is strict JSON (no budget: ``null``)."""
    monkeypatch.chdir(tmp_path)
    for flags, words in ((["--steps", "100000"], ["invalid recipe 'grpo'", "steps", "1000"]),
                         (["--steps", "2", "--set", "tree.d=5"], ["tree.d = 5 exceeds steps = 2"])):
        out = failed(invoke("bench", "--algo", "grpo", "--iters", "1", "--batch", "1", *flags, "--out", tmp_path / "b"))
        for word in words:
            assert word in out, (word, out)
        assert not (tmp_path / "b").exists()
    out = failed(invoke("bench", "--algo", "grpo", "--seconds", "0", "--out", tmp_path / "b"), code=2)
    assert "--seconds" in out
    ok = invoke("bench", "--algo", "grpo", "--seconds", "inf", "--iters", "1", "--batch", "1", "--steps", "4",
                "--eval-every", "1000000", "--out", tmp_path / "b")
    assert ok.exit_code == 0, ok.output

    def refuse(token):
        raise ValueError(f"not strict JSON: {token}")

    report = json.loads((tmp_path / "b" / "bench.json").read_text(), parse_constant=refuse)
    assert report["algorithms"]["grpo"]["iterations"] == 1


# ---------------------------------------------------------------- train: folders, loggers, run files


def test_a_second_train_on_a_folder_in_use_names_the_running_pid(finished):
    """A run is live in the folder (its lock names a live pid): a second ``train --out`` there was
    told the folder "is not empty ... pass --resume", and ``--resume`` then got as far as loading
    before the lock refused it. Both are refused first, naming the pid and how to stop it."""
    from treesdk.training.run_folder.run_folders import LOCK_NAME

    import socket

    (finished / LOCK_NAME).write_text(f"{os.getppid()} {socket.gethostname()}\n")  # a live process of this host
    before = snapshot(finished)
    for extra in ([], ["--resume"]):
        out = failed(train(finished.parent, "--iters", "3", "--out", finished, *extra))
        assert f"pid {os.getppid()}" in out and "another treesdk run" in out and f"kill -INT {os.getppid()}" in out, out
        assert "not empty" not in out
    assert snapshot(finished) == before


@pytest.mark.parametrize("value, words", [
    ("none,tensorboard", ["'none' turns every logger off", "cannot be combined"]),
    ("jsonl,bogus", ["unknown logger 'bogus'", "or 'none' alone"]),
])
def test_report_to_values_are_one_line_naming_the_flag_once(plugins, value, words):
    """``--report-to none,tensorboard`` said "unknown logger 'none'" (none is a valid value), and
    every logger error named the flag twice (``--report-to: --report-to: ...``)."""
    out = failed(train(plugins, "--iters", "1", "--report-to", value, "--out", plugins / "run"))
    for word in words:
        assert word in out, (word, out)
    assert out.count("--report-to:") == 1, out
    assert not (plugins / "run").exists()


@pytest.mark.parametrize("text, words", [
    ("iters: !!python/object/apply:os.system ['touch PWNED']\n", ["could not determine a constructor", "python/object"]),
    ("a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{n}: &{n} [{', '.join(['*' + p] * 10)}]\n" for p, n in zip("abcdef", "bcdefg")), ["expands to more than"]),
    ("seed: abc\n", ["seed", "valid integer"]),
    ("checkpoint: [1, 2]\n", ["checkpoint"]),
    ("iterz: 3\n", ["iterz", "Extra inputs are not permitted"]),
    ("- 1\n- 2\n", ["must hold a mapping"]),
])
def test_hostile_run_files_are_one_line_and_never_run_code(plugins, text, words):
    """Run files are read with the safe loader, aliases bounded: Python tags, anchor bombs, wrong
    types, unknown keys and non-mappings end in one line naming the file; no tag runs code."""
    (plugins / "run.yaml").write_text(text)
    out = failed(train(plugins, "--config", plugins / "run.yaml", "--iters", "1", "--out", plugins / "run"))
    for word in words:
        assert word in out, (word, out)
    assert "run.yaml" in out and len(out) < 600, out
    assert not (plugins / "PWNED").exists() and not (plugins / "run").exists()


@pytest.mark.parametrize("name, content, words", [
    ("empty.txt", b"", ["holds no prompts"]),
    ("comments.txt", b"# only a comment\n\n", ["holds no prompts"]),
    ("cols.csv", b"a,b\nx,y\n", ["no column named prompt", "its columns are: a, b"]),
    ("cols.jsonl", b'{"id": "1", "caption_x": "a cat"}\n', ["line 1 has no column named prompt", "id, caption_x"]),
    ("number.jsonl", b'{"prompt": 5}\n', ["line 1", "'prompt' is int 5, not text"]),
    ("nul.jsonl", b'{"prompt": "a\\u0000cat"}\n', ["control character"]),
    ("binary.csv", b"prompt\n\xff\xfe\x00\x01\n", ["not UTF-8"]),
    ("huge.txt", b"y" * 100_001 + b"\n", ["100001 characters"]),
])
def test_prompt_files_of_every_format_with_the_wrong_content_are_one_line(plugins, name, content, words):
    """Re-checked for every format; a JSONL record whose prompt field is a number was dropped as
    "no prompt" and the file then said to hold none."""
    (plugins / name).write_bytes(content)
    out = failed(invoke("train", *MIXTURE, "--reward", "brightness", "--prompts", plugins / name, "--iters", "1",
                        "--out", plugins / "run"))
    for word in words:
        assert word in out, (word, out)
    assert not (plugins / "run").exists()


# ---------------------------------------------------------------- plugins --json


def test_plugins_json_is_strict_json_alone_on_stdout(tmp_path, monkeypatch):
    """A plugin printing while it imports put its text in front of the JSON, and an option
    defaulting to ``inf`` was written as ``Infinity``: ``json.loads`` of stdout failed both times."""
    site = tmp_path / "site"
    info = site / "chatty-0.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: chatty\nVersion: 0.0\n")
    (info / "entry_points.txt").write_text("[treesdk.rewards]\nchatty = chatty_reward:Chatty\n")
    (site / "chatty_reward.py").write_text(
        "print('hello from chatty')\n"
        "class Chatty:\n"
        "    name = 'chatty'\n"
        "    def __init__(self, scale: float = float('inf')):\n"
        "        self.scale = scale\n"
        "    def score(self, images, prompts):\n"
        "        return [0.0] * len(images)\n")
    monkeypatch.syspath_prepend(str(site))

    def refuse(token):
        raise ValueError(f"not strict JSON: {token}")

    for flags in ([], ["--verbose"]):
        result = invoke("plugins", "--json", *flags)
        assert result.exit_code == 0, result.output
        rows = json.loads(result.stdout, parse_constant=refuse)
        chatty = next(r for r in rows if r["name"] == "chatty")
        assert chatty["ok"], chatty
        if flags:
            assert chatty["options"]["scale"]["default"] == "inf"
        else:  # imported (and printing) on the first listing only
            assert "hello from chatty" in result.stderr


def test_latents_that_cannot_fit_in_memory_are_refused_before_any_folder(tmp_path):
    """`--batch 1000000000` used to be killed for memory (exit 137) with its run folder left behind."""
    from treesdk_cli.main import app
    from typer.testing import CliRunner

    out = tmp_path / "huge"
    result = CliRunner().invoke(app, ["train", "--batch", "1000000000", "--iters", "1", "--out", str(out)])
    assert result.exit_code == 1, result.output
    assert "GiB of sampled latents" in result.output and "--batch 1000000000" in result.output
    assert not out.exists()


def test_the_sampling_memory_check_counts_the_planned_latents():
    import treesdk
    from treesdk.training.loop.sampling_memory import SamplingMemoryError, check_sampling_memory, sampled_latent_bytes

    backend = treesdk.load_backend("digits")
    recipe = treesdk.load_algorithm("grpo", steps=4)
    needed, latents, elements = sampled_latent_bytes(backend, recipe, batch=2)
    assert latents == 2 * 24 * 4 and elements == 64 and needed == latents * elements * 8  # 24 roots x 4 SDE steps
    check_sampling_memory(backend, recipe, 2, available=needed)  # exactly enough: passes
    with pytest.raises(SamplingMemoryError, match="lower --batch"):
        check_sampling_memory(backend, recipe, 2, available=needed - 1)


def test_a_warmup_longer_than_the_run_is_said(tmp_path):
    from treesdk_cli.main import app
    from typer.testing import CliRunner

    result = CliRunner().invoke(app, ["train", "--iters", "1", "--batch", "1", "--steps", "2", "--d", "1", "--lr-warmup", "5",
                                      "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert "warm-up (5 iterations) is not shorter than the run (1 iterations)" in " ".join(result.output.split())
