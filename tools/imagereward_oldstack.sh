#!/usr/bin/env bash
# Build an environment in which the official `image-reward` 1.5 package imports and scores, for
# tools/imagereward_parity.py. It reuses the torch/torchvision/numpy/PIL of the current (treesdk)
# environment through a .pth file appended *after* its own site-packages, so only the old
# transformers stack is downloaded (from PyPI, ~15 MB) and shadows the new one.
#
#   bash tools/imagereward_oldstack.sh [VENV_DIR]     (default /tmp/irvenv; run with treesdk's venv active)
set -euo pipefail
VENV=${1:-/tmp/irvenv}
BASE_PYTHON=$(python -c 'import sys; print(sys.base_prefix)')/bin/python3
SITE=$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
"$BASE_PYTHON" -m venv "$VENV"
PYVER=$("$VENV/bin/python" -c 'import sys; print(f"python{sys.version_info[0]}.{sys.version_info[1]}")')
echo "$SITE" > "$VENV/lib/$PYVER/site-packages/zz_treesdk_env.pth"
"$VENV/bin/pip" install -q wheel setuptools
# the versions image-reward 1.5 was written against (med.py needs transformers < 4.31 helpers)
"$VENV/bin/pip" install -q --no-deps "transformers==4.30.2" "tokenizers==0.13.3" "huggingface-hub==0.16.4" "timm==0.6.13"
"$VENV/bin/pip" install -q --no-deps --no-build-isolation "fairscale==0.4.13"
"$VENV/bin/pip" install -q --no-deps "image-reward==1.5"
"$VENV/bin/python" -c "import transformers, timm, fairscale, torch; print('old stack:', transformers.__version__, timm.__version__, torch.__version__)"
