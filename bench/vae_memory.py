"""VAE activation memory: the peak measured on the CPU against ``easyanimate_core.vae_tiling.estimate_bytes``.

The measurement counts every tensor storage that PyTorch hands out during one ``encode``/``decode`` call and frees
it when the storage dies (a ``TorchDispatchMode``), so it sees what a device allocator would have to hold, minus
convolution workspaces and allocator rounding; the weights and the input exist before the call and are not
counted. The V5.1 VAE topology runs with random weights in bf16 (the element counts do not depend on the values
or, as measured, on the dtype). Then the estimate alone for the sizes users run on a GPU.

    python bench/vae_memory.py                 # about 2 minutes on 2 CPU cores
    python bench/vae_memory.py --dtype fp32
"""

from __future__ import annotations

import argparse
import time

import benchlib  # puts the repo root on sys.path
import torch
from benchlib import PeakTracker

from easyanimate_core import MagvitVAE, VAEConfig
from easyanimate_core.vae_tiling import estimate_bytes

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# (encode, frames, height, width, tile px or None): video frames and pixels of the frame
MEASURED = [
    (False, 5, 64, 64, None),
    (False, 9, 64, 96, None),
    (False, 1, 128, 128, None),
    (False, 5, 128, 128, None),
    (False, 5, 128, 128, 96),
    (True, 5, 64, 64, None),
    (True, 9, 64, 96, None),
    (True, 1, 128, 128, None),
    (True, 5, 128, 128, None),
    (True, 5, 128, 128, 96),
]
ESTIMATED_SIZES = [(49, 576, 1008), (49, 384, 672)]
ESTIMATED_TILES = [None, 512, 384, 256]


def measured_peak(vae: MagvitVAE, x: torch.Tensor, *, encode: bool, tile_size: int | None = None) -> int:
    """Tracked peak bytes of one ``vae.encode(x)`` or ``vae.decode(x)``; the weights and ``x`` are not counted."""
    with torch.inference_mode(), PeakTracker((x, *vae.parameters())) as tracker:
        if encode:
            vae.encode(x, tile_size=tile_size)
        else:
            vae.decode(x, tile_size=tile_size)
    return tracker.peak


def vae_input(config: VAEConfig, encode: bool, frames: int, height: int, width: int, dtype) -> torch.Tensor:
    """A video [1, 3, F, H, W] to encode, or the latents [1, 16, T, H/8, W/8] that decode to it."""
    gen = torch.Generator().manual_seed(0)
    if encode:
        return (torch.rand(1, 3, frames, height, width, generator=gen) * 2 - 1).to(dtype)
    return torch.randn(latent_shape(config, frames, height, width), generator=gen).to(dtype)


def latent_shape(config: VAEConfig, frames: int, height: int, width: int) -> tuple[int, ...]:
    """The latents [1, 16, T, h, w] of a video of ``frames`` x ``height`` x ``width``."""
    c, step = config.spatial_compression, config.temporal_compression
    return 1, config.latent_channels, 1 + (frames - 1) // step, height // c, width // c


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dtype = DTYPES[args.dtype]
    config = VAEConfig()
    vae = benchlib.random_fill_(MagvitVAE(config, dtype=dtype).eval(), seed=0)
    print(f"V5.1 VAE {list(config.block_out_channels)}, {args.dtype}; {benchlib.machine_description()}")

    rows = []
    for encode, frames, height, width, tile in MEASURED:
        x = vae_input(config, encode, frames, height, width, dtype)
        started = time.perf_counter()
        peak = measured_peak(vae, x, encode=encode, tile_size=tile)
        estimate = estimate_bytes(config, x.shape, encode=encode, dtype=dtype, tile_size=tile)
        per_pixel = peak / (height * width * dtype.itemsize)
        rows.append(["encode" if encode else "decode", f"{frames}x{height}x{width}", tile or "-",
                     f"{peak / 2**20:.1f}", f"{estimate / 2**20:.1f}", f"{estimate / peak:.3f}", f"{per_pixel:.0f}"])
        print(f"  {rows[-1]} ({time.perf_counter() - started:.1f} s)", flush=True)
    print()
    print(benchlib.markdown_table(["call", "video FxHxW", "tile px", "measured MiB", "estimate MiB",
                                   "estimate / measured", "measured elements per frame pixel"], rows))

    rows = []
    for frames, height, width in ESTIMATED_SIZES:
        latents = latent_shape(config, frames, height, width)
        for tile in ESTIMATED_TILES:
            decode = estimate_bytes(config, latents, encode=False, dtype=dtype, tile_size=tile)
            encode = estimate_bytes(config, (1, 3, frames, height, width), encode=True, dtype=dtype, tile_size=tile)
            rows.append([f"{frames}x{height}x{width}", tile or "-", f"{decode / 2**30:.2f}",
                         f"{encode / 2**30:.2f}"])
    print()
    print(benchlib.markdown_table(["video FxHxW", "tile px", "decode estimate GiB", "encode estimate GiB"], rows))


if __name__ == "__main__":
    main()
