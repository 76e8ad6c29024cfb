"""TeaCache on the CPU: transformer evaluations, time and drift of a 30-step run at several thresholds.

One mid-size random transformer (4 MMDiT layers at D=1024, text width 3584; 12B coefficients, since it is MMDiT
throughout), one noise and one pair of random prompt states; ``denoise`` runs 30 steps with CFG at each threshold.
The table gives the transformer evaluations, the wall time against threshold 0 (no cache) and the largest
difference of the final latents against no caching.

Random weights cannot show quality: how far a threshold moves a real video from the uncached one, and whether it
shows, is measured only with real weights. Here the numbers check the mechanics (evaluations fall as the
threshold rises, time follows the evaluations, threshold 0 is exact).

    python bench/teacache_speed.py                     # 384x224x9, 30 steps, thresholds 0, 0.05, 0.1, 0.2
"""

from __future__ import annotations

import argparse
import time

import benchlib  # puts the repo root on sys.path
import torch

from easyanimate_core import EasyAnimateTransformer, TransformerConfig
from easyanimate_core.sampling import Conditioning, denoise
from easyanimate_core.scheduler import FlowMatchEulerScheduler
from easyanimate_core.teacache import TeaCacheOptions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--size", default="384x224x9", help="WxHxF")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--thresholds", default="0,0.05,0.1,0.2")
    args = parser.parse_args()
    width, height, frames = (int(v) for v in args.size.split("x"))
    config = TransformerConfig(num_attention_heads=16, attention_head_dim=64, num_layers=args.layers,
                               mmdit_layers=args.layers, text_embed_dim=3584, add_norm_text_encoder=True,
                               in_channels=33)
    with torch.device("meta"):
        model = EasyAnimateTransformer(config, dtype=torch.float32)
    model = benchlib.random_fill_(model.to_empty(device="cpu"), seed=0).eval()
    gen = torch.Generator().manual_seed(1)
    latent = (1, 16, (frames - 1) // 4 + 1, height // 8, width // 8)
    noise = torch.randn(latent, generator=gen)
    text, negative = (torch.randn(1, 256, 3584, generator=gen) for _ in "ab")
    inpaint = Conditioning(inpaint_latents=torch.randn(1, 17, *latent[2:], generator=gen))
    evaluations = []
    model.transformer_blocks[0].register_forward_pre_hook(lambda block, inputs: evaluations.append(1))
    rows, reference, base_time = [], None, None
    for threshold in (float(t) for t in args.thresholds.split(",")):
        evaluations.clear()
        start = time.perf_counter()
        with torch.inference_mode():
            out = denoise(model, FlowMatchEulerScheduler(), noise=noise, text=text, negative_text=negative,
                          steps=args.steps, guidance=6.0, conditioning=inpaint,
                          teacache=TeaCacheOptions(threshold))
        seconds = time.perf_counter() - start
        if reference is None:
            reference, base_time = out, seconds
        diff = (out - reference).abs().max().item()
        rows.append([threshold, len(evaluations), f"{seconds:.1f}", f"{base_time / seconds:.2f}x",
                     f"{diff:.3g}", f"{diff / reference.abs().max().item():.3g}"])
    print(f"{args.layers} MMDiT layers at D=1024, {width}x{height}x{frames}, {args.steps} steps, CFG 6 (batch 2), "
          f"fp32; {benchlib.machine_description()}")
    print(benchlib.markdown_table(["threshold", "transformer evaluations", "seconds", "speed-up",
                                   "max |diff| vs no cache", "relative"], rows))


if __name__ == "__main__":
    main()
