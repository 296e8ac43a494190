"""Where one training iteration's time and memory go, phase by phase, and the overhead ratio.

Runs the trainer's own building blocks in the trainer's order on a FLUX or SD3 pipeline folder (by
default the real-width bed of ``benchmarks/realwidth.py``, built on first use):

    encode -> sample -> decode -> reward -> advantages -> training passes (+ optimiser) -> checkpoint

and records seconds and peak memory per phase (CUDA: ``torch.cuda.max_memory_allocated`` reset per
phase; CPU: the process's peak resident set, ``VmHWM``, reset per phase through
``/proc/self/clear_refs``). Every transformer call of the iteration is captured (its exact keyword
inputs) and then replayed *bare*: the same rows through ``transformer(**inputs)`` without treesdk
around it, forward only for sampling calls and forward + backward of a scalar for training calls.
The overhead ratio of a phase is its time over the bare time of its rows; the iteration's ratio is
(sample + advantages + training + optimiser) / (bare sampling + bare training), in wall seconds and
in the process's CPU seconds (on a shared CPU the latter is the one to trust). Encode, decode,
reward and checkpoint are reported beside it: they are work no transformer row does.

It also prints the dry-run memory estimate (:mod:`treesdk.training.loop.plan`) next to the measured peaks.

    # CPU (the figures in docs/performance.md): FLUX width, 1 + 1 blocks, 256 px, T5 512 tokens
    MALLOC_MMAP_THRESHOLD_=65536 OMP_NUM_THREADS=1 python benchmarks/profile_iteration.py --k 2 --d 3
    # one GPU (bf16, SDPA), the same bed or a real checkpoint
    python benchmarks/profile_iteration.py --device cuda --dtype bfloat16 --resolution 512 --model /ckpt/FLUX.1-dev

``MALLOC_MMAP_THRESHOLD_`` makes glibc return freed tensors to the system at once, so the CPU peak
resident set measures live tensors, not the allocator's cache.
On a CPU the pipeline is loaded with ``disable_mmap=True`` (:func:`loading_without_mmap`): every
weight resident, as on a GPU. ``--train-chunk`` / ``--decode-chunk`` set the recipe's
``train_chunk`` / ``decode_chunk``; ``--no-bare`` skips the replay (and the recording of inputs).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


class Meter:
    """Seconds (wall and the process's CPU) and peak memory (GiB) per named phase, measured with
    :class:`treesdk.training.run_folder.profiling.MemoryProbe` (the probe of ``treesdk train --profile``): on
    CUDA the device is synchronised before and after each phase and its peak allocation reset."""

    def __init__(self, device: torch.device) -> None:
        from treesdk.training.run_folder.profiling import MemoryProbe

        self.device = device
        self.probe = MemoryProbe(device)
        self.rows: dict[str, dict[str, float]] = {}

    def now_gib(self) -> float:
        return self.probe.now_gib()

    def run(self, name: str, fn, *args, **kwargs):
        self.probe.sync()
        self.probe.reset_peak()
        before = self.probe.now_gib()
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn(*args, **kwargs)
        self.probe.sync()
        seconds = time.perf_counter() - t0
        row = self.rows.setdefault(name, {"seconds": 0.0, "cpu_seconds": 0.0, "peak_gib": 0.0, "calls": 0})
        row["seconds"] += seconds
        row["cpu_seconds"] += time.process_time() - c0
        row["peak_gib"] = max(row["peak_gib"], self.probe.peak_gib())
        row["before_gib"] = before
        row["calls"] += 1
        return out


class CallRecorder:
    """Hooks on the transformer: every call's row count and grad mode, and with ``keep_inputs`` its
    keyword inputs, copied to the CPU so that the recording does not add to the device's peak
    (on CUDA that copy synchronises once per call: use ``--no-bare`` for undisturbed timings)."""

    def __init__(self, transformer: torch.nn.Module, keep_inputs: bool = True) -> None:
        self.calls: list[tuple[bool, dict]] = []
        self.keep_inputs = keep_inputs
        #: CPU seconds of each no-grad transformer forward inside the run (sampling calls; CPU only:
        #: on CUDA a forward returns once its kernels are queued)
        self.sampling_forward_cpu_seconds = 0.0
        self._start = 0.0
        self.handles = [transformer.register_forward_pre_hook(self._hook, with_kwargs=True),
                        transformer.register_forward_hook(self._done)]

    def _hook(self, _module, args, kwargs):
        if args:
            raise RuntimeError("the backend calls the transformer positionally; the recorder needs keywords")
        rows = int(kwargs["hidden_states"].shape[0])
        inputs = {"hidden_states": rows}
        if self.keep_inputs:
            inputs = {k: (v.detach().to("cpu", copy=True) if isinstance(v, torch.Tensor) else v)
                      for k, v in kwargs.items()}
        self.calls.append((torch.is_grad_enabled(), inputs))
        self._start = time.process_time()

    def _done(self, _module, _args, _output):
        if not torch.is_grad_enabled():
            self.sampling_forward_cpu_seconds += time.process_time() - self._start

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def replay_bare(transformer: torch.nn.Module, calls, meter: Meter, params) -> dict[str, float]:
    """The recorded calls again, transformer only: sampling forwards, training forward + backward
    (inputs moved back to the device before each timed call)."""
    seconds = {"bare_sampling": 0.0, "bare_training": 0.0, "bare_sampling_cpu": 0.0, "bare_training_cpu": 0.0}
    rows = {"bare_sampling": 0, "bare_training": 0}
    device = next(transformer.parameters()).device
    transformer.train(False)
    for grad, recorded in calls:
        key = "bare_training" if grad else "bare_sampling"
        inputs = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in recorded.items()}

        def one(grad=grad, inputs=inputs):
            if grad:
                transformer.train(True)
                out = transformer(**inputs)[0]
                out.float().square().mean().backward()
                for p in params:
                    p.grad = None
                transformer.train(False)
            else:
                with torch.no_grad():
                    transformer(**inputs)

        t0, c0 = time.perf_counter(), time.process_time()
        meter.run(key, one)
        seconds[key] += time.perf_counter() - t0
        seconds[key + "_cpu"] += time.process_time() - c0
        rows[key] += int(inputs["hidden_states"].shape[0])
        del inputs
    return {**seconds, **{f"{k}_transformer_rows": v for k, v in rows.items()}}


@contextlib.contextmanager
def loading_without_mmap():
    """Pipelines loaded inside read their safetensors into memory (diffusers' ``disable_mmap=True``).

    Loaded on a CPU with the default memory map, a weight stays a view of the file, resident only
    where a computation touched it (SD3's positional table: 226 M values of which a 256 px image
    reads a 16 x 16 crop), while a GPU holds every weight in full. Read into memory, the CPU's
    resident set holds what a GPU would, so the measured peak compares with the dry-run estimate."""
    from diffusers import DiffusionPipeline

    original = DiffusionPipeline.__dict__["from_pretrained"]

    def from_pretrained(cls, *args, **kwargs):
        kwargs.setdefault("disable_mmap", True)
        return original.__func__(cls, *args, **kwargs)

    DiffusionPipeline.from_pretrained = classmethod(from_pretrained)
    try:
        yield
    finally:
        DiffusionPipeline.from_pretrained = original


def precision_facts(backend, params) -> dict:
    """What actually ran: the transformer's weight dtype, the trainable (LoRA) dtype, the attention
    kernels SDPA may pick on CUDA and the backend's ``attention_kernels``."""
    frozen = {str(p.dtype).replace("torch.", "") for p in backend.transformer.parameters() if not p.requires_grad}
    facts = {"weights_dtype": sorted(frozen), "trainable_dtype": sorted({str(p.dtype).replace("torch.", "") for p in params})}
    if backend.device.type == "cuda":
        from treesdk_backends.diffusers.attention import attention_report

        facts.update(attention_report(backend.attention_kernels))
    return facts


def build_recipe(args: argparse.Namespace):
    from treesdk.recipes import load_recipe

    overrides = {"steps": args.steps, "tree.k": args.k, "tree.d": args.d, "chunk": args.chunk,
                 "train_chunk": args.train_chunk, "decode_chunk": args.decode_chunk,
                 "window": {"kind": "fixed", "start": args.window_start}}
    return load_recipe(args.algo, **overrides)


def load(args: argparse.Namespace):
    import treesdk
    import realwidth

    model = args.model
    if model is None:
        variant = args.variant or ("dev" if args.family == "flux" else "medium")
        single = args.single if args.family == "flux" else 0
        model = realwidth.build(args.family, variant, args.double, single,
                                Path(args.bed_dir) / f"{args.family}-{variant}-{args.double}-{single}")
    options = dict(model=str(model), resolution=args.resolution, dtype=args.dtype, device=args.device,
                   lora_rank=args.lora_rank, gradient_checkpointing=args.gradient_checkpointing)
    if args.text_tokens:
        options["max_sequence_length"] = args.text_tokens
    if not str(args.device).startswith("cuda"):  # a GPU holds every weight: make the CPU hold them too
        with loading_without_mmap():
            return treesdk.load_backend(args.family, **options), model
    return treesdk.load_backend(args.family, **options), model


def run(args: argparse.Namespace) -> dict:
    import treesdk
    from treesdk.training.run_folder.checkpoint import save_checkpoint
    from treesdk.evaluation import decode_chunked
    from treesdk.recipes.parts import build
    from treesdk.model_facts import model_facts
    from treesdk.training.loop.plan import plan_memory, plan_run
    from treesdk.rewards import score_images
    from treesdk.sampler import sample_forest_for_recipe
    from treesdk.training.loop.update import policy_update

    torch.manual_seed(args.seed)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    args.device = str(device)
    meter = Meter(device)
    import diffusers, peft, transformers  # noqa: F401,E401 - the runtime's own memory, before any model
    import treesdk_backends.flux, treesdk_backends.sd3  # noqa: F401,E401

    runtime_gib = meter.now_gib()
    backend, model_path = meter.run("load", load, args)
    recipe = build_recipe(args)
    rewards = {args.reward: treesdk.load_reward(args.reward)}
    weights = {args.reward: 1.0}
    estimator = build("advantage", recipe.advantage)  # the trainer's parts, built as it builds them
    terms = [(build("loss", spec), float(spec.weight)) for spec in recipe.losses]
    mean_std = build("sde", recipe.sde)
    params = backend.trainable_parameters()
    o = recipe.optim
    optimizer = torch.optim.AdamW(params, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay, eps=o.eps)
    step, optimizer_seconds = optimizer.step, [0.0]

    def timed_step(*a, **kw):  # timed inside the training phase (no peak reset there)
        t0 = time.perf_counter()
        out = step(*a, **kw)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        optimizer_seconds[0] += time.perf_counter() - t0
        return out

    optimizer.step = timed_step
    prompts = [f"a photo of a cat sitting on a red chair {i}" for i in range(args.batch)]
    recorder = None
    checkpoint_dir = Path(tempfile.mkdtemp(prefix="treesdk-profile-"))
    for iteration in range(args.warmup + 1):
        measured = iteration == args.warmup
        if measured:
            meter.rows = {k: v for k, v in meter.rows.items() if k == "load"}
            optimizer_seconds[0] = 0.0
            recorder = CallRecorder(backend.transformer, keep_inputs=args.bare)
        if hasattr(backend, "_cache"):
            backend._cache.clear()  # encode is measured uncached, as for a new prompt
        cond = meter.run("encode", backend.encode, prompts)
        seeds = list(range(iteration * args.batch, (iteration + 1) * args.batch))
        forest = meter.run("sample", sample_forest_for_recipe, backend, recipe, prompts, seeds, args.window_start,
                           cond=cond, mean_std=mean_std)
        if args.skip_decode:  # blank images of the right shape: the decode phase is not measured
            side = backend.resolution
            images = meter.run("decode", torch.zeros, forest.leaves.shape[0], 3, side, side)
        else:
            images = meter.run("decode", decode_chunked, backend, forest.leaves, recipe.decoding_chunk)
        leaf_prompts = [prompts[int(p)] for p in forest.leaf_prompt]
        scores = meter.run("reward", score_images, rewards, images, leaf_prompts)
        targets = meter.run("advantages", estimator, forest, scores, weights)
        stats = meter.run("training", policy_update, backend, forest, targets, terms, optimizer, params,
                          passes=o.passes, minibatches=o.minibatches, chunk=recipe.training_chunk,
                          grad_clip=o.grad_clip)
        meter.run("checkpoint", save_checkpoint, checkpoint_dir, iteration + 1, backend.trainable_state_dict(),
                  optimizer, {"profile": True}, keep=1)
    recorder.close()
    phases = {k: dict(v) for k, v in meter.rows.items()}
    phases["training"]["optimizer_seconds"] = optimizer_seconds[0]
    # the sampler's own cost: CPU seconds of the sample phase outside the transformer's forwards
    phases["sample"]["transformer_cpu_seconds"] = recorder.sampling_forward_cpu_seconds
    phases["sample"]["overhead_inside_run"] = (  # CPU only: a CUDA forward returns before its kernels ran
        phases["sample"]["cpu_seconds"] / max(recorder.sampling_forward_cpu_seconds, 1e-9) if device.type == "cpu" else None)
    bare = replay_bare(backend.transformer, recorder.calls, meter, params) if args.bare else {}
    iteration_phases = ("encode", "sample", "decode", "reward", "advantages", "training", "checkpoint")
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "cpu"),
        "threads": torch.get_num_threads(), "load_average": os.getloadavg(), "torch": torch.__version__,
        "family": args.family, "model": str(model_path), "dtype": args.dtype, "resolution": backend.resolution,
        "latent_shape": list(backend.latent_shape), "lora_rank": args.lora_rank,
        "gradient_checkpointing": args.gradient_checkpointing, "recipe": recipe.name, "steps": recipe.steps,
        "k": recipe.tree.k, "d": recipe.tree.d, "window_start": args.window_start, "batch": args.batch,
        "decode_skipped": args.skip_decode, "chunk": recipe.chunk, "train_chunk": recipe.training_chunk,
        "decode_chunk": recipe.decoding_chunk,
        "nfe_sampling": forest.nfe, "nfe_training": stats.nfe_training, "leaves": int(forest.leaves.shape[0]),
        "transformer_calls": len(recorder.calls),
        "transformer_parameters": int(sum(p.numel() for p in backend.transformer.parameters())),
        "runtime_gib_before_load": runtime_gib, "phases": phases, **precision_facts(backend, params),
        "iteration_seconds": sum(phases[p]["seconds"] for p in iteration_phases),
    }
    if bare:
        result["bare"] = bare
        core = phases["sample"]["seconds"] + phases["advantages"]["seconds"] + phases["training"]["seconds"]
        bare_total = bare["bare_sampling"] + bare["bare_training"]
        result["overhead"] = {
            "sample": phases["sample"]["seconds"] / bare["bare_sampling"],
            "training": phases["training"]["seconds"] / bare["bare_training"],
            "core": core / bare_total,
            "iteration": result["iteration_seconds"] / bare_total,
        }
        # CPU seconds of this process: robust to other processes sharing the cores (wall time is not)
        cpu = {name: phases[name]["cpu_seconds"] for name in iteration_phases}
        bare_cpu = bare["bare_sampling_cpu"] + bare["bare_training_cpu"]
        result["overhead_cpu_seconds"] = {
            "sample": cpu["sample"] / bare["bare_sampling_cpu"],
            "training": cpu["training"] / bare["bare_training_cpu"],
            "core": (cpu["sample"] + cpu["advantages"] + cpu["training"]) / bare_cpu,
            "iteration": sum(cpu.values()) / bare_cpu,
        }
    facts = model_facts(args.family, model_path, text_tokens=args.text_tokens)
    mem = plan_memory(recipe, facts, resolution=backend.resolution, dtype=args.dtype, lora_rank=args.lora_rank,
                      prompts=args.batch, gradient_checkpointing=args.gradient_checkpointing)
    gib = 2**30
    est = {"peak_training": mem.peak_training / gib, "peak_sampling": mem.peak_sampling / gib,
           "peak_decode": mem.peak_decode / gib, "activations_training": mem.activations_training / gib,
           "training_increment": (mem.activations_training + mem.gradients) / gib}
    measured = {"peak_training": phases["training"]["peak_gib"], "peak_sampling": phases["sample"]["peak_gib"],
                "peak_decode": phases["decode"]["peak_gib"],
                "training_increment": phases["training"]["peak_gib"] - phases["training"]["before_gib"]}
    if device.type != "cuda":  # the resident set also holds the Python/torch runtime and the tokenizers
        est = {k: v + (runtime_gib if k.startswith("peak") else 0.0) for k, v in est.items()}
    result["memory_estimate_gib"] = est
    result["memory_measured_gib"] = measured
    result["memory_error"] = {k: est[k] / measured[k] - 1 for k in measured if measured[k] > 0}
    result["plan"] = {k: v for k, v in plan_run(recipe, None, batch=args.batch).items() if k != "iterations"}
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--family", choices=["flux", "sd3"], default="flux")
    p.add_argument("--model", default=None, help="pipeline folder; default: the real-width bed (built on first use)")
    p.add_argument("--variant", default=None, help="bed variant: flux dev; sd3 medium or large")
    p.add_argument("--double", type=int, default=1)
    p.add_argument("--single", type=int, default=1)
    p.add_argument("--bed-dir", default="/tmp/treesdk-realwidth")
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--text-tokens", type=int, default=None, help="T5 tokens (default: the backend's, 512 / 256)")
    p.add_argument("--dtype", default=None, help="default float32 on CPU, bfloat16 on CUDA")
    p.add_argument("--device", default=None)
    p.add_argument("--lora-rank", type=int, default=16)
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--algo", default="treegrpo")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--k", type=int, default=2)
    p.add_argument("--d", type=int, default=3)
    p.add_argument("--window-start", type=int, default=1)
    p.add_argument("--batch", type=int, default=1, help="prompts (trees)")
    p.add_argument("--chunk", type=int, default=64, help="recipe chunk (velocity rows per call)")
    p.add_argument("--train-chunk", type=int, default=None, help="rows per training call (default: --chunk)")
    p.add_argument("--decode-chunk", type=int, default=None, help="leaves per VAE decode (default: --chunk)")
    p.add_argument("--skip-decode", action="store_true",
                   help="score blank images instead of decoding the leaves (a CPU's VAE decode is slow; "
                        "for training-memory runs)")
    p.add_argument("--reward", default="jpeg-compressibility")
    p.add_argument("--warmup", type=int, default=0, help="unmeasured iterations first")
    p.add_argument("--no-bare", dest="bare", action="store_false", help="skip the bare replay")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None, help="also write the result here")
    args = p.parse_args(argv)
    if args.dtype is None:
        cuda = (args.device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
        args.dtype = "bfloat16" if cuda else "float32"
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
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text + "\n")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
