#!/usr/bin/env bash
# FLUX on CUDA: NaN loss (tiny) / illegal memory access (real width) in training; which kernel?
# The run of 2026-11-29 on an H200 (torch 2.11, cuDNN 9.19): the cuDNN SDPA backward (results in
# benchmarks/results/gpu-h200/diag.txt); treesdk's diffusers backends now leave cuDNN out on CUDA
# (`attention_kernels`, backends/diffusers/attention.py). Run from the repo root on the GPU machine
# with $OUT set and the wheels of benchmarks/gpu_session.sh in .whl/:
#   SESSION_BUDGET=200 bash benchmarks/gpu_diag_sdpa.sh
# It switches kernels off through a sitecustomize.py (DIAG_SDPA_OFF=cudnn,flash,...), then runs
# benchmarks/gpu_session.sh under the first setting that trains a tiny FLUX with a finite loss.
set -u; set +e
D="$OUT/diag.txt"; : >"$D"
exec > >(tee -a "$D") 2>&1
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
cat > /tmp/site/sitecustomize.py <<'PY'
import os
_off = os.environ.get("DIAG_SDPA_OFF")
if _off:
    import torch
    for _n in _off.split(","):
        getattr(torch.backends.cuda, f"enable_{_n}_sdp")(False)
if os.environ.get("DIAG_ANOMALY"):
    import torch
    torch.autograd.set_detect_anomaly(True)
PY
export PYTHONPATH=/tmp/site
python3 -c "import torch; b=torch.backends.cuda; print('cudnn', torch.backends.cudnn.version(), 'sdp flags', b.flash_sdp_enabled(), b.mem_efficient_sdp_enabled(), b.math_sdp_enabled(), b.cudnn_sdp_enabled())"
tiny() {  # tiny NAME ENV... : flux_step --tiny bf16 on cuda, prints last_loss
    local name=$1; shift
    echo "=== tiny $name: $*"
    env "$@" timeout 60 python3 benchmarks/flux_step.py --tiny --device cuda --dtype bfloat16 --batch 2 --k 2 --warmup 1 --iters 2 \
        --json /tmp/d_$name.json > /tmp/d_$name.log 2>&1
    echo "rc=$? $(python3 -c "import json;r=json.load(open('/tmp/d_$name.json'));print('last_loss',r['last_loss'])" 2>/dev/null || tail -5 /tmp/d_$name.log)"
}
tiny default X=1

echo "=== tiny fp32"; timeout 60 python3 benchmarks/flux_step.py --tiny --device cuda --dtype float32 --batch 2 --k 2 --warmup 1 --iters 2 --json /tmp/d_fp32.json >/tmp/d_fp32.log 2>&1; echo "rc=$? $(python3 -c "import json;print(json.load(open('/tmp/d_fp32.json'))['last_loss'])" 2>/dev/null || tail -3 /tmp/d_fp32.log)"
echo "=== tiny full fine-tune bf16"; timeout 60 python3 benchmarks/flux_step.py --tiny --device cuda --dtype bfloat16 --lora-rank 0 --batch 2 --k 2 --warmup 1 --iters 2 --json /tmp/d_full.json >/tmp/d_full.log 2>&1; echo "rc=$? $(python3 -c "import json;print(json.load(open('/tmp/d_full.json'))['last_loss'])" 2>/dev/null || tail -3 /tmp/d_full.log)"
tiny no_cudnn DIAG_SDPA_OFF=cudnn
tiny no_flash DIAG_SDPA_OFF=flash
tiny no_memeff DIAG_SDPA_OFF=mem_efficient
tiny math_only DIAG_SDPA_OFF=cudnn,flash,mem_efficient
tiny anomaly DIAG_ANOMALY=1 CUDA_LAUNCH_BLOCKING=1
grep -n "Error\|error\|nan\|NaN\|File \"/tmp/site\|File \"/work" /tmp/d_anomaly.log | head -40
echo "=== real width 256 px, CUDA_LAUNCH_BLOCKING=1 (default kernels)"
CUDA_LAUNCH_BLOCKING=1 timeout 90 python3 benchmarks/flux_step.py --device cuda --dtype bfloat16 --resolution 256 --batch 1 --k 2 --warmup 1 --iters 1 --json /tmp/d_rw.json >/tmp/d_rw.log 2>&1
echo "rc=$?"; grep -v "^ *\^" /tmp/d_rw.log | tail -40
# the first SDPA setting that trains the tiny FLUX with a finite loss
CHOICE=""
for c in no_cudnn no_flash no_memeff math_only; do
    python3 -c "import json,math,sys;r=json.load(open('/tmp/d_$c.json'));sys.exit(0 if math.isfinite(r['last_loss']) else 1)" 2>/dev/null && { CHOICE=$c; break; }
done
echo "=== choice: ${CHOICE:-none}"
case "$CHOICE" in
  no_cudnn) export DIAG_SDPA_OFF=cudnn;; no_flash) export DIAG_SDPA_OFF=flash;;
  no_memeff) export DIAG_SDPA_OFF=mem_efficient;; math_only) export DIAG_SDPA_OFF=cudnn,flash,mem_efficient;;
  *) exit 0;;
esac
GPU_SESSION_BUDGET=${SESSION_BUDGET:-200} bash benchmarks/gpu_session.sh
