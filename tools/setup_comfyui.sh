#!/usr/bin/env bash
# Puts ComfyUI at commit a125cd8 (the one the pack is tested against) in .comfyui/ComfyUI and its Python
# dependencies into an environment, for the node tests (tests/comfyui_env.py) and the real-ComfyUI runs in CI.
#
#   bash tools/setup_comfyui.sh [PYTHON]      (default: .venv/bin/python)
#
# ComfyUI comes from the snapshot ../shared/comfyui/ComfyUI-a125cd8.tar.gz where it exists (CI, no network), else
# from GitHub with git. Its requirements install under a constraint on the torch already installed, so torch is
# never replaced. torchvision/torchaudio: with a CPU build of torch, where PyPI only has CUDA-linked wheels, the
# wheels matching torch 2.13 go in without dependencies and ../shared/comfyui-harness/cpu_shims.py makes them
# importable; otherwise pip picks the ones matching the installed torch.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PY="${1:-.venv/bin/python}"
COMMIT=a125cd84b054
DEST=.comfyui/ComfyUI
SNAPSHOT=../shared/comfyui/ComfyUI-a125cd8.tar.gz
CPU_SHIMS=../shared/comfyui-harness/cpu_shims.py
pip_in() { "$PY" -m pip "$@" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }; }

if [[ ! -f "$DEST/main.py" ]]; then
  rm -rf .comfyui/incoming && mkdir -p .comfyui/incoming
  if [[ -f "$SNAPSHOT" ]]; then
    echo "[setup_comfyui] extracting $SNAPSHOT"
    tar -xzf "$SNAPSHOT" -C .comfyui/incoming
  else
    echo "[setup_comfyui] cloning ComfyUI $COMMIT from GitHub"
    git clone --quiet https://github.com/comfyanonymous/ComfyUI .comfyui/incoming/ComfyUI
    git -C .comfyui/incoming/ComfyUI checkout --quiet "$COMMIT"
  fi
  mv .comfyui/incoming/ComfyUI "$DEST"
  rm -rf .comfyui/incoming
fi

torch_version=$("$PY" -c "import torch; print(torch.__version__)")
echo "torch==${torch_version%%+*}" > .comfyui/constraints.txt
if ! "$PY" -c "import torchvision, torchaudio" >/dev/null 2>&1; then
  if [[ "$torch_version" == 2.13.0+cpu && -f "$CPU_SHIMS" ]]; then
    echo "[setup_comfyui] torchvision/torchaudio for a CPU torch (CUDA-linked wheels, shimmed)"
    pip_in install -q --no-deps torchvision==0.28.0 torchaudio==2.11.0
    "$PY" "$CPU_SHIMS"
  else
    pip_in install -q torchvision torchaudio -c .comfyui/constraints.txt
  fi
fi
grep -v -E '^\s*(torch|torchvision|torchaudio)\s*([=<>~!;].*)?$' "$DEST/requirements.txt" > .comfyui/requirements.txt
# requests: ComfyUI's front-end manager imports it without listing it.
pip_in install -q -r .comfyui/requirements.txt requests -c .comfyui/constraints.txt
"$PY" -c "import sys; sys.path.insert(0, '$DEST'); import comfy.cli_args; comfy.cli_args.args.cpu = True; \
import comfy.model_management, comfy.samplers, nodes" >/dev/null
echo "[setup_comfyui] ComfyUI $COMMIT ready in $DEST"
