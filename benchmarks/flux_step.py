"""Seconds per training step and peak memory of a FLUX-architecture transformer under treesdk.

One *training step* is what the tree trainer does per chunk of parents: one velocity call with
gradients on ``--batch`` parent latents (through :class:`treesdk_backends.flux.FluxBackend`, so
packing, ids, guidance embedding and LoRA are the real code path), the SDE log-probs of their
``--k`` stored children from it (:mod:`treesdk.sde`), a clipped-surrogate loss, backward and an
AdamW step on the trainable weights. A *sampling forward* (no gradients) is timed too: it is
the unit of the sampler's NFE count.

Weights: ``--model PATH`` (a FLUX pipeline folder, or a repo id in the local HF cache) loads the
real transformer; without it the transformer is built with FLUX.1-dev's configuration (19 double
blocks, 38 single blocks, 24 heads x 128 = 3072 hidden, joint dim 4096, pooled 768, guidance
embedding; 11.9 B parameters) and random weights, which costs the same time and memory.
Text conditioning is random tensors of the T5/CLIP shapes (512 x 4096, 768).

    python benchmarks/flux_step.py --resolution 512 --lora-rank 16 --batch 4   # GPU
    python benchmarks/flux_step.py --tiny                                       # CPU, seconds

Full size needs a GPU with ~30 GB free for LoRA in bf16 at 512 px (the bf16 weights alone are
~24 GB); it was not run in the development environment (CPU only). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time

import torch

#: FluxTransformer2DModel configuration of black-forest-labs/FLUX.1-dev (transformer/config.json)
FLUX_DEV_CONFIG = dict(
    patch_size=1,
    in_channels=64,
    num_layers=19,
    num_single_layers=38,
    attention_head_dim=128,
    num_attention_heads=24,
    joint_attention_dim=4096,
    pooled_projection_dim=768,
    guidance_embeds=True,
    axes_dims_rope=(16, 56, 56),
)
#: a tiny configuration of the same architecture (as tests/diffusers_fixtures.py builds)
TINY_CONFIG = dict(
    patch_size=1,
    in_channels=16,
    num_layers=1,
    num_single_layers=1,
    attention_head_dim=16,
    num_attention_heads=2,
    joint_attention_dim=32,
    pooled_projection_dim=32,
    guidance_embeds=True,
    axes_dims_rope=(4, 6, 6),
)


def build_random_pipeline(config: dict, dtype: torch.dtype, device: torch.device, vae_scale_factor: int):
    """A FluxPipeline with only a random transformer (no text encoders, no VAE).

    The weights are created directly on ``device`` in ``dtype`` (FLUX.1-dev in fp32 on the CPU
    would need 48 GB first).
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    from treesdk_backends.tiny import FLUX1_SCHEDULER_CONFIG  # FLUX.1-dev's scheduler_config.json

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            transformer = FluxTransformer2DModel(**config)
    finally:
        torch.set_default_dtype(previous)
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**FLUX1_SCHEDULER_CONFIG),
        vae=None,
        text_encoder=None,
        tokenizer=None,
        text_encoder_2=None,
        tokenizer_2=None,
        transformer=transformer,
    )
    pipe.vae_scale_factor = vae_scale_factor  # no VAE object: FLUX's VAE downsamples by 8
    return pipe


def build_backend(args: argparse.Namespace):
    from diffusers import FluxPipeline, FluxTransformer2DModel

    from treesdk_backends.diffusers_common import dtype_kwargs, parse_device, parse_dtype, resolve_checkpoint
    from treesdk_backends.flux import DEFAULT_REPO, FluxBackend

    device = parse_device(args.device)
    dtype = parse_dtype(args.dtype)
    if args.model is not None:
        # only the transformer is needed: load it alone (the text encoders would add ~10 GB)
        folder, source = resolve_checkpoint(args.model, DEFAULT_REPO, ("transformer", "scheduler"), "FLUX")
        transformer = FluxTransformer2DModel.from_pretrained(folder, subfolder="transformer", local_files_only=True,
                                                             **dtype_kwargs(dtype))
        from diffusers import FlowMatchEulerDiscreteScheduler

        scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(folder, subfolder="scheduler")
        pipe = FluxPipeline(scheduler=scheduler, vae=None, text_encoder=None, tokenizer=None,
                            text_encoder_2=None, tokenizer_2=None, transformer=transformer)
        vae_config = folder / "vae" / "config.json"  # only its size is needed, not the VAE
        blocks = json.loads(vae_config.read_text())["block_out_channels"] if vae_config.is_file() else [0] * 4
        pipe.vae_scale_factor = 2 ** (len(blocks) - 1)
        label = source
    else:
        config = TINY_CONFIG if args.tiny else FLUX_DEV_CONFIG
        pipe = build_random_pipeline(config, dtype, device, vae_scale_factor=2 if args.tiny else 8)
        label = "random:" + ("tiny" if args.tiny else "FLUX.1-dev-config")
    return FluxBackend(
        label,
        pipeline=pipe,
        resolution=args.resolution,
        device=device,
        dtype=dtype,
        lora_rank=args.lora_rank,
        gradient_checkpointing=args.gradient_checkpointing,
    )


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def sdpa_kernels(backend) -> dict:
    """On CUDA, the attention kernels SDPA may choose (diffusers' FLUX attention calls
    ``F.scaled_dot_product_attention``; flash and memory-efficient keep no tokens x tokens matrix)
    and the backend's ``attention_kernels`` (cuDNN left out by default)."""
    if backend.device.type != "cuda":
        return {}
    from treesdk_backends.diffusers.attention import attention_report

    return attention_report(backend.attention_kernels)


def peak_memory(device: torch.device) -> dict:
    if device.type == "cuda":
        return {
            "peak_memory_allocated_gib": torch.cuda.max_memory_allocated(device) / 2**30,
            "peak_memory_reserved_gib": torch.cuda.max_memory_reserved(device) / 2**30,
        }
    # ru_maxrss is KiB on Linux: the process's peak resident memory, weights included
    return {"peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def run(args: argparse.Namespace) -> dict:
    from treesdk import sde

    torch.manual_seed(args.seed)
    backend = build_backend(args)
    device = backend.device
    b, k = args.batch, args.k
    text_dim = backend.transformer.config.joint_attention_dim
    pooled_dim = backend.transformer.config.pooled_projection_dim
    cond = {
        "prompt_embeds": torch.randn(b, args.text_len, text_dim, device=device, dtype=backend.dtype),
        "pooled_prompt_embeds": torch.randn(b, pooled_dim, device=device, dtype=backend.dtype),
    }
    sigmas = backend.sigmas(args.num_steps)
    step = args.num_steps // 3  # a step inside a typical window
    sigma, sigma_next = sigmas[step].item(), sigmas[step + 1].item()
    x = torch.randn(b, *backend.latent_shape, device=device)

    # behaviour data as the sampler stores it: k children per parent and their log-probs
    with torch.no_grad():
        v_old = backend.velocity(x, torch.full((b,), sigma), cond)
        children, logps = [], []
        for _ in range(k):
            child, _, _, logp = sde.sde_step_with_logprob(x, v_old, sigma, sigma_next, args.noise_level)
            children.append(child)
            logps.append(logp)
    advantages = torch.randn(b, k, device=device)
    old_logp = torch.stack(logps, dim=1)

    params = backend.trainable_parameters()
    optimizer = torch.optim.AdamW(params, lr=1e-5)

    def train_step() -> float:
        backend.train_mode(True)
        v = backend.velocity(x, torch.full((b,), sigma), cond)
        new_logp = []
        for child in children:
            _, mean, std = sde.sde_step(x, v, sigma, sigma_next, args.noise_level, noise=torch.zeros_like(x))
            new_logp.append(sde.log_prob(child, mean, std))
        ratio = torch.exp(torch.stack(new_logp, dim=1) - old_logp)
        clipped = torch.clamp(ratio, 1 - 1e-4, 1 + 1e-4)
        loss = -torch.minimum(ratio * advantages, clipped * advantages).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    def sample_forward() -> None:
        with torch.no_grad():
            backend.velocity(x, torch.full((b,), sigma), cond)

    for _ in range(args.warmup):
        train_step()
        sample_forward()
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    times = []
    for _ in range(args.iters):
        synchronize(device)
        t0 = time.perf_counter()
        loss = train_step()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    train_memory = peak_memory(device)

    fwd = []
    for _ in range(args.iters):
        synchronize(device)
        t0 = time.perf_counter()
        sample_forward()
        synchronize(device)
        fwd.append(time.perf_counter() - t0)

    times.sort()
    fwd.sort()
    trainable_ids = {id(p) for p in params}
    n_params = sum(p.numel() for p in backend.transformer.parameters() if id(p) not in trainable_ids)
    return {
        "model": backend.model_source,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "dtype": args.dtype,
        "resolution": backend.resolution,
        "latent_shape": list(backend.latent_shape),
        "image_tokens": backend.image_seq_len,
        "text_tokens": args.text_len,
        "batch_parents": b,
        "children_per_parent": k,
        "lora_rank": args.lora_rank,
        "gradient_checkpointing": args.gradient_checkpointing,
        "base_parameters": int(n_params),
        "trainable_parameters": int(sum(p.numel() for p in params)),
        "weights_dtype": sorted({str(p.dtype).replace("torch.", "") for p in backend.transformer.parameters()
                                 if id(p) not in trainable_ids}),
        "trainable_dtype": sorted({str(p.dtype).replace("torch.", "") for p in params}),
        **sdpa_kernels(backend),
        "seconds_per_train_step_median": times[len(times) // 2],
        "seconds_per_train_step_min": times[0],
        "seconds_per_sampling_forward_median": fwd[len(fwd) // 2],
        "last_loss": loss,
        **train_memory,
        "torch": torch.__version__,
        "iters": args.iters,
        "warmup": args.warmup,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="FLUX pipeline folder or cached repo id; default: random "
                        "weights with FLUX.1-dev's configuration")
    parser.add_argument("--tiny", action="store_true", help="a tiny random FLUX (CPU, seconds; checks the script)")
    parser.add_argument("--resolution", type=int, default=None, help="pixels (default 512; 32 with --tiny)")
    parser.add_argument("--lora-rank", type=int, default=16, help="0 = full fine-tune")
    parser.add_argument("--batch", type=int, default=4, help="parent nodes per training step")
    parser.add_argument("--k", type=int, default=3, help="children per parent (log-probs from one velocity)")
    parser.add_argument("--text-len", type=int, default=None, help="T5 tokens (default 512; 16 with --tiny)")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--device", default=None)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--num-steps", type=int, default=16, help="sigma grid the step is taken from")
    parser.add_argument("--noise-level", type=float, default=0.7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="CPU intra-op threads (torch.set_num_threads)")
    parser.add_argument("--json", default=None, help="also write the result to this file")
    args = parser.parse_args(argv)
    if args.resolution is None:
        args.resolution = 32 if args.tiny else 512
    if args.text_len is None:
        args.text_len = 16 if args.tiny else 512
    if args.tiny and args.model is not None:
        parser.error("--tiny builds its own random model; drop --model")
    return args


def main(argv: list[str] | None = None) -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run(args)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as fh:
            fh.write(text + "\n")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
