"""CPU forward time of our transformer and VAE against diffusers' classes holding the same weights.

Each pair runs under ``torch.inference_mode()``; after warm-up the two are called alternately and the median of
``--runs`` calls is reported, so background load on the machine slows both alike. The outputs are compared in the
same run, so the timing compares like with like. The transformer inputs use a 3:2 latent grid (32x48, 8x12), where
our released RoPE formula and diffusers' linspace one agree.

    python bench/cpu_speed.py                    # transformer and VAE, tiny and mid-size / V5.1 configs
    python bench/cpu_speed.py --part vae --runs 3
    python bench/cpu_speed.py --threads 1         # steadier on a machine shared with other jobs
"""

from __future__ import annotations

import argparse
import copy
import statistics
from dataclasses import dataclass

import benchlib  # puts the repo root on sys.path
import torch

from easyanimate_core import (
    EasyAnimateTransformer,
    MagvitVAE,
    convert_transformer_state_dict,
    transformer_config_from_dict,
    vae_config_from_dict,
)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class TransformerCase:
    name: str
    model: dict  # diffusers EasyAnimateTransformer3DModel arguments
    batch: int
    frames: int
    height: int  # latent pixels
    width: int
    text_len: int
    runs: int


@dataclass(frozen=True)
class VAECase:
    name: str
    model: dict  # diffusers AutoencoderKLMagvit arguments
    frames: int  # video frames (1 + 4k)
    height: int  # video pixels
    width: int
    runs: int


TRANSFORMER_CASES = (
    TransformerCase("tiny (2 heads x 16, 2 MMDiT layers)",
                    {"num_attention_heads": 2, "attention_head_dim": 16, "time_embed_dim": 32, "text_embed_dim": 24,
                     "num_layers": 2, "mmdit_layers": 2},
                    batch=2, frames=2, height=8, width=12, text_len=7, runs=20),
    TransformerCase("mid (D=1024, 4 MMDiT layers, 2x32x48 latents, text 64, batch 2)",
                    {"num_attention_heads": 16, "attention_head_dim": 64, "time_embed_dim": 512,
                     "text_embed_dim": 3584, "num_layers": 4, "mmdit_layers": 4},
                    batch=2, frames=2, height=32, width=48, text_len=64, runs=5),
)
VAE_CASES = (
    VAECase("tiny VAE ([8,16,16,16], 1 layer), 9x32x48",
            {"block_out_channels": [8, 16, 16, 16], "norm_num_groups": 4, "layers_per_block": 1},
            frames=9, height=32, width=48, runs=10),
    VAECase("V5.1 VAE ([128,256,512,512]), 9x64x64", {}, frames=9, height=64, width=64, runs=4),
)


def transformer_rows(case: TransformerCase, dtypes: list[str], runs: int | None) -> list[list[object]]:
    from diffusers import EasyAnimateTransformer3DModel

    torch.manual_seed(0)
    reference = EasyAnimateTransformer3DModel(in_channels=33, out_channels=16, patch_size=2, add_norm_text_encoder=True,
                                             **case.model)
    reference = benchlib.random_fill_(reference.eval(), seed=0)
    config = transformer_config_from_dict(dict(reference.config), "diffusers")
    gen = torch.Generator().manual_seed(1)
    shape = (case.batch, 16, case.frames, case.height, case.width)
    latents = torch.randn(shape, generator=gen)
    inpaint = torch.randn((case.batch, 17, *shape[2:]), generator=gen)
    text = torch.randn(case.batch, case.text_len, config.text_embed_dim, generator=gen)
    timestep = torch.tensor([500.0, 250.0][: case.batch])  # exact in bf16: both models see the same value
    rows, fp32_out = [], None
    for name in dtypes:
        dtype = DTYPES[name]
        theirs = copy.deepcopy(reference).to(dtype)
        with torch.device("meta"):
            ours = EasyAnimateTransformer(config, dtype=dtype)
        ours.load_state_dict(convert_transformer_state_dict(theirs.state_dict(), "diffusers", "original"),
                             strict=True, assign=True)
        fns = _transformer_calls(ours, theirs, latents.to(dtype), timestep, text.to(dtype), inpaint.to(dtype))
        with torch.inference_mode():
            outs = {k: fn().float() for k, fn in fns.items()}
            times = benchlib.interleaved_times(fns, runs or case.runs, warmup=1)
        if name == "fp32":
            fp32_out = outs["diffusers"]
        rows.append(_row(case.name, name, times, outs, fp32_out))
    return rows


def vae_rows(case: VAECase, dtypes: list[str], runs: int | None) -> list[list[object]]:
    from diffusers import AutoencoderKLMagvit

    torch.manual_seed(0)
    reference = AutoencoderKLMagvit(**case.model).eval()
    config = vae_config_from_dict(dict(reference.config))
    gen = torch.Generator().manual_seed(1)
    video = torch.rand(1, 3, case.frames, case.height, case.width, generator=gen) * 2 - 1
    c = config.spatial_compression
    latents = torch.randn(1, 16, 1 + (case.frames - 1) // 4, case.height // c, case.width // c, generator=gen)
    rows, fp32_out = [], {}
    for name in dtypes:
        dtype = DTYPES[name]
        theirs = copy.deepcopy(reference).to(dtype)
        with torch.device("meta"):
            ours = MagvitVAE(config, dtype=dtype)
        ours.load_state_dict(theirs.state_dict(), strict=True, assign=True)
        ours.eval()
        for step, fns in _vae_calls(ours, theirs, video.to(dtype), latents.to(dtype)).items():
            with torch.inference_mode():
                outs = {k: fn().float() for k, fn in fns.items()}
                times = benchlib.interleaved_times(fns, runs or case.runs, warmup=1)
            if name == "fp32":
                fp32_out[step] = outs["diffusers"]
            rows.append(_row(f"{case.name} {step}", name, times, outs, fp32_out.get(step)))
    return rows


def _transformer_calls(ours, theirs, latents, timestep, text, inpaint) -> dict:
    return {
        "ours": lambda: ours(latents, timestep, text, inpaint_latents=inpaint),
        "diffusers": lambda: theirs(latents, timestep, encoder_hidden_states=text, inpaint_latents=inpaint,
                                    return_dict=False)[0],
    }


def _vae_calls(ours, theirs, video, latents) -> dict:
    """Encode and decode calls of both VAEs; both return the posterior mean and the clamped video."""
    return {
        "encode": {"ours": lambda: ours.encode(video).mean,
                   "diffusers": lambda: theirs.encode(video).latent_dist.mean},
        "decode": {"ours": lambda: ours.decode(latents),
                   "diffusers": lambda: theirs.decode(latents).sample.clamp(-1, 1)},
    }


def _row(config: str, dtype: str, times: dict[str, list[float]], outs: dict[str, torch.Tensor],
         fp32_reference: torch.Tensor | None) -> list[object]:
    """One table row; the error against diffusers' fp32 output is shown for the lower precisions when it ran."""
    diff = (outs["ours"] - outs["diffusers"]).abs().max().item()
    errors = "-" if fp32_reference is None or dtype == "fp32" else " / ".join(
        f"{(outs[k] - fp32_reference).abs().max().item():.2g}" for k in ("ours", "diffusers"))
    ours, theirs = (f"{statistics.median(times[k]):.4f} / {min(times[k]):.4f}" for k in ("ours", "diffusers"))
    return [config, dtype, ours, theirs, f"**{benchlib.paired_ratio(times, 'ours', 'diffusers'):.2f}**",
            f"{diff:.2g}", f"{outs['diffusers'].std().item():.2g}", errors]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("transformer", "vae", "all"), default="all")
    parser.add_argument("--dtype", choices=(*DTYPES, "all"), default="all")
    parser.add_argument("--runs", type=int, default=None, help="timed calls per model (default: per config)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()
    dtypes = list(DTYPES) if args.dtype == "all" else [args.dtype]
    print(benchlib.machine_description())
    rows = []
    if args.part in ("transformer", "all"):
        for case in TRANSFORMER_CASES:
            rows += transformer_rows(case, dtypes, args.runs)
    if args.part in ("vae", "all"):
        for case in VAE_CASES:
            rows += vae_rows(case, dtypes, args.runs)
    print()
    print(benchlib.markdown_table(
        ["config", "dtype", "ours s (median / min)", "diffusers s (median / min)", "ratio ours/diffusers",
         "max abs diff", "output std",
         "max err vs fp32 ref (ours / diffusers)"], rows))


if __name__ == "__main__":
    main()
