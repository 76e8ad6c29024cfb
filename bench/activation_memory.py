"""Activation memory of a transformer forward at the real 7B/12B width, measured on the CPU, scaled to video sizes.

The peak memory of a denoising step is the resident weights plus the activation peak of one forward. That peak is
a property of the tensors a forward creates, the same on any device: it is counted here by ``benchlib.PeakTracker``
(every tensor storage created during the forward, while it is alive; weights and inputs are not counted) for ours
and for diffusers' model holding the same weights. The models have 2 blocks of the real width (48 heads x 64,
D = 3072, text 3584, InP input): ``12b`` (MMDiT blocks) and ``7b`` (one MMDiT and one shared-weight block,
the two kinds of the 7B). Every activation grows linearly with the token count (flash attention keeps no
N x N matrix), so the run uses a reduced token count with the text length and our token chunk
(``easyanimate_core.chunking.TOKEN_CHUNK``) scaled by the same factor, and reports the peak in units of one
[B, N + L, D] activation; two reduced sizes show that the unit count holds. The GB columns multiply the units back
to the real size. CUDA adds what a CPU count cannot see (cuBLAS and attention workspaces, allocator rounding): the
GPU run of memory_modes.py is the measurement, this is the estimate it checks.

    python bench/activation_memory.py              # ~3 min on 2 CPU cores
"""

from __future__ import annotations

import argparse
import time

import benchlib  # noqa: F401  (puts the repository root on sys.path)
import torch
from benchlib import PeakTracker, markdown_table

from easyanimate_core import TransformerConfig, chunking
from gpu_step import build_models

BATCH, DIM, TEXT_LEN = 2, 3072, 256
SIZES = {"384x672x49": (13, 24, 42), "576x1008x49": (13, 36, 63), "384x672x25": (7, 24, 42)}  # latent T, tokens h, w
REDUCED = [(2, 16, 32), (2, 32, 32)]  # latent frames, token grid: 1024 and 2048 tokens per sample
WEIGHTS_GIB = {"12b": {"bf16": 21.98, "fp8": 11.85}, "7b": {"bf16": 12.69, "fp8": 7.00}}
MODELS = {"12b": dict(num_layers=2, mmdit_layers=2), "7b": dict(num_layers=2, mmdit_layers=1)}  # 2 blocks of each kind


def _config(kind: str) -> TransformerConfig:
    return TransformerConfig(num_attention_heads=48, attention_head_dim=64, text_embed_dim=3584,
                             add_norm_text_encoder=True, in_channels=33, **MODELS[kind])


def _units(ours, theirs, frames: int, gh: int, gw: int, scale: float) -> tuple[float, float]:
    """Activation peak of one forward of each model, in [B, N + L, D] bf16 activations."""
    gen = torch.Generator().manual_seed(0)
    text_len = max(1, round(TEXT_LEN * scale))
    latents = torch.randn(BATCH, 16, frames, 2 * gh, 2 * gw, generator=gen).bfloat16()
    inpaint = torch.randn(BATCH, 17, frames, 2 * gh, 2 * gw, generator=gen).bfloat16()
    text = torch.randn(BATCH, text_len, 3584, generator=gen).bfloat16()
    timestep = torch.tensor([500.0] * BATCH)
    unit = BATCH * (frames * gh * gw + text_len) * DIM * 2
    existing = (*ours.parameters(), *ours.buffers(), *theirs.parameters(), *theirs.buffers(), latents, inpaint, text,
                timestep)
    peaks = []
    for run in (lambda: ours(latents, timestep, text, inpaint_latents=inpaint),
                lambda: theirs(latents, timestep.bfloat16(), encoder_hidden_states=text, inpaint_latents=inpaint,
                               return_dict=False)):
        with torch.inference_mode(), PeakTracker(existing) as tracker:
            run()
        peaks.append(tracker.peak / unit)
    return peaks[0], peaks[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(benchlib.machine_description())
    real_chunk = chunking.TOKEN_CHUNK
    rows, est_rows = [], []
    for kind in MODELS:
        started = time.perf_counter()
        ours, theirs = build_models(_config(kind), torch.bfloat16, torch.device("cpu"))
        for size, (t, h, w) in SIZES.items():
            real_tokens = t * h * w
            measured = []
            for frames, gh, gw in REDUCED:
                scale = frames * gh * gw / real_tokens
                chunking.TOKEN_CHUNK = max(1, round(real_chunk * scale))
                ours_units, theirs_units = _units(ours, theirs, frames, gh, gw, scale)
                measured.append((ours_units, theirs_units))
                rows.append([kind, size, f"{frames * gh * gw} (chunk {chunking.TOKEN_CHUNK})", f"{ours_units:.2f}",
                             f"{theirs_units:.2f}", f"{theirs_units / ours_units:.2f}"])
            chunking.TOKEN_CHUNK = real_chunk
            unit_gib = BATCH * (real_tokens + TEXT_LEN) * DIM * 2 / 2**30
            ours_gib = max(m[0] for m in measured) * unit_gib
            theirs_gib = max(m[1] for m in measured) * unit_gib
            w = WEIGHTS_GIB[kind]
            est_rows.append([kind, size, real_tokens, f"{unit_gib:.3f}", f"{ours_gib:.2f}", f"{theirs_gib:.2f}",
                             f"{w['bf16'] + ours_gib:.1f} / {w['bf16'] + theirs_gib:.1f}",
                             f"{w['fp8'] + ours_gib:.1f} / {w['fp8'] + theirs_gib:.1f}"])
        del ours, theirs
        print(f"{kind}: {time.perf_counter() - started:.0f} s", flush=True)
    print("\n" + markdown_table(["model (2 blocks)", "real size", "tokens per sample (our chunk)", "ours: peak in activations",
                                 "diffusers: peak in activations", "diffusers / ours"], rows))
    print("\n" + markdown_table(
        ["model", "size", "video tokens per sample", "one activation GiB", "ours activations GiB",
         "diffusers activations GiB", "bf16 weights + activations GiB (ours / diffusers)",
         "fp8 weights + activations GiB (ours / diffusers)"], est_rows))


if __name__ == "__main__":
    main()
