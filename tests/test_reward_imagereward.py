"""ImageReward plugin on a tiny random checkpoint written with the *official* key names and layout
(``blip.visual_encoder.*`` timm-style ViT, ``blip.text_encoder.*`` BLIP med BERT with
cross-attention, ``mlp.layers.*``, plus the unused ``blip.vision_proj``/``text_proj``), scored against
a plain-torch transcription of the official forward (BLIP ``vit.py`` / ``med.py`` /
``ImageReward.score``). Identity with the official package itself is checked by
``tools/imagereward_parity.py`` in an old-stack environment."""

from __future__ import annotations

import json
import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")

import treesdk.registry as registry
from treesdk_plugins import common
from treesdk_plugins.imagereward import MEAN, STD, ImageRewardReward

V_WIDTH, V_DEPTH, V_HEADS, PATCH, IMAGE = 32, 2, 2, 8, 32
T_WIDTH, T_DEPTH, T_HEADS, T_INTER = 64, 2, 2, 96
WORDS = "a photo of cat on red sofa an astronaut riding horse bowl soup sign that says hello".split()
PROMPTS = ["a photo of a cat on a red sofa", "an astronaut riding a horse", "a bowl of soup", "a sign that says hello"]


def official_state_dict(vocab: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors under the official ImageReward key names and shapes."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=None):
        scale = scale if scale is not None else 0.5 / math.sqrt(shape[-1])
        return torch.randn(*shape, generator=g) * scale

    def norm(prefix, dim):
        return {f"{prefix}.weight": 1 + rnd(dim, scale=0.1), f"{prefix}.bias": rnd(dim, scale=0.1)}

    sd: dict[str, torch.Tensor] = {}
    v = "blip.visual_encoder"
    n_pos = (IMAGE // PATCH) ** 2 + 1
    sd[f"{v}.cls_token"] = rnd(1, 1, V_WIDTH, scale=0.5)
    sd[f"{v}.pos_embed"] = rnd(1, n_pos, V_WIDTH, scale=0.5)
    sd[f"{v}.patch_embed.proj.weight"] = rnd(V_WIDTH, 3, PATCH, PATCH, scale=0.2)
    sd[f"{v}.patch_embed.proj.bias"] = rnd(V_WIDTH, scale=0.1)
    for i in range(V_DEPTH):
        b = f"{v}.blocks.{i}"
        sd |= norm(f"{b}.norm1", V_WIDTH) | norm(f"{b}.norm2", V_WIDTH)
        sd[f"{b}.attn.qkv.weight"], sd[f"{b}.attn.qkv.bias"] = rnd(3 * V_WIDTH, V_WIDTH), rnd(3 * V_WIDTH, scale=0.1)
        sd[f"{b}.attn.proj.weight"], sd[f"{b}.attn.proj.bias"] = rnd(V_WIDTH, V_WIDTH), rnd(V_WIDTH, scale=0.1)
        sd[f"{b}.mlp.fc1.weight"], sd[f"{b}.mlp.fc1.bias"] = rnd(4 * V_WIDTH, V_WIDTH), rnd(4 * V_WIDTH, scale=0.1)
        sd[f"{b}.mlp.fc2.weight"], sd[f"{b}.mlp.fc2.bias"] = rnd(V_WIDTH, 4 * V_WIDTH), rnd(V_WIDTH, scale=0.1)
    sd |= norm(f"{v}.norm", V_WIDTH)
    t = "blip.text_encoder"
    sd[f"{t}.embeddings.word_embeddings.weight"] = rnd(vocab, T_WIDTH, scale=1.0)
    sd[f"{t}.embeddings.position_embeddings.weight"] = rnd(512, T_WIDTH, scale=0.5)
    sd[f"{t}.embeddings.position_ids"] = torch.arange(512).expand(1, -1)
    sd |= norm(f"{t}.embeddings.LayerNorm", T_WIDTH)
    for i in range(T_DEPTH):
        layer = f"{t}.encoder.layer.{i}"
        for att, kv_width in (("attention", T_WIDTH), ("crossattention", V_WIDTH)):
            sd[f"{layer}.{att}.self.query.weight"], sd[f"{layer}.{att}.self.query.bias"] = rnd(T_WIDTH, T_WIDTH), rnd(T_WIDTH, scale=0.1)
            for kv in ("key", "value"):
                sd[f"{layer}.{att}.self.{kv}.weight"], sd[f"{layer}.{att}.self.{kv}.bias"] = rnd(T_WIDTH, kv_width), rnd(T_WIDTH, scale=0.1)
            sd[f"{layer}.{att}.output.dense.weight"], sd[f"{layer}.{att}.output.dense.bias"] = rnd(T_WIDTH, T_WIDTH), rnd(T_WIDTH, scale=0.1)
            sd |= norm(f"{layer}.{att}.output.LayerNorm", T_WIDTH)
        sd[f"{layer}.intermediate.dense.weight"], sd[f"{layer}.intermediate.dense.bias"] = rnd(T_INTER, T_WIDTH), rnd(T_INTER, scale=0.1)
        sd[f"{layer}.output.dense.weight"], sd[f"{layer}.output.dense.bias"] = rnd(T_WIDTH, T_INTER), rnd(T_WIDTH, scale=0.1)
        sd |= norm(f"{layer}.output.LayerNorm", T_WIDTH)
    sd["blip.vision_proj.weight"], sd["blip.vision_proj.bias"] = rnd(256, V_WIDTH), rnd(256)
    sd["blip.text_proj.weight"], sd["blip.text_proj.bias"] = rnd(256, T_WIDTH), rnd(256)
    dims = [T_WIDTH, 1024, 128, 64, 16, 1]
    for index, (i, o) in zip([0, 2, 4, 6, 7], zip(dims[:-1], dims[1:])):
        sd[f"mlp.layers.{index}.weight"], sd[f"mlp.layers.{index}.bias"] = rnd(o, i, scale=2 / math.sqrt(i)), rnd(o, scale=0.1)
    return sd


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("imagereward")
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(set(WORDS)) + letters + ["##" + c for c in letters]
    (folder / "vocab.txt").write_text("\n".join(tokens) + "\n")
    vocab = len(tokens) + 2  # + [DEC], [ENC] as BLIP's init_tokenizer adds
    med = {
        "architectures": ["BertModel"], "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1, "hidden_size": T_WIDTH, "initializer_range": 0.02, "intermediate_size": T_INTER,
        "layer_norm_eps": 1e-12, "max_position_embeddings": 512, "model_type": "bert", "num_attention_heads": T_HEADS,
        "num_hidden_layers": T_DEPTH, "pad_token_id": 0, "type_vocab_size": 2, "vocab_size": vocab,
        "encoder_width": 768, "add_cross_attention": True,
    }
    (folder / "med_config.json").write_text(json.dumps(med))
    state = official_state_dict(vocab)
    torch.save(state, folder / "ImageReward.pt")
    return folder, state


def reference_scores(state, folder, images, prompts):
    """The official forward (BLIP vit.py, med.py, ImageReward.score) written out in plain torch."""
    from torchvision.transforms import CenterCrop, InterpolationMode, Normalize, Resize

    sd = state
    x = CenterCrop(IMAGE)(Resize(IMAGE, interpolation=InterpolationMode.BICUBIC, antialias=True)(images))
    x = Normalize((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))(x)
    v = "blip.visual_encoder"
    x = F.conv2d(x, sd[f"{v}.patch_embed.proj.weight"], sd[f"{v}.patch_embed.proj.bias"], stride=PATCH).flatten(2).transpose(1, 2)
    x = torch.cat([sd[f"{v}.cls_token"].expand(x.shape[0], -1, -1), x], 1) + sd[f"{v}.pos_embed"]

    def ln(h, p, eps):
        return F.layer_norm(h, h.shape[-1:], sd[f"{p}.weight"], sd[f"{p}.bias"], eps)

    def lin(h, p):
        return F.linear(h, sd[f"{p}.weight"], sd[f"{p}.bias"])

    B, N, C = x.shape
    for i in range(V_DEPTH):
        b = f"{v}.blocks.{i}"
        qkv = lin(ln(x, f"{b}.norm1", 1e-6), f"{b}.attn.qkv").reshape(B, N, 3, V_HEADS, C // V_HEADS).permute(2, 0, 3, 1, 4)
        attn = ((qkv[0] @ qkv[1].transpose(-2, -1)) * (C // V_HEADS) ** -0.5).softmax(-1)
        x = x + lin((attn @ qkv[2]).transpose(1, 2).reshape(B, N, C), f"{b}.attn.proj")
        x = x + lin(F.gelu(lin(ln(x, f"{b}.norm2", 1e-6), f"{b}.mlp.fc1")), f"{b}.mlp.fc2")
    image_embeds = ln(x, f"{v}.norm", 1e-6)

    tokenizer = transformers.BertTokenizer.from_pretrained(folder)
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    tok = tokenizer(prompts, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
    ids, mask = tok["input_ids"], tok["attention_mask"]
    t = "blip.text_encoder"
    L = ids.shape[1]
    h = ln(sd[f"{t}.embeddings.word_embeddings.weight"][ids] + sd[f"{t}.embeddings.position_embeddings.weight"][:L], f"{t}.embeddings.LayerNorm", 1e-12)
    ext = (1.0 - mask[:, None, None, :].float()) * -10000.0  # med.py get_extended_attention_mask

    def attention(q_in, kv_in, p, add_mask):
        d = T_WIDTH // T_HEADS

        def heads(z):
            return z.view(z.shape[0], z.shape[1], T_HEADS, d).transpose(1, 2)

        q, k, vv = heads(lin(q_in, f"{p}.self.query")), heads(lin(kv_in, f"{p}.self.key")), heads(lin(kv_in, f"{p}.self.value"))
        scores = q @ k.transpose(-1, -2) / math.sqrt(d)
        if add_mask is not None:
            scores = scores + add_mask
        ctx = (scores.softmax(-1) @ vv).transpose(1, 2).reshape(q_in.shape)
        return ln(lin(ctx, f"{p}.output.dense") + q_in, f"{p}.output.LayerNorm", 1e-12)

    for i in range(T_DEPTH):
        layer = f"{t}.encoder.layer.{i}"
        h = attention(h, h, f"{layer}.attention", ext)
        h = attention(h, image_embeds, f"{layer}.crossattention", None)  # all-ones image mask
        h = ln(lin(F.gelu(lin(h, f"{layer}.intermediate.dense")), f"{layer}.output.dense") + h, f"{layer}.output.LayerNorm", 1e-12)
    r = h[:, 0]
    for index in (0, 2, 4, 6, 7):
        r = lin(r, f"mlp.layers.{index}")
    return ((r.squeeze(-1) - 0.16717362830052426) / 1.0333394966054072).float()


@pytest.fixture(scope="module")
def images():
    return torch.rand(len(PROMPTS), 3, IMAGE + 8, IMAGE + 16, generator=torch.Generator().manual_seed(5))


def load(folder, **options):
    options = {"checkpoint": str(folder / "ImageReward.pt"), "tokenizer": str(folder), "vision_heads": V_HEADS, "device": "cpu"} | options
    return ImageRewardReward(**options)


def test_score_equals_official_forward(files, images):
    folder, state = files
    reward = load(folder)  # med_config.json found next to the checkpoint
    got = reward.score(images, PROMPTS)
    expected = reference_scores(state, folder, images, PROMPTS)
    assert got.dtype == torch.float32 and got.shape == (len(PROMPTS),)
    assert expected.std() > 0.1  # the prompts/images really change the score
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert (MEAN, STD) == (0.16717362830052426, 1.0333394966054072)


def test_batch_equals_one_by_one(files, images):
    folder, _ = files
    reward = load(folder, batch_size=3, med_config=str(folder / "med_config.json"))
    single = torch.cat([reward.score(images[i : i + 1], PROMPTS[i : i + 1]) for i in range(len(PROMPTS))])
    torch.testing.assert_close(reward.score(images, PROMPTS), single, atol=1e-5, rtol=1e-5)


def test_bfloat16_backbone_keeps_a_float32_head(files, images):
    folder, _ = files
    full = load(folder).score(images, PROMPTS)
    half = load(folder, dtype="bfloat16")
    assert next(half.model.visual_encoder.parameters()).dtype == torch.bfloat16
    assert next(half.model.mlp.parameters()).dtype == torch.float32
    got = half.score(images, PROMPTS)
    assert got.dtype == torch.float32
    assert torch.corrcoef(torch.stack([got, full]))[0, 1] > 0.9


def test_unknown_or_missing_keys_are_errors(files, tmp_path):
    folder, state = files
    extra = tmp_path / "extra.pt"
    torch.save(state | {"blip.itm_head.weight": torch.zeros(2, T_WIDTH)}, extra)
    with pytest.raises(ValueError, match=r"extra\.pt.*does not have.*blip\.itm_head\.weight.*ImageReward checkpoint"):
        load(folder, checkpoint=str(extra), med_config=str(folder / "med_config.json"))
    missing = tmp_path / "missing.pt"
    torch.save({k: v for k, v in state.items() if "crossattention" not in k}, missing)
    with pytest.raises(ValueError, match=r"missing\.pt.*missing keys.*crossattention"):
        load(folder, checkpoint=str(missing), med_config=str(folder / "med_config.json"))
    hps_like = tmp_path / "hps.pt"
    torch.save({"state_dict": {"visual.conv1.weight": torch.zeros(1)}}, hps_like)
    with pytest.raises(ValueError, match=r"hps\.pt.*blip\.visual_encoder\.pos_embed.*ImageReward checkpoint"):
        load(folder, checkpoint=str(hps_like), med_config=str(folder / "med_config.json"))


def test_wrong_med_config_is_an_error(files, tmp_path):
    folder, _ = files
    med = json.loads((folder / "med_config.json").read_text())
    (tmp_path / "med_config.json").write_text(json.dumps(med | {"hidden_size": 48}))
    with pytest.raises(ValueError, match=r"ImageReward\.pt.*shape mismatches"):
        load(folder, med_config=str(tmp_path / "med_config.json"))
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ValueError, match=r"broken\.json.*not a JSON file"):
        load(folder, med_config=str(tmp_path / "broken.json"))


def test_missing_files_are_explained(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("TREESDK_WEIGHTS", raising=False)
    with pytest.raises(FileNotFoundError, match=r"ImageReward\.pt.*THUDM/ImageReward.*local Hugging Face cache"):
        ImageRewardReward(device="cpu")
    with pytest.raises(FileNotFoundError, match=r"nothere\.pt.*ImageReward checkpoint"):
        ImageRewardReward(checkpoint=str(tmp_path / "nothere.pt"), device="cpu")


def test_missing_transformers_names_the_extra(monkeypatch):
    real = common.importlib.import_module

    def fake(name, *args):
        if name == "transformers":
            raise ImportError("No module named 'transformers'")
        return real(name, *args)

    monkeypatch.setattr(common.importlib, "import_module", fake)
    with pytest.raises(common.MissingExtraError, match=r"pip install 'treesdk\[clip\]'"):
        ImageRewardReward(device="cpu")


def test_registered():
    assert registry.load("reward", "imagereward") is ImageRewardReward
