"""VAE memory: the peak of one encode/decode against ``easyanimate_core.vae_tiling.estimate_bytes``.

Three measurements of the same call, with the V5.1 VAE topology and random weights (the counts do not depend on
the values or, as measured, on the dtype):

- tracked: every tensor storage PyTorch hands out during the call, freed when the storage dies (a
  ``TorchDispatchMode``). It sees the tensors the model's code makes, not what the ops allocate inside (the
  convolution backends' reorders and workspaces) nor allocator rounding. The weights and the input exist before
  the call and are not counted.
- RSS (CPU, ``--rss``): the growth of the process's peak resident memory during the call, in a fresh process per
  case (``/proc/self/clear_refs`` resets the high-water mark after the model and input are made): what host RAM a
  user really needs, oneDNN's blocked copies of every conv's input and output and glibc's heap included.
- allocated / reserved / least limit (``--device cuda``): the growth of ``torch.cuda.max_memory_allocated``
  (cuDNN workspaces included) and ``max_memory_reserved`` (the caching allocator's segments, unconstrained) during
  the call, and the least memory limit under which the call still succeeds (:func:`least_limit`).

Then the estimate alone for the sizes users run on a GPU.

    python bench/vae_memory.py                      # tracked, fp32: about 7 minutes on 2 CPU cores
    python bench/vae_memory.py --rss                # and the RSS growth of each case: about 14 minutes
    python bench/vae_memory.py --device cuda        # bf16 on a GPU: allocator peaks at the sizes users run
"""

from __future__ import annotations

import argparse
import gc
import subprocess
import sys
import time
from pathlib import Path

import benchlib  # puts the repo root on sys.path
import torch
from benchlib import PeakTracker

from easyanimate_core import MagvitVAE, VAEConfig
from easyanimate_core.vae_tiling import estimate_bytes, tensor_bytes

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# (encode, frames, height, width, tile px or None): video frames and pixels of the frame
MEASURED = [
    (False, 5, 64, 64, None),
    (False, 1, 128, 128, None),
    (False, 5, 128, 128, None),
    (False, 13, 128, 128, None),
    (False, 5, 128, 224, None),
    (False, 5, 64, 1024, None),
    (False, 5, 128, 256, 128),
    (False, 5, 128, 128, 120),
    (False, 5, 64, 1024, 256),
    (True, 5, 64, 64, None),
    (True, 1, 128, 128, None),
    (True, 5, 128, 128, None),
    (True, 13, 128, 128, None),
    (True, 5, 128, 224, None),
    (True, 5, 64, 1024, None),
    (True, 5, 128, 256, 128),
    (True, 5, 64, 1024, 256),
]
# On a GPU: the sizes users run, whole frames and the tiles the planner picks, and very wide frames.
CUDA_SIZES = [  # (frames, height, width, tile px or None), each decoded and encoded
    (5, 128, 128, None), (1, 576, 1008, None), (49, 384, 672, None), (49, 576, 1008, None), (49, 576, 1008, 960),
    (49, 576, 1008, 512), (49, 576, 1008, 256), (25, 128, 2048, None), (25, 128, 2048, 512), (13, 64, 4096, None),
    (13, 64, 4096, 256),
]
MEASURED_CUDA = [(encode, *size) for encode in (False, True) for size in CUDA_SIZES]
ESTIMATED_SIZES = [(49, 576, 1008), (49, 384, 672)]
ESTIMATED_TILES = [None, 512, 384, 256]


def run_call(vae: MagvitVAE, x: torch.Tensor, *, encode: bool, tile_size: int | None) -> None:
    with torch.inference_mode():
        if encode:
            vae.encode(x, tile_size=tile_size)
        else:
            vae.decode(x, tile_size=tile_size)


def measured_peak(vae: MagvitVAE, x: torch.Tensor, *, encode: bool, tile_size: int | None = None) -> int:
    """Tracked peak bytes of one ``vae.encode(x)`` or ``vae.decode(x)``; the weights and ``x`` are not counted."""
    with PeakTracker((x, *vae.parameters())) as tracker:
        run_call(vae, x, encode=encode, tile_size=tile_size)
    return tracker.peak


def _proc_status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {key} in /proc/self/status: the RSS measurement needs Linux")


def rss_peak(vae: MagvitVAE, x: torch.Tensor, *, encode: bool, tile_size: int | None) -> int:
    """Growth of this process's peak RSS during one call (Linux: the high-water mark is reset first)."""
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")
    before = _proc_status("VmRSS")
    run_call(vae, x, encode=encode, tile_size=tile_size)
    return _proc_status("VmHWM") - before


def cuda_peaks(vae: MagvitVAE, x: torch.Tensor, *, encode: bool, tile_size: int | None) -> tuple[int, int]:
    """Growth of the allocated and the reserved peak of the CUDA caching allocator during one call."""
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    allocated, reserved = torch.cuda.memory_allocated(), torch.cuda.memory_reserved()
    run_call(vae, x, encode=encode, tile_size=tile_size)
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - allocated, torch.cuda.max_memory_reserved() - reserved


def least_limit(vae: MagvitVAE, x: torch.Tensor, *, encode: bool, tile_size: int | None, fails: int,
                succeeds: int) -> int:
    """The least memory beyond what the allocator holds before the call with which the call still succeeds, to 1%:
    a bisection of the CUDA allocator's per-process limit between ``fails`` and ``succeeds`` bytes. It is what the
    call really needs from the device, the allocator's fragmentation included (the allocator frees its cached
    blocks and retries before it gives up)."""
    total = torch.cuda.get_device_properties(x.device).total_memory
    try:
        while succeeds - fails > 0.01 * succeeds:
            mid = (fails + succeeds) // 2
            gc.collect()
            torch.cuda.empty_cache()
            torch.cuda.set_per_process_memory_fraction((torch.cuda.memory_reserved() + mid) / total)
            try:
                run_call(vae, x, encode=encode, tile_size=tile_size)
                succeeds = mid
            except torch.OutOfMemoryError:
                fails = mid
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    return succeeds


def vae_input(config: VAEConfig, encode: bool, frames: int, height: int, width: int, dtype,
              device: str = "cpu") -> torch.Tensor:
    """A video [1, 3, F, H, W] to encode, or the latents [1, 16, T, H/8, W/8] that decode to it."""
    gen = torch.Generator().manual_seed(0)
    if encode:
        return (torch.rand(1, 3, frames, height, width, generator=gen) * 2 - 1).to(device, dtype)
    return torch.randn(latent_shape(config, frames, height, width), generator=gen).to(device, dtype)


def latent_shape(config: VAEConfig, frames: int, height: int, width: int) -> tuple[int, ...]:
    """The latents [1, 16, T, h, w] of a video of ``frames`` x ``height`` x ``width``."""
    c, step = config.spatial_compression, config.temporal_compression
    return 1, config.latent_channels, 1 + (frames - 1) // step, height // c, width // c


def _case_text(case: tuple) -> str:
    return ",".join("-" if v is None else str(int(v)) for v in case)


def _parse_case(text: str) -> tuple:
    encode, frames, height, width, tile = text.split(",")
    return encode == "1", int(frames), int(height), int(width), None if tile == "-" else int(tile)


def rss_in_fresh_process(case: tuple, args: argparse.Namespace) -> int:
    """``rss_peak`` of ``case`` in a new interpreter, so no earlier call's heap is reused."""
    done = subprocess.run([sys.executable, __file__, "--rss-case", _case_text(case), "--dtype", args.dtype,
                           "--threads", str(args.threads)], capture_output=True, text=True, check=True)
    return int(done.stdout.split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), help="default: fp32 on the CPU (bf16 convs are many "
                        "times slower there), bf16 on a GPU")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rss", action="store_true", help="CPU: also the peak RSS growth of each case")
    parser.add_argument("--rss-case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.dtype = args.dtype or ("bf16" if args.device == "cuda" else "fp32")
    torch.set_num_threads(args.threads)
    dtype, device = DTYPES[args.dtype], args.device
    config = VAEConfig()
    vae = benchlib.random_fill_(MagvitVAE(config, dtype=dtype, device=device).eval(), seed=0)
    if args.rss_case:
        encode, frames, height, width, tile = _parse_case(args.rss_case)
        x = vae_input(config, encode, frames, height, width, dtype)
        print(rss_peak(vae, x, encode=encode, tile_size=tile))
        return
    print(f"V5.1 VAE {list(config.block_out_channels)}, {args.dtype} on {device}; {benchlib.machine_description()}"
          + (f"; {torch.cuda.get_device_name()}" if device == "cuda" else ""))

    rows = []
    for case in MEASURED_CUDA if device == "cuda" else MEASURED:
        encode, frames, height, width, tile = case
        x = vae_input(config, encode, frames, height, width, dtype, device)
        tensors = tensor_bytes(config, x.shape, encode=encode, dtype=dtype, tile_size=tile)
        estimate = estimate_bytes(config, x.shape, encode=encode, dtype=dtype, tile_size=tile, device=device)
        started = time.perf_counter()
        tracked = measured_peak(vae, x, encode=encode, tile_size=tile)
        row = ["encode" if encode else "decode", f"{frames}x{height}x{width}", tile or "-",
               f"{tracked / 2**20:.1f}", f"{tensors / 2**20:.1f}", f"{estimate / 2**20:.1f}",
               f"{estimate / tracked:.2f}"]
        if device == "cuda":
            allocated, reserved = cuda_peaks(vae, x, encode=encode, tile_size=tile)
            least = least_limit(vae, x, encode=encode, tile_size=tile, fails=allocated - 1, succeeds=reserved)
            row += [f"{allocated / 2**20:.1f}", f"{tensors / allocated:.3f}", f"{reserved / 2**20:.1f}",
                    f"{least / 2**20:.1f}", f"{estimate / least:.2f}"]
        elif args.rss:
            rss = rss_in_fresh_process(case, args)
            row += [f"{rss / 2**20:.1f}", f"{estimate / rss:.2f}"]
        rows.append(row)
        print(f"  {row} ({time.perf_counter() - started:.1f} s)", flush=True)
        del x
    headers = ["call", "video FxHxW", "tile px", "tracked MiB", "tensor_bytes MiB", "estimate MiB",
               "estimate / tracked"]
    if device == "cuda":
        headers += ["allocated MiB", "tensor_bytes / allocated", "reserved MiB", "least limit MiB",
                    "estimate / least limit"]
    elif args.rss:
        headers += ["RSS MiB", "estimate / RSS"]
    print()
    print(benchlib.markdown_table(headers, rows))

    rows = []
    for frames, height, width in ESTIMATED_SIZES:
        latents = latent_shape(config, frames, height, width)
        for tile in ESTIMATED_TILES:
            decode = estimate_bytes(config, latents, encode=False, dtype=torch.bfloat16, tile_size=tile)
            encode = estimate_bytes(config, (1, 3, frames, height, width), encode=True, dtype=torch.bfloat16,
                                    tile_size=tile)
            rows.append([f"{frames}x{height}x{width}", tile or "-", f"{decode / 2**30:.2f}",
                         f"{encode / 2**30:.2f}"])
    print()
    print(benchlib.markdown_table(["video FxHxW", "tile px", "bf16 decode estimate GiB",
                                   "bf16 encode estimate GiB"], rows))


if __name__ == "__main__":
    main()
