"""Seconds per denoising step and peak device memory: our transformer against diffusers', same random weights.

One step is one forward at batch 2 (classifier-free guidance: the conditional and unconditional halves together).
No files are read or written: our model is built on the meta device, materialised with ``to_empty`` on the target
device and filled with seeded random weights there; diffusers' EasyAnimateTransformer3DModel is built on meta and
takes the very same tensors (``load_state_dict(assign=True)``), so the weights are on the device once and both
models see identical values. Ours runs with the linspace RoPE formula here, so its output equals diffusers' on any
grid (the 12B preset's 48x84 latent grid is not 3:2); the formula changes the table values, not the cost.

    python bench/gpu_step.py --config 12b --device cuda     # 12B InP, 49x384x672 video, text 256, bf16
    python bench/gpu_step.py --config tiny --device cpu     # smoke test of this script
"""

from __future__ import annotations

import argparse
import statistics
from dataclasses import dataclass

import benchlib  # puts the repo root on sys.path
import torch

from easyanimate_core import EasyAnimateTransformer, TransformerConfig, convert_transformer_state_dict

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass(frozen=True)
class Preset:
    config: TransformerConfig
    frames: int  # latent frames
    height: int  # latent pixels
    width: int
    text_len: int


PRESETS = {
    # 49 frames at 384x672 -> 13 latent frames of 48x84; 48 MMDiT layers of 48 heads x 64, Qwen2-VL text.
    "12b": Preset(TransformerConfig(num_attention_heads=48, attention_head_dim=64, num_layers=48, mmdit_layers=48,
                                    text_embed_dim=3584, add_norm_text_encoder=True, in_channels=33),
                  frames=13, height=48, width=84, text_len=256),
    # D=1024, 4 MMDiT layers, 2 latent frames of 32x48: the CPU tables' mid-size model.
    "mid": Preset(TransformerConfig(num_attention_heads=16, attention_head_dim=64, num_layers=4, mmdit_layers=4,
                                    text_embed_dim=3584, add_norm_text_encoder=True, in_channels=33),
                  frames=2, height=32, width=48, text_len=64),
    "tiny": Preset(TransformerConfig(num_attention_heads=2, attention_head_dim=16, num_layers=2, mmdit_layers=2,
                                     time_embed_dim=32, text_embed_dim=24, add_norm_text_encoder=True,
                                     in_channels=33),
                   frames=2, height=8, width=12, text_len=7),
}


def build_models(config: TransformerConfig, dtype: torch.dtype, device: torch.device):
    """Ours with random weights on ``device``, and diffusers' model sharing those very tensors."""
    from diffusers import EasyAnimateTransformer3DModel

    with torch.device("meta"):
        ours = EasyAnimateTransformer(config, dtype=dtype, rope_formula="linspace")
        theirs = EasyAnimateTransformer3DModel(**benchlib.diffusers_transformer_kwargs(config))
    ours = benchlib.random_fill_(ours.to_empty(device=device), seed=0)
    theirs.load_state_dict(convert_transformer_state_dict(ours.state_dict(), "original", "diffusers"),
                           strict=True, assign=True)
    return ours.eval(), theirs.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=sorted(PRESETS), default="12b")
    parser.add_argument("--device", default="cuda", help="cuda, cuda:1, cpu, ...")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per model, after one warm-up step each")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: this torch ({torch.__version__}) sees no CUDA device; "
                     f"run on a GPU machine, or try the script with --config tiny --device cpu.")
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()
    preset, dtype, device = PRESETS[args.config], DTYPES[args.dtype], torch.device(args.device)
    cuda = device.type == "cuda"
    sync = (lambda: torch.cuda.synchronize(device)) if cuda else (lambda: None)

    ours, theirs = build_models(preset.config, dtype, device)
    weight_bytes = sum(p.numel() * p.element_size() for p in ours.parameters())
    gen = torch.Generator(device=device).manual_seed(1)
    shape = (2, 16, preset.frames, preset.height, preset.width)
    latents = torch.randn(shape, generator=gen, device=device, dtype=dtype)
    inpaint = torch.randn((2, 17, *shape[2:]), generator=gen, device=device, dtype=dtype)
    text = torch.randn(2, preset.text_len, preset.config.text_embed_dim, generator=gen, device=device, dtype=dtype)
    timestep = torch.tensor([500.0, 500.0], device=device)  # exact in bf16: both models see the same value
    fns = {
        "ours": lambda: ours(latents, timestep, text, inpaint_latents=inpaint),
        "diffusers": lambda: theirs(latents, timestep, encoder_hidden_states=text, inpaint_latents=inpaint,
                                    return_dict=False)[0],
    }

    outputs, peaks = {}, {}
    with torch.inference_mode():
        for name, fn in fns.items():  # one step each on its own: output and peak memory
            if cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            outputs[name] = fn().float().cpu()
            sync()
            peaks[name] = torch.cuda.max_memory_allocated(device) if cuda else None
        times = benchlib.interleaved_times(fns, args.steps, warmup=1, sync=sync)

    print(f"{args.config} preset, {args.dtype} on {device}"
          f"{f' ({torch.cuda.get_device_name(device)})' if cuda else ''}; weights {weight_bytes / 2**30:.2f} GiB "
          f"(shared by both models); latents {list(shape)}, text {preset.text_len}; {benchlib.machine_description()}")
    diff = (outputs["ours"] - outputs["diffusers"]).abs().max().item()
    rows = [[name, f"{statistics.median(times[name]):.4f}", f"{min(times[name]):.4f}",
             f"{peaks[name] / 2**30:.2f}" if cuda else "-",
             f"{(peaks[name] - weight_bytes) / 2**30:.2f}" if cuda else "-"] for name in fns]
    print()
    print(benchlib.markdown_table(["model", "s/step (median)", "s/step (min)", "peak GiB", "peak - weights GiB"], rows))
    print(f"\nratio ours/diffusers (median of paired steps): {benchlib.paired_ratio(times, 'ours', 'diffusers'):.3f}; "
          f"max |ours - diffusers| = {diff:.3g} (output std {outputs['diffusers'].std().item():.3g})")


if __name__ == "__main__":
    main()
