#!/usr/bin/env bash
# The GPU measurements issues 6, 11 and 14 still owe (bench/README.md, sections 3, 4, 7 and 9), most important first, for a session
# that is lent a GPU machine. Each case is one command under `timeout` that writes its log to $OUT (or
# bench-gpu-logs/); name the cases to run, since one device command may run 10 minutes at most:
#
#   bash bench/gpu_owed.sh step_12b fp8_576            # the 1.2 s/step, 1.1x and 16 GB targets (~10 min)
#   bash bench/gpu_owed.sh swap_12b vae_576            # the 8 GB block-swap and 6 GB VAE targets
#   bash bench/gpu_owed.sh levers_12b                  # issue 11: every speed lever vs diffusers (~7 min)
#   bash bench/gpu_owed.sh --list
#
# The device image has torch, transformers, accelerate, einops and safetensors but not diffusers or optimum-quanto.
# Carry them as wheels (device README): here, in the repository root,
#   echo /.whl/ >> .git/info/exclude
#   .venv/bin/pip download --no-deps -d .whl diffusers==0.42.1 optimum-quanto==0.2.7 importlib_metadata==10.2.0
# and start the device command with
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site;
# levers_12b's sage and flash rows need sageattention and flash-attn, which the image lacks: add their wheels for the
# device's torch and CUDA to .whl (sageattention 1.x is pure Python over triton; flash-attn needs a prebuilt wheel
# matching torch, CUDA and the C++ ABI); without them those rows print why they did not run.
# The native_* cases (issue 14) import the real ComfyUI: run `bash tools/setup_comfyui.sh` here first, carry
# .comfyui/ComfyUI, and add the wheels of ComfyUI's requirements the device image lacks to .whl (at least psutil,
# torchsde, trampoline, scipy, pyyaml, aiohttp and its dependencies, av, spandrel, kornia, pydantic,
# pydantic-settings, alembic, SQLAlchemy; `python3 -c "import comfy.model_base"` on the device tells what is missing).
set -u
out="${OUT:-bench-gpu-logs}"
limit="${LIMIT:-570}"
mm="python3 bench/memory_modes.py --device cuda"
declare -A cases=(
  [step_12b]="python3 bench/gpu_step.py --config 12b --device cuda --steps 10"
  [fp8_576]="$mm --config 12b --size 576x1008x49 --steps 10 --modes model_cpu_offload_and_qfloat8,model_cpu_offload_and_fp8_cast"
  [swap_12b]="$mm --config 12b --size 384x672x25 --steps 10 --modes full,block_swap --blocks-on-gpu 0,8,12"
  [vae_576]="$mm --config 12b --part vae --size 576x1008x49 --tiles none,512,384,256"
  [bf16_384]="$mm --config 12b --size 384x672x49 --steps 10 --modes full,model_cpu_offload"
  [fp8_384]="$mm --config 12b --size 384x672x49 --steps 10 --modes model_cpu_offload_and_qfloat8,model_cpu_offload_and_fp8_cast"
  [offload_384]="$mm --config 12b --size 384x672x49 --steps 10 --modes sequential_cpu_offload,block_swap --blocks-on-gpu 0,24"
  [bf16_576]="$mm --config 12b --size 576x1008x49 --steps 10 --modes full,model_cpu_offload,block_swap"
  [7b_384]="$mm --config 7b --size 384x672x49 --steps 10 --modes full,model_cpu_offload,model_cpu_offload_and_qfloat8"
  [7b_576]="$mm --config 7b --size 576x1008x49 --steps 10 --modes full,model_cpu_offload_and_qfloat8,block_swap"
  [native_default]="python3 bench/gpu_native.py --config 12b --setting default"
  [native_lowvram]="python3 bench/gpu_native.py --config 12b --setting lowvram"
  [native_fp8]="python3 bench/gpu_native.py --config 12b --setting fp8_e4m3fn"
  [native_fp8_fast]="python3 bench/gpu_native.py --config 12b --setting fp8_e4m3fn_fast"
  [levers_12b]="python3 bench/speed_levers.py --config 12b --device cuda --steps 5 --run-steps 20"
  [native_swap8]="python3 bench/gpu_native.py --config 12b --setting block_swap:8"
)
order=(levers_12b step_12b fp8_576 swap_12b vae_576 bf16_384 fp8_384 offload_384 bf16_576 7b_384 7b_576 native_default
       native_lowvram native_fp8 native_fp8_fast native_swap8)

if [ "$#" -eq 0 ] || [ "$1" = "--list" ]; then
  for name in "${order[@]}"; do echo "$name: ${cases[$name]}"; done
  exit 0
fi
mkdir -p "$out"
status=0
for name in "$@"; do
  if [ -z "${cases[$name]+x}" ]; then
    echo "unknown case '$name': run bash bench/gpu_owed.sh --list" >&2
    exit 2
  fi
  echo "== $name: ${cases[$name]}"
  PYTHONUNBUFFERED=1 timeout "$limit" ${cases[$name]} > "$out/$name.log" 2>&1
  code=$?
  tail -n 40 "$out/$name.log"
  [ "$code" -eq 0 ] || { echo "== $name exited $code"; status=1; }
done
exit "$status"
