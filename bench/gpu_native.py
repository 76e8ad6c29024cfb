"""Seconds per step and peak VRAM of the native ComfyUI model (issue 14), one memory setting per process.

ComfyUI decides its VRAM state when it is imported, so each setting runs in its own interpreter:

    python bench/gpu_native.py --config 12b --setting default          # ComfyUI's own management, bf16
    python bench/gpu_native.py --config 12b --setting lowvram          # as started with --lowvram
    python bench/gpu_native.py --config 12b --setting fp8_e4m3fn       # fp8 weights, bf16 compute
    python bench/gpu_native.py --config 12b --setting fp8_e4m3fn_fast  # fp8 weights and fp8 matmul
    python bench/gpu_native.py --config 12b --setting block_swap:8     # 8 blocks' worth of weights resident
    python bench/gpu_native.py --config 12b --setting sequential       # no transformer weight resident
    python bench/gpu_native.py --config tiny --setting default --device cpu   # smoke test of this script

The transformer (gpu_step.py's presets: 12B InP, 49x384x672 -> 13x48x84 latents, text 256) gets seeded random
weights on the host, inside ComfyUI's layers, and is wrapped as the loader node wraps it (``_native.build``).
Each step is what EasyAnimate Sampler runs: ComfyUI places the weights (``load_models_gpu`` with our activation
estimate), then one CFG forward at batch 2 and the Euler step. The first step (weights moving in) is reported
apart from the median of the rest.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import benchlib  # puts the repo root on sys.path
import torch
from gpu_step import PRESETS

sys.path.insert(0, str(benchlib.REPO_ROOT / "tests"))
from comfyui_env import import_comfyui  # noqa: E402
from conftest import load_pack  # noqa: E402

SETTINGS = ("default", "lowvram", "fp8_e4m3fn", "fp8_e4m3fn_fast", "block_swap:N", "sequential")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=sorted(PRESETS), default="12b")
    parser.add_argument("--setting", default="default", help=f"one of {SETTINGS}")
    parser.add_argument("--device", default="cuda", help="cuda or cpu (the smoke test)")
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    setting, _, blocks = args.setting.partition(":")
    if setting not in {s.partition(":")[0] for s in SETTINGS}:
        parser.error(f"--setting {args.setting!r}: expected one of {SETTINGS}")
    cuda = args.device.startswith("cuda")
    import_comfyui(**({"lowvram": setting == "lowvram"} if cuda else {"cpu": True}))
    native = __import__(f"{load_pack().__name__}.nodes._native", fromlist=["build"])
    from easyanimate_core.sampling import Conditioning, denoise
    from easyanimate_core.scheduler import FlowMatchEulerScheduler

    preset, dtype = PRESETS[args.config], torch.bfloat16
    weight_dtype = setting if setting.startswith("fp8") else "default"
    memory_mode = {"block_swap": "block_swap", "sequential": "sequential_cpu_offload"}.get(setting, "full")

    def random_transformer(*, ops, model_class, weight_dtype, device):
        with torch.device("meta"):
            model = model_class(preset.config, dtype=dtype, ops=ops, weight_dtype=weight_dtype)
        return benchlib.random_fill_(model.to_empty(device=device), seed=0).eval().requires_grad_(False)

    start = time.perf_counter()
    model = native.build(random_transformer, dtype, weight_dtype, memory_mode, int(blocks or -1), 0.7125,
                         FlowMatchEulerScheduler())
    built = time.perf_counter() - start
    transformer = model.model.diffusion_model
    weights = sum(p.numel() * p.element_size() for p in transformer.parameters())
    gen = torch.Generator().manual_seed(1)
    noise = torch.randn(1, 16, preset.frames, preset.height, preset.width, generator=gen)
    text, negative = (torch.randn(1, preset.text_len, preset.config.text_embed_dim, generator=gen) for _ in "ab")
    inpaint = Conditioning(inpaint_latents=torch.randn(1, 17, *noise.shape[2:], generator=gen))
    working = transformer.activation_bytes((2, *noise.shape[1:]), preset.text_len)
    stamps = []

    def on_step(step, total, latents):
        if cuda:
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    stamps.append(time.perf_counter())
    native.load_on_device(model, working, whole=False)
    with torch.inference_mode():
        denoise(transformer, model.model.easyanimate_scheduler, noise=noise, text=text, negative_text=negative,
                steps=args.steps, guidance=6.0, conditioning=inpaint, callback=on_step)
    steps = [b - a for a, b in zip(stamps, stamps[1:])]
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    resident = model.loaded_size() / 2**30
    print(f"{args.config} preset, setting {args.setting} (memory_mode {memory_mode}, weight_dtype {weight_dtype}) "
          f"on {torch.cuda.get_device_name() if cuda else 'cpu'}; weights {weights / 2**30:.2f} GiB, resident on the "
          f"device {resident:.2f} GiB; built in {built:.0f} s; {benchlib.machine_description()}")
    print(benchlib.markdown_table(
        ["setting", "first step s (weights moving in)", "s/step (median of the rest)", "peak VRAM GiB"],
        [[args.setting, f"{steps[0]:.2f}", f"{statistics.median(steps[1:]):.3f}" if len(steps) > 1 else "-",
          f"{peak:.2f}"]]))


if __name__ == "__main__":
    main()
