"""A real-width bed: FLUX and SD3.5 pipelines at their true hidden size with 1-2 blocks, on disk.

The transformer has the real width (FLUX: 24 heads x 128 = 3072, joint dim 4096, pooled 768;
SD3.5-medium: 24 x 64 = 1536; SD3.5-large: 38 x 64 = 2432) and ``--double``/``--single`` blocks with
random weights; the VAE has the real 16-channel configuration (84 M parameters); the text encoders
are one-layer random CLIP/T5 models whose *outputs* have the real shapes (T5: 4096 wide, 512 tokens
for FLUX / 256 for SD3; CLIP pooled 768, or 768 + 1280 = 2048 for SD3's two CLIPs). Everything is
written with ``save_pretrained`` in the hub layout and loaded back by the backends exactly as a
user's checkpoint (``treesdk.load_backend("flux", model=PATH)``). Nothing is downloaded.

    python benchmarks/realwidth.py build --family flux --out /tmp/rw-flux            # ~550 M params
    python benchmarks/realwidth.py build --family sd3 --variant medium --double 2 --out /tmp/rw-sd3m
    python benchmarks/realwidth.py saved --family flux --double 1 --single 0          # activation table

``saved`` prints the bytes autograd keeps for backward per token per hidden unit (saved-tensor
hooks, parameters excluded): the numbers :data:`treesdk.training.loop.plan.ACTIVATION_BYTES` holds.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

#: the width of each family/variant (transformer/config.json values of the released checkpoints)
WIDTHS = {
    ("flux", "dev"): dict(patch_size=1, in_channels=64, attention_head_dim=128, num_attention_heads=24,
                          joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
                          axes_dims_rope=(16, 56, 56)),
    ("sd3", "medium"): dict(attention_head_dim=64, num_attention_heads=24, caption_projection_dim=1536,
                            in_channels=16, out_channels=16, joint_attention_dim=4096, patch_size=2,
                            pooled_projection_dim=2048, pos_embed_max_size=384, qk_norm="rms_norm", sample_size=128),
    ("sd3", "large"): dict(attention_head_dim=64, num_attention_heads=38, caption_projection_dim=2432,
                           in_channels=16, out_channels=16, joint_attention_dim=4096, patch_size=2,
                           pooled_projection_dim=2048, pos_embed_max_size=192, qk_norm="rms_norm", sample_size=128),
}
#: FLUX.1-dev / SD3.5 VAE (AutoencoderKL, 16 latent channels, factor 8)
VAE_CONFIG = dict(in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(128, 256, 512, 512),
                  down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                  layers_per_block=2, norm_num_groups=32, sample_size=1024, use_quant_conv=False,
                  use_post_quant_conv=False)


def transformer(family: str, variant: str, double: int, single: int):
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

    width = dict(WIDTHS[(family, variant)])
    if family == "flux":
        return FluxTransformer2DModel(num_layers=double, num_single_layers=single, **width)
    return SD3Transformer2DModel(num_layers=double, dual_attention_layers=sd3_dual_layers(variant, double), **width)


def sd3_dual_layers(variant: str, blocks: int) -> tuple[int, ...]:
    """SD3.5-medium's blocks 0-12 have dual attention and its last block (23) does not: a bed of
    ``blocks`` keeps that shape (the first ``min(blocks - 1, 13)`` dual, the last one plain and
    ``context_pre_only`` as diffusers builds every last joint block). SD3.5-large has none."""
    return tuple(range(min(blocks - 1, 13))) if variant == "medium" else ()


def _tokenizers(out: Path, clips: list[str], t5: str):
    """Train the tokenizers into ``out/<name>``; returns (the first CLIP tokenizer, the T5 tokenizer)."""
    from transformers import CLIPTokenizer, T5TokenizerFast

    from treesdk_backends.tiny._tokenizers import train_clip_tokenizer, train_t5_tokenizer

    for name in clips:
        train_clip_tokenizer(out / name)
    train_t5_tokenizer(out / t5)
    return CLIPTokenizer.from_pretrained(out / clips[0]), T5TokenizerFast.from_pretrained(out / t5)


def _clip(tokenizer, hidden: int, projection: bool):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=64, num_hidden_layers=1,
                            num_attention_heads=4, max_position_embeddings=77, projection_dim=hidden,
                            bos_token_id=0, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)


def _t5(tokenizer, d_model: int = 4096):
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=d_model, d_ff=32, d_kv=8, num_layers=1,
                                   num_heads=4, relative_attention_num_buckets=8, dropout_rate=0.0,
                                   feed_forward_proj="gated-gelu", is_encoder_decoder=False, pad_token_id=0,
                                   eos_token_id=1))


def build(family: str, variant: str, double: int, single: int, out: Path, seed: int = 0) -> Path:
    """Write the pipeline folder ``out`` (skipped when ``out/model_index.json`` exists); returns it."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, StableDiffusion3Pipeline
    from treesdk_backends.tiny import FLUX1_SCHEDULER_CONFIG
    from treesdk_backends.tiny._common import seeded

    if (out / "model_index.json").is_file():
        config = json.loads((out / "transformer" / "config.json").read_text())
        expected = sd3_dual_layers(variant, double) if family == "sd3" else ()
        if family == "flux" or list(config.get("dual_attention_layers") or ()) == list(expected):
            return out
        raise SystemExit(f"{out} holds a bed with dual_attention_layers {config.get('dual_attention_layers')}, "
                         f"this script builds {list(expected)}: delete the folder to rebuild it")
    out.mkdir(parents=True, exist_ok=True)
    with seeded(seed):
        if family == "flux":
            clip_tok, t5_tok = _tokenizers(out, ["tokenizer"], "tokenizer_2")
            pipe = FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(**FLUX1_SCHEDULER_CONFIG), vae=AutoencoderKL(
                shift_factor=0.1159, scaling_factor=0.3611, **VAE_CONFIG), text_encoder=_clip(clip_tok, 768, False),
                tokenizer=clip_tok, text_encoder_2=_t5(t5_tok), tokenizer_2=t5_tok,
                transformer=transformer(family, variant, double, single))
        else:
            from transformers import CLIPTokenizer

            clip_tok, t5_tok = _tokenizers(out, ["tokenizer", "tokenizer_2"], "tokenizer_3")
            pipe = StableDiffusion3Pipeline(
                scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0),
                vae=AutoencoderKL(shift_factor=0.0609, scaling_factor=1.5305, **VAE_CONFIG),
                text_encoder=_clip(clip_tok, 768, True), tokenizer=clip_tok,
                text_encoder_2=_clip(clip_tok, 1280, True), tokenizer_2=CLIPTokenizer.from_pretrained(out / "tokenizer_2"),
                text_encoder_3=_t5(t5_tok), tokenizer_3=t5_tok, transformer=transformer(family, variant, double, single))
        pipe.save_pretrained(out)
    return out


def block_kind(family: str, block: torch.nn.Module) -> str:
    """The planner's block type of one diffusers block (``treesdk.training.loop.plan.ACTIVATION_BYTES`` keys):
    FLUX ``double`` / ``single``; SD3 ``joint``, ``joint_dual`` (SD3.5's second attention) or
    ``joint_last`` (``context_pre_only``: no context feed-forward, diffusers' last block)."""
    if family == "flux":
        return "single" if type(block).__name__ == "FluxSingleTransformerBlock" else "double"
    if getattr(block, "context_pre_only", False):
        return "joint_last" + ("_dual" if getattr(block, "use_dual_attention", False) else "")
    return "joint_dual" if getattr(block, "use_dual_attention", False) else "joint"


def saved_activation_bytes(family: str, variant: str, double: int, single: int, resolution: int, text_tokens: int,
                           dtype: torch.dtype, lora_rank: int, checkpointing: bool,
                           dual: tuple[int, ...] | None = None) -> dict:
    """Bytes autograd saves in one training forward of one row (parameters excluded), in total and
    per block (each saved storage counted once, for the block whose forward saved it first; what
    the embedders and the output layer save is ``outside``). ``dual``: SD3 dual-attention layers
    (default: the bed's, :func:`sd3_dual_layers`)."""
    from diffusers import SD3Transformer2DModel
    from peft import LoraConfig

    from treesdk_backends.diffusers.families.flux import FLUX_LORA_TARGETS
    from treesdk_backends.diffusers.families.sd3 import SD3_LORA_TARGETS

    LORA_TARGETS = {"flux": FLUX_LORA_TARGETS, "sd3": SD3_LORA_TARGETS}

    if family == "sd3" and dual is not None:
        model = SD3Transformer2DModel(num_layers=double, dual_attention_layers=dual, **WIDTHS[(family, variant)])
    else:
        model = transformer(family, variant, double, single)
    model.requires_grad_(lora_rank == 0)
    if lora_rank:
        model.add_adapter(LoraConfig(r=lora_rank, lora_alpha=lora_rank, init_lora_weights="gaussian",
                                     target_modules=list(LORA_TARGETS[family])))
    model.to(dtype)
    for param in model.parameters():
        if param.requires_grad and lora_rank:
            param.data = param.data.float()  # LoRA in float32, as the backends keep it
    if checkpointing:
        model.enable_gradient_checkpointing()
    model.train()
    weights = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    saved: dict[int, tuple[str, int]] = {}
    current = ["outside"]
    blocks = [*model.transformer_blocks, *getattr(model, "single_transformer_blocks", [])]
    labels = {id(b): f"{i}:{block_kind(family, b)}" for i, b in enumerate(blocks)}
    handles = []
    for block in blocks:
        handles.append(block.register_forward_pre_hook(lambda m, _a: current.__setitem__(0, labels[id(m)])))
        handles.append(block.register_forward_hook(lambda _m, _a, _o: current.__setitem__(0, "outside")))

    def pack(tensor):
        ptr = tensor.untyped_storage().data_ptr()
        if ptr not in weights and ptr not in saved:
            saved[ptr] = (current[0], tensor.untyped_storage().nbytes())
        return tensor

    image_tokens = (resolution // 16) ** 2
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        if family == "flux":
            model(hidden_states=torch.randn(1, image_tokens, 64, dtype=dtype), timestep=torch.tensor([0.5]),
                  guidance=torch.tensor([3.5]), pooled_projections=torch.randn(1, 768, dtype=dtype),
                  encoder_hidden_states=torch.randn(1, text_tokens, 4096, dtype=dtype),
                  txt_ids=torch.zeros(text_tokens, 3), img_ids=torch.zeros(image_tokens, 3), return_dict=False)
        else:
            model(hidden_states=torch.randn(1, 16, resolution // 8, resolution // 8, dtype=dtype),
                  timestep=torch.tensor([500.0]), pooled_projections=torch.randn(1, 2048, dtype=dtype),
                  encoder_hidden_states=torch.randn(1, text_tokens, 4096, dtype=dtype), return_dict=False)
    for handle in handles:
        handle.remove()
    hidden = model.config.num_attention_heads * model.config.attention_head_dim
    tokens = image_tokens + text_tokens
    per_label: dict[str, int] = {}
    for label, nbytes in saved.values():
        per_label[label] = per_label.get(label, 0) + nbytes
    total = sum(per_label.values())
    return {"family": family, "variant": variant, "double": double, "single": single, "tokens": tokens,
            "dtype": str(dtype).replace("torch.", ""), "lora_rank": lora_rank, "checkpointing": checkpointing,
            "saved_mib": total / 2**20, "bytes_per_token_per_hidden": total / tokens / hidden,
            "per_block": {label: round(n / tokens / hidden, 2) for label, n in sorted(per_label.items())}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["build", "saved"])
    parser.add_argument("--family", choices=["flux", "sd3"], default="flux")
    parser.add_argument("--variant", default=None, help="flux: dev; sd3: medium (default) or large")
    parser.add_argument("--double", type=int, default=1, help="FLUX double / SD3 joint blocks")
    parser.add_argument("--single", type=int, default=1, help="FLUX single blocks (SD3: ignored)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--text-tokens", type=int, default=None, help="default 512 (FLUX) / 333 (SD3: 77 + 256)")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--lora-rank", type=int, default=16)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--dual", default=None,
                        help="saved, sd3: comma-separated dual-attention layers (default: the bed's)")
    args = parser.parse_args(argv)
    variant = args.variant or ("dev" if args.family == "flux" else "medium")
    if (args.family, variant) not in WIDTHS:
        parser.error(f"--variant {variant!r} is not known for {args.family}: {[v for f, v in WIDTHS if f == args.family]}")
    torch.manual_seed(0)
    if args.what == "build":
        out = args.out or Path(f"/tmp/treesdk-realwidth/{args.family}-{variant}-{args.double}-{args.single}")
        print(build(args.family, variant, args.double, args.single if args.family == "flux" else 0, out))
        return
    from treesdk_backends.diffusers_common import parse_dtype

    tokens = args.text_tokens or (512 if args.family == "flux" else 333)
    print(json.dumps(saved_activation_bytes(args.family, variant, args.double, args.single, args.resolution, tokens,
                                            parse_dtype(args.dtype), args.lora_rank, args.gradient_checkpointing,
                                            None if args.dual is None else
                                            tuple(int(i) for i in args.dual.split(",") if i.strip()))))


if __name__ == "__main__":
    main()
