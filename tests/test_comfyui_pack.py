"""The generated ComfyUI node pack: imports without ComfyUI, follows INPUT_TYPES conventions, and
its nodes run treesdk (tree search on the digits backend returns the best image per prompt)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

import treesdk
from treesdk.nodes import comfyui_pack
from treesdk import nodes

os.environ.setdefault("HF_HUB_OFFLINE", "1")

WIDGETS = {"INT", "FLOAT", "BOOLEAN", "STRING"}


@pytest.fixture(scope="module")
def pack_dir(tmp_path_factory):
    from treesdk_cli.main import app

    target = tmp_path_factory.mktemp("custom_nodes") / "treesdk_pack"
    result = CliRunner().invoke(app, ["comfyui", "export", str(target)])
    assert result.exit_code == 0, result.output
    return target


@pytest.fixture(scope="module")
def pack(pack_dir):
    """The generated package imported by path, as ComfyUI imports a custom-node folder."""
    spec = importlib.util.spec_from_file_location("treesdk_pack_under_test", pack_dir / "__init__.py",
                                                  submodule_search_locations=[str(pack_dir)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)
    sys.modules.pop(spec.name + ".nodes", None)


def test_pack_imports_without_comfyui_or_treesdk(pack_dir):
    code = (
        "import importlib.util, sys\n"
        "assert importlib.util.find_spec('comfy') is None, 'ComfyUI is installed here'\n"
        f"spec = importlib.util.spec_from_file_location('pack', {str(pack_dir / '__init__.py')!r}, "
        f"submodule_search_locations=[{str(pack_dir)!r}])\n"
        "m = importlib.util.module_from_spec(spec); sys.modules['pack'] = m; spec.loader.exec_module(m)\n"
        "assert not any(name == 'treesdk' or name.startswith(('treesdk.', 'torch', 'comfy')) for name in sys.modules)\n"
        "for cls in m.NODE_CLASS_MAPPINGS.values(): cls.INPUT_TYPES()\n"
        "print(len(m.NODE_CLASS_MAPPINGS))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.strip()) == len(nodes.all_nodes())


def test_mappings_cover_every_node(pack):
    types = {cls.TREESDK_NODE for cls in pack.NODE_CLASS_MAPPINGS.values()}
    assert types == set(nodes.all_nodes())
    assert set(pack.NODE_DISPLAY_NAME_MAPPINGS) == set(pack.NODE_CLASS_MAPPINGS)
    for required in ("tree-search", "load-lora", "score-images", "tree", "tree-backup", "clipped-surrogate", "reward:digit-classifier"):
        assert required in types


def test_input_types_follow_comfyui_conventions(pack):
    for name, cls in pack.NODE_CLASS_MAPPINGS.items():
        assert isinstance(cls.RETURN_TYPES, tuple) and len(cls.RETURN_TYPES) == len(cls.RETURN_NAMES), name
        assert callable(getattr(cls(), cls.FUNCTION)), name
        assert cls.CATEGORY.startswith("treesdk"), name
        types = cls.INPUT_TYPES()
        assert set(types) == {"required", "optional"}, name
        for section in types.values():
            for field, entry in section.items():
                assert isinstance(entry, tuple) and len(entry) == 2, (name, field)
                kind, opts = entry
                assert isinstance(kind, list) or kind in WIDGETS or kind in {"IMAGE", "MODEL"} or kind.startswith("TREESDK_"), (name, field, kind)
                assert "tooltip" in opts, (name, field)
                if kind in ("INT", "FLOAT"):
                    assert opts["min"] <= opts["max"], (name, field)
                    if "default" in opts:
                        assert opts["min"] <= opts["default"] <= opts["max"], (name, field, opts)
                        assert isinstance(opts["default"], int if kind == "INT" else float), (name, field)
                if isinstance(kind, list) and "default" in opts:
                    assert opts["default"] in kind


def test_specs_become_widgets(pack):
    tree = pack.NODE_CLASS_MAPPINGS["TreesdkTree"].INPUT_TYPES()["required"]
    assert tree["k"] == ("INT", {"min": 1, "max": 64, "step": 1, "default": 3,
                                 "tooltip": "children per node at each window step (branching factor)"})
    clip = pack.NODE_CLASS_MAPPINGS["TreesdkClippedSurrogate"].INPUT_TYPES()["required"]
    assert clip["clip"][0] == ["fixed", "asymmetric", "reward-adaptive"]
    assert clip["eps"][0] == "FLOAT" and clip["eps"][1]["default"] == 1e-4 and clip["eps"][1]["step"] <= 1e-5
    backup = pack.NODE_CLASS_MAPPINGS["TreesdkTreeBackup"].INPUT_TYPES()
    assert backup["required"]["global_std"][0] == "BOOLEAN"
    assert backup["optional"]["clip"][1].get("forceInput") is True  # None default: unset = None
    reward = pack.NODE_CLASS_MAPPINGS["TreesdkRewardDigitClassifier"].INPUT_TYPES()
    assert reward["optional"]["checkpoint"][0] == "STRING" and reward["optional"]["checkpoint"][1]["default"] == ""
    search = pack.NODE_CLASS_MAPPINGS["TreesdkTreeSearch"]
    assert search.RETURN_TYPES == ("IMAGE", "STRING")
    assert search.INPUT_TYPES()["required"]["backend"][0] == "TREESDK_BACKEND"
    assert pack.NODE_CLASS_MAPPINGS["TreesdkLoadLora"].RETURN_TYPES == ("MODEL", "TREESDK_BACKEND")


def test_generation_is_deterministic_and_refuses_foreign_folders(pack_dir, tmp_path):
    assert (pack_dir / "nodes.py").read_text() == comfyui_pack.pack_sources()["nodes.py"]
    comfyui_pack.export_pack(pack_dir)  # regenerating over a pack is fine
    foreign = tmp_path / "other"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("x")
    with pytest.raises(ValueError, match="not empty"):
        comfyui_pack.export_pack(foreign)


def test_part_nodes_validate_their_widgets(pack):
    backup = pack.NODE_CLASS_MAPPINGS["TreesdkTreeBackup"]()
    (spec,) = backup.run(attribution="path", temperature=0.5, global_std=False, eps=1e-4)
    assert spec.kind == "tree-backup" and spec.attribution == "path" and spec.clip is None
    with pytest.raises(ValueError, match="temperature"):
        backup.run(attribution="edge", temperature=-1.0, global_std=False, eps=1e-4)
    optim = pack.NODE_CLASS_MAPPINGS["TreesdkAdamw"]()
    (o,) = optim.run(lr=1e-3, betas="[0.8, 0.9]", weight_decay=0.0, eps=1e-8, grad_clip=1.0, passes=1, minibatches=1)
    assert o.betas == (0.8, 0.9)


def test_recipe_node_assembles_and_checks_a_recipe(pack):
    m = pack.NODE_CLASS_MAPPINGS
    (tree,) = m["TreesdkTree"]().run(k=2, d=3, roots=1, max_leaves=64, sde_outside_window=True)
    (adv,) = m["TreesdkTreeBackup"]().run()
    (clip,) = m["TreesdkClippedSurrogate"]().run(clip="reward-adaptive")
    (sft,) = m["TreesdkLayertuningSft"]().run(weight=0.1)
    recipe_node = m["TreesdkRecipe"]()
    (recipe,) = recipe_node.run(name="h", steps=10, chunk=64, tree=tree, advantage=adv, losses_1=clip, losses_2=sft)
    assert [loss.kind for loss in recipe.losses] == ["clipped-surrogate", "layertuning-sft"] and recipe.tree.sde_outside_window
    with pytest.raises(ValueError, match="exceeds steps"):
        recipe_node.run(name="h", steps=2, chunk=64, tree=tree, advantage=adv, losses_1=clip)
    with pytest.raises(ValueError, match="'advantage'"):
        recipe_node.run(name="h", steps=10, chunk=64, tree=tree, losses_1=clip)


# ----------------------------------------------------------------------------------------------
# running nodes on the digits backend


@pytest.fixture(scope="module")
def digits_path(tmp_path_factory):
    from treesdk_backends.digits import DigitsFlowNet, save_digits_checkpoint

    torch.manual_seed(0)
    net = DigitsFlowNet(channels=8, emb_dim=16)
    return save_digits_checkpoint(net, tmp_path_factory.mktemp("digits") / "tiny.safetensors", {})


@pytest.fixture(scope="module")
def digits_nodes(pack, digits_path):
    m = pack.NODE_CLASS_MAPPINGS
    (backend,) = m["TreesdkBackendDigits"]().run(model=str(digits_path), device="cpu", dtype="float32", guidance_scale=1.0, shift=1.0)
    (reward,) = m["TreesdkRewardDigitClassifier"]().run(checkpoint="", device="cpu", batch_size=256)
    return backend, reward


def test_tree_search_node_returns_the_best_leaf_per_prompt(pack, digits_nodes):
    backend, reward = digits_nodes
    prompts = ["a handwritten digit 3", "a handwritten digit 5"]
    search = pack.NODE_CLASS_MAPPINGS["TreesdkTreeSearch"]()
    images, report = search.run(backend=backend, reward=reward, prompt="\n".join(prompts), steps=4, k=2, d=2,
                                roots=1, window_start=1, noise_level=0.7, seed=3, chunk=64)
    assert images.shape == (2, 8, 8, 3) and images.dtype == torch.float32
    assert 0.0 <= float(images.min()) and float(images.max()) <= 1.0
    assert "velocity evaluations: 16" in report  # 2 prompts * (1 + (1 + 2) + 4 * 1)

    # the same forest, scored independently: the node kept each prompt's best leaf
    from treesdk.sampler import sample_forest

    forest = sample_forest(backend, prompts, [3, 4], steps=4, k=2, depth=2, roots=1, window_start=1, noise_level=0.7)
    leaves = backend.decode(forest.leaves)
    scores = reward.score(leaves, [p for p in prompts for _ in range(4)]).view(2, 4)
    best = leaves.view(2, 4, 3, 8, 8)[torch.arange(2), scores.argmax(1)].permute(0, 2, 3, 1)
    torch.testing.assert_close(images, best)
    assert scores.max(1).values.min() >= scores.mean(1).min()


def test_tree_search_node_takes_tree_and_noise_nodes(pack, digits_nodes):
    backend, reward = digits_nodes
    m = pack.NODE_CLASS_MAPPINGS
    (tree,) = m["TreesdkTree"]().run(k=3, d=1, roots=2, max_leaves=64)
    (noise,) = m["TreesdkNoiseSchedule"]().run(kind="linear", level=0.5, beta=1.0)
    images, report = m["TreesdkTreeSearch"]().run(backend=backend, reward=reward, prompt="a handwritten digit 1",
                                                   steps=3, window_start=0, seed=0, tree=tree, noise=noise)
    assert images.shape == (1, 8, 8, 3) and "of 6 leaves" in report
    with pytest.raises(ValueError, match="window_start"):
        m["TreesdkTreeSearch"]().run(backend=backend, reward=reward, prompt="a handwritten digit 1", steps=3, d=3, window_start=2)


def test_score_node_scores_comfy_images(pack, digits_nodes):
    backend, reward = digits_nodes
    images = torch.rand(3, 8, 8, 3)
    mean, text = pack.NODE_CLASS_MAPPINGS["TreesdkScoreImages"]().run(images=images, reward=reward, prompt="a handwritten digit 2")
    expected = reward.score(images.permute(0, 3, 1, 2), ["a handwritten digit 2"] * 3)
    assert mean == pytest.approx(float(expected.mean()), rel=1e-5)
    assert [float(v) for v in text.split(", ")] == pytest.approx(expected.tolist(), rel=1e-4)
    with pytest.raises(ValueError, match="prompt"):
        pack.NODE_CLASS_MAPPINGS["TreesdkScoreImages"]().run(images=images, reward=reward, prompt="a\nb")


def test_load_lora_node_loads_an_export_into_a_backend(pack, digits_path, tmp_path):
    trained = treesdk.load_backend("digits", model=digits_path)
    with torch.no_grad():
        for p in trained.trainable_parameters():
            p.add_(0.25)
    (export,) = trained.export("digits", str(tmp_path / "trained.safetensors"), {"treesdk.backend": "digits"})
    base = treesdk.load_backend("digits", model=digits_path)
    before = base.trainable_state_dict()
    node = pack.NODE_CLASS_MAPPINGS["TreesdkLoadLora"]()
    model, backend = node.run(path=export, strength=0.5, backend=base)
    assert model is None and backend is base
    after = base.trainable_state_dict()
    for key in before:
        torch.testing.assert_close(after[key], before[key] + 0.125)
    node.run(path=export, strength=1.0, backend=base)  # strength is applied to the original base again
    torch.testing.assert_close(base.trainable_state_dict()["out.bias"], before["out.bias"] + 0.25)
    with pytest.raises(ValueError, match="connect"):
        node.run(path=export, strength=1.0)
    with pytest.raises(RuntimeError, match="ComfyUI"):
        node.run(path=export, strength=1.0, model=object())
