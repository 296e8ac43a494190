#!/usr/bin/env bash
# One bounded GPU session: treesdk's CUDA measurements in a single run (one H200, ~7 minutes).
#
#   bash benchmarks/gpu_session.sh                 # from the repo root, $OUT set, wheels in .whl/
#
# Steps, most valuable first, each under its own `timeout` and under a global budget
# (GPU_SESSION_BUDGET seconds, default 450): a step whose time would pass the budget gets only what
# is left, and an optional step is skipped when less than its minimum is left.
#   a. benchmarks/flux_step.py at FLUX.1-dev's configuration (random bf16 weights built on the GPU,
#      LoRA rank 16): 512 px batch 4, later 1024 px batch 1
#   b. benchmarks/realwidth.py build + benchmarks/profile_iteration.py on CUDA in bf16 (k=2 d=3):
#      FLUX width at 512 px; later 1024 px, 512 px with gradient checkpointing, SD3.5-medium 512 px
#   c. `treesdk train --profile` on a tiny FLUX (`treesdk tiny`) on CUDA in bf16
#   d. the bf16/precision/export tests with CUDA visible
# What comes back under $OUT (3 files): log.txt (everything printed), steps.json (per step: rc,
# seconds, timeout, skipped), results.json (every step's JSON result, merged after each step).
#
# Environment: OUT (required), GPU_SESSION_BUDGET (seconds, default 450),
# GPU_SESSION_SKIP_INSTALL=1 (use the python3 on PATH as it is, no wheels),
# GPU_SESSION_SMOKE=1 (tiny sizes on the CPU: checks every command line here, no GPU needed).
set -u
set +e

: "${OUT:?set OUT to the folder results go to}"
mkdir -p "$OUT"
LOG="$OUT/log.txt"
WORK="${GPU_SESSION_WORK:-/tmp/gpu-session}"
RES="$WORK/results"
rm -rf "$RES" "$WORK/steps.jsonl"
mkdir -p "$RES"
: >"$LOG"
exec > >(tee -a "$LOG") 2>&1

SMOKE="${GPU_SESSION_SMOKE:-0}"
BUDGET="${GPU_SESSION_BUDGET:-450}"
START=$(date +%s)
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
export TOKENIZERS_PARALLELISM=false

say() { echo "=== [$(( $(date +%s) - START ))s] $*"; }

# merge every step's JSON into $OUT/results.json and the step table into $OUT/steps.json
merge() {
    python3 - "$RES" "$WORK/steps.jsonl" "$OUT" <<'EOF'
import json, sys
from pathlib import Path
res, steps, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
merged = {}
for f in sorted(res.iterdir()):
    text = f.read_text()
    try:
        merged[f.name] = json.loads(text)
    except ValueError:  # a JSON-lines file (metrics.jsonl) or a partial write
        lines = []
        for line in text.splitlines():
            try:
                lines.append(json.loads(line))
            except ValueError:
                lines.append(line)
        merged[f.name] = lines
(out / "results.json").write_text(json.dumps(merged, indent=1) + "\n")
rows = [json.loads(line) for line in steps.read_text().splitlines()] if steps.is_file() else []
(out / "steps.json").write_text(json.dumps(rows, indent=1) + "\n")
EOF
}

# step NAME TIMEOUT MIN_LEFT CMD...: run CMD under `timeout`, capped at what is left of the budget;
# skipped when less than MIN_LEFT seconds are left (MIN_LEFT 0: always run, with at least 30 s)
step() {
    local name=$1 limit=$2 min_left=$3
    shift 3
    local left=$(( BUDGET - ($(date +%s) - START) ))
    if (( min_left > 0 && left < min_left )); then
        say "SKIP $name: ${left}s left of the ${BUDGET}s budget, needs ${min_left}s"
        echo "{\"step\": \"$name\", \"skipped\": true, \"left_s\": $left}" >>"$WORK/steps.jsonl"
        merge
        return 0
    fi
    (( left < 30 )) && left=30
    (( limit > left )) && limit=$left
    say "START $name (timeout ${limit}s): $*"
    local t0=$(date +%s.%N)
    timeout -k 10 "$limit" "$@"
    local rc=$?
    local secs=$(python3 -c "import time; print(round(time.time() - $t0, 1))")
    say "END $name rc=$rc seconds=$secs$([ $rc = 124 ] && echo ' (TIMED OUT)')"
    echo "{\"step\": \"$name\", \"rc\": $rc, \"seconds\": $secs, \"timeout_s\": $limit}" >>"$WORK/steps.jsonl"
    merge
    return 0
}

# with_bed FOLDER STEP ARGS...: `step` when FOLDER holds a pipeline (its build step ran), else a skip
with_bed() {
    local bed=$1
    shift
    if [ -f "$bed/model_index.json" ]; then
        step "$@"
    else
        say "SKIP $1: no bed at $bed"
        echo "{\"step\": \"$1\", \"skipped\": true, \"reason\": \"no bed\"}" >>"$WORK/steps.jsonl"
        merge
    fi
}

# ---------------------------------------------------------------- install
if [ "${GPU_SESSION_SKIP_INSTALL:-0}" != 1 ]; then
    say "install wheels from .whl/"
    ls -la .whl/
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { say "FATAL: wheel install failed"; exit 1; }
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    export PATH=/tmp/site/bin:$PATH
fi
python3 - <<'EOF' || { say "FATAL: imports or entry points missing"; exit 1; }
import importlib.metadata as md
import diffusers, pydantic, treesdk, treesdk_backends, treesdk_cli
print("treesdk", treesdk.__file__, "| diffusers", diffusers.__version__, diffusers.__file__, "| pydantic", pydantic.__version__)
backends = sorted(e.name for e in md.entry_points(group="treesdk.backends"))
rewards = sorted(e.name for e in md.entry_points(group="treesdk.rewards"))
print("treesdk.backends:", backends)
print("treesdk.rewards:", rewards)
missing = {"flux", "sd3"} - set(backends)
assert not missing, f"entry points treesdk.backends lack {sorted(missing)}"
assert "jpeg-compressibility" in rewards, "entry point treesdk.rewards lacks jpeg-compressibility"
# the benchmark scripts import the installed copy: warn when it is older than this checkout
import importlib.util
from pathlib import Path
stale = []
for package, folder in {"treesdk": "treesdk", "treesdk_backends": "backends", "treesdk_plugins": "plugins",
                        "treesdk_cli": "cli"}.items():
    installed = Path(importlib.util.find_spec(package).origin).parent
    if installed.resolve() == Path(folder).resolve():
        continue  # imported from this checkout itself
    for source in Path(folder).rglob("*.py"):
        copy = installed / source.relative_to(folder)
        if not copy.is_file() or copy.read_bytes() != source.read_bytes():
            stale.append(str(source))
print(f"WARNING: the installed treesdk differs from this checkout in {len(stale)} files: {stale[:8]} "
      "(rebuild .whl/treesdk-*.whl)" if stale else "installed treesdk matches this checkout")
EOF
TREESDK="python3 -m treesdk_cli.main"

# ---------------------------------------------------------------- environment
say "environment"
uname -a; nproc; free -g | head -2
command -v nvidia-smi >/dev/null && nvidia-smi
python3 - <<'EOF'
import torch, diffusers, transformers, peft, pydantic, typing_extensions
print("python", __import__("sys").version.split()[0], "| torch", torch.__version__, "| cuda build", torch.version.cuda,
      "| diffusers", diffusers.__version__, "| transformers", transformers.__version__, "| peft", peft.__version__,
      "| pydantic", pydantic.__version__)
print("cuda available:", torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("device:", p.name, f"{p.total_memory / 2**30:.1f} GiB", "SMs", p.multi_processor_count, "cc", f"{p.major}.{p.minor}")
EOF

if [ "$SMOKE" = 1 ]; then
    DEV=cpu
    export OMP_NUM_THREADS=1
    FLUX_FULL="--tiny --dtype bfloat16 --device cpu --batch 2 --k 2 --warmup 1 --iters 1 --threads 1"
    FLUX_1024="--tiny --dtype bfloat16 --device cpu --batch 1 --k 2 --resolution 64 --warmup 1 --iters 1 --threads 1"
else
    DEV=cuda
    FLUX_FULL="--dtype bfloat16 --device cuda --resolution 512 --batch 4 --k 3 --lora-rank 16 --warmup 2 --iters 5"
    FLUX_1024="--dtype bfloat16 --device cuda --resolution 1024 --batch 1 --k 3 --lora-rank 16 --warmup 2 --iters 5"
fi

# ---------------------------------------------------------------- a. FLUX.1-dev size, 512 px batch 4
step flux_step_512 150 0 python3 benchmarks/flux_step.py $FLUX_FULL --json "$RES/flux_step_512.json"

# ---------------------------------------------------------------- b. real-width bed, per-phase profile
PROF="python3 benchmarks/profile_iteration.py --device $DEV --dtype bfloat16 --k 2 --d 3 --steps 4 --window-start 1 --decode-chunk 4"
if [ "$SMOKE" = 1 ]; then
    # the tiny FLUX/SD3 pipelines of `treesdk tiny` stand in for the real-width beds (CPU)
    step tiny_beds 120 0 bash -c "rm -rf $WORK/bed-flux $WORK/bed-sd3 && $TREESDK tiny --family flux --out $WORK/bed-flux && $TREESDK tiny --family sd3 --out $WORK/bed-sd3"
    FLUX_BED="--model $WORK/bed-flux --text-tokens 16 --lora-rank 2 --chunk 3 --threads 1"
    SD3_BED="--family sd3 --model $WORK/bed-sd3 --text-tokens 16 --lora-rank 2 --chunk 3 --threads 1"
    R512=32; R1024=64
    FLUX_DIR=$WORK/bed-flux; SD3_DIR=$WORK/bed-sd3
else
    # profile_iteration finds the beds under --bed-dir as <family>-<variant>-<double>-<single>
    FLUX_DIR=$WORK/rw/flux-dev-1-1; SD3_DIR=$WORK/rw/sd3-medium-2-0
    FLUX_BED="--family flux --bed-dir $WORK/rw --warmup 1"
    SD3_BED="--family sd3 --variant medium --double 2 --bed-dir $WORK/rw --warmup 1"
    R512=512; R1024=1024
    step realwidth_flux 120 0 bash -c "rm -rf $FLUX_DIR && python3 benchmarks/realwidth.py build --family flux --out $FLUX_DIR"
fi
with_bed "$FLUX_DIR" profile_flux_512 120 0 $PROF $FLUX_BED --resolution $R512 --json "$RES/profile_flux_512.json"

# ---------------------------------------------------------------- c. the CLI path on CUDA, tiny FLUX
step train_tiny_flux 120 60 bash -c "rm -rf $WORK/tiny-flux $WORK/run-tiny && \
    $TREESDK tiny --family flux --out $WORK/tiny-flux && \
    $TREESDK train --backend flux --model $WORK/tiny-flux --device $DEV --dtype bfloat16 --algo treegrpo \
        --steps 4 --k 2 --d 2 --iters 3 --batch 2 --resolution 32 --max-sequence-length 16 --reward jpeg-compressibility --out $WORK/run-tiny \
        --checkpoint-every 1 --report-to none --export-format none --profile && \
    cp $WORK/run-tiny/metrics.jsonl $RES/train_tiny_flux_metrics.jsonl"

# ---------------------------------------------------------------- d. tests with CUDA visible
step pytest_cuda 150 60 python3 -m pytest -q -p no:cacheprovider -rfEs \
    tests/test_precision.py tests/test_gpu_scripts_bf16.py tests/test_export_diffusers.py

# ---------------------------------------------------------------- optional, if the budget allows
step flux_step_1024 100 80 python3 benchmarks/flux_step.py $FLUX_1024 --json "$RES/flux_step_1024.json"
with_bed "$FLUX_DIR" profile_flux_1024 90 60 $PROF $FLUX_BED --resolution $R1024 --json "$RES/profile_flux_1024.json"
with_bed "$FLUX_DIR" profile_flux_512_gc 90 50 $PROF $FLUX_BED --resolution $R512 --gradient-checkpointing --json "$RES/profile_flux_512_gc.json"
if [ "$SMOKE" != 1 ]; then
    step realwidth_sd3m 90 90 bash -c "rm -rf $SD3_DIR && python3 benchmarks/realwidth.py build --family sd3 --variant medium --double 2 --out $SD3_DIR"
fi
with_bed "$SD3_DIR" profile_sd3m_512 90 50 $PROF $SD3_BED --resolution $R512 --json "$RES/profile_sd3m_512.json"
if [ "$SMOKE" != 1 ]; then
    # a deeper FLUX-width bed (4 double + 8 single blocks, 2.6 B parameters, 10 GB in float32 on disk):
    # the 1 + 1 bed's transformer call is a few milliseconds on an H200, so fixed per-call costs weigh
    # more in its overhead ratio than they would at FLUX.1-dev's 57 blocks
    step realwidth_flux_deep 90 150 bash -c "rm -rf $WORK/rw/flux-dev-4-8 && python3 benchmarks/realwidth.py build \
        --family flux --double 4 --single 8 --out $WORK/rw/flux-dev-4-8"
    with_bed "$WORK/rw/flux-dev-4-8" profile_flux_1024_deep 90 50 $PROF --family flux --double 4 --single 8 --bed-dir "$WORK/rw" --warmup 1 \
        --resolution 1024 --json "$RES/profile_flux_1024_deep.json"
fi

merge
say "done: $(python3 -c "import json; r=json.load(open('$OUT/steps.json')); print(', '.join(f\"{s['step']}={'skip' if s.get('skipped') else s['rc']}\" for s in r))")"
