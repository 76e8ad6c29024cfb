"""Spatial tiling of VAE calls, and the automatic choice of whole frames or a tile size from the free memory.

``run_tiled`` runs an encode or decode on overlapping spatial tiles and cross-fades them. ``tile_size="auto"``
(:func:`plan_tile` and :func:`retry_smaller_tiles`) estimates the peak memory of the call (:func:`estimate_bytes`,
an upper bound of the measured peaks), keeps whole frames when that fits in free memory and otherwise takes the
largest tile that fits; a call that still runs out of memory (GPU or host) is retried with tiles half the size,
down to :data:`MIN_AUTO_TILE` pixels.
"""

from __future__ import annotations

import gc
import logging
import math
from collections.abc import Callable
from typing import Literal, TypeVar

import torch

from .config import VAEConfig
from .memory import MEMORY_MARGIN, free_memory
from .out_of_memory import OutOfMemoryError, is_out_of_memory

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]
# Encodes or decodes one spatial tile chunk by chunk, calling the second argument after every chunk.
TileRunner = Callable[[torch.Tensor, Callable[[], None]], torch.Tensor]
# None: whole frames; an int: tiles of that many pixels; "auto": chosen from the free memory of the device.
TileSize = int | Literal["auto"] | None

# Automatic tiles are multiples of TILE_STEP pixels, never below MIN_AUTO_TILE: smaller tiles have too little
# context for the group norms and too many seams.
TILE_STEP = 64
MIN_AUTO_TILE = 128

T = TypeVar("T")

# What allocators hold beyond the tensors and the convolution backend's copies (:func:`estimate_bytes`), measured.
ALLOCATOR_HEADROOM = 1.25
HOST_TILES_HEADROOM = 1.7
# The runtime's own first-call memory (oneDNN's kernels and scratchpads, OpenMP): 25 to 43 MiB measured on the CPU.
RUNTIME_BYTES = 64 << 20


class VAEOutOfMemoryError(OutOfMemoryError):
    """An automatic encode or decode that ran out of memory even with the smallest tiles."""

    tiles_exhausted = True  # out_of_memory.py: smaller tiles are no longer advice


def progress_reporter(callback: ProgressCallback | None, total: int) -> Callable[[], None]:
    """A ``report()`` that counts calls and passes ``(done, total)`` to ``callback``."""
    done = 0

    def report() -> None:
        nonlocal done
        done += 1
        if callback is not None:
            callback(done, total)

    return report


def _spans(size: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """Overlapping ``(start, end)`` tiles covering ``[0, size)``; the last one is moved back to end at ``size``."""
    if size <= tile:
        return [(0, size)]
    starts = list(range(0, size - tile, tile - overlap)) + [size - tile]
    return [(s, s + tile) for s in starts]


def _ramp(spans: list[tuple[int, int]], k: int, scale: int) -> torch.Tensor:
    """Blend weights along one axis of tile ``k`` (output units): linear ramps over the overlaps with neighbours.

    Two neighbours' ramps over the same overlap sum to one, and no weight is zero, so dividing by the summed
    weights is exact inside a tile and a linear cross-fade across a seam.
    """
    start, end = spans[k]
    w = torch.ones((end - start) * scale)
    if k > 0:
        n = (spans[k - 1][1] - start) * scale
        w[:n] = torch.minimum(w[:n], torch.arange(1, n + 1) / (n + 1))
    if k < len(spans) - 1:
        n = (end - spans[k + 1][0]) * scale
        w[w.numel() - n:] = torch.minimum(w[w.numel() - n:], torch.arange(n, 0, -1) / (n + 1))
    return w


def run_tiled(run: TileRunner, x: torch.Tensor, *, in_scale: int, out_scale: int, tile: int, overlap: int,
              chunks: int, callback: ProgressCallback | None) -> torch.Tensor:
    """Apply ``run(x_tile, report)`` to overlapping spatial tiles of ``x`` and cross-fade them linearly.

    Tiles are planned on the latent grid: ``tile`` and ``overlap`` are latent pixels, and one latent pixel is
    ``in_scale`` pixels of ``x`` and ``out_scale`` pixels of the output. ``run`` calls ``report()`` after each of
    its ``chunks`` temporal chunks.
    """
    h, w = x.shape[-2] // in_scale, x.shape[-1] // in_scale
    rows, cols = _spans(h, tile, overlap), _spans(w, tile, overlap)
    logger.debug("VAE tiling: %dx%d tiles of %d latent pixels, overlap %d", len(rows), len(cols), tile, overlap)
    report = progress_reporter(callback, chunks * len(rows) * len(cols))
    out = weight = None
    for i, (r0, r1) in enumerate(rows):
        for j, (c0, c1) in enumerate(cols):
            y = run(x[..., r0 * in_scale:r1 * in_scale, c0 * in_scale:c1 * in_scale], report)
            if out is None:
                # fp32 accumulators: [B, C, T, h_out, w_out] and the summed weights [h_out, w_out]
                out = y.new_zeros((*y.shape[:3], h * out_scale, w * out_scale), dtype=torch.float32)
                weight = out.new_zeros(out.shape[-2:])
            wt = (_ramp(rows, i, out_scale)[:, None] * _ramp(cols, j, out_scale)[None, :]).to(out.device)
            rs, cs = slice(r0 * out_scale, r1 * out_scale), slice(c0 * out_scale, c1 * out_scale)
            out[..., rs, cs] += y.float() * wt
            weight[rs, cs] += wt
    return (out / weight).to(y.dtype)


def _conv_copies(c_in: int | float, c_out: int | float, t_in: int | float, t_out: int | float) -> float:
    """Elements per pixel the convolution backend holds beside a conv's tensors while it runs: a copy of its
    (padded) input and of its output in the backend's own layout (oneDNN's blocked layout on the CPU; cuDNN's
    workspace on a GPU measured the same size)."""
    return t_in * c_in + t_out * c_out


def _stack_peak(c_in: int, c_out: int, layers: int, t: int, carried: int) -> float:
    """Most elements per pixel a stack of ``layers`` residual blocks on ``t`` frames holds besides the cache.

    The caller holds the stack's input throughout, later blocks their own input too. A block's first conv holds
    its input and SiLU output until the padded copy (``t + 2`` frames) exists, then the padded copy, ``carried``
    frames, its output and the backend's copies (:func:`_conv_copies`); the second conv the same beside the first
    one's output.
    """
    def block(c: int) -> float:
        conv1 = (t + 2) * c + max(t * c, carried * c + t * c_out + _conv_copies(c, c_out, t + 2, t))
        conv2 = t * c_out + (2 * t + 2 + carried) * c_out + _conv_copies(c_out, c_out, t + 2, t)
        return max(conv1, conv2)

    first = t * c_in + block(c_in)
    later = t * c_in + t * c_out + block(c_out) if layers > 1 else 0
    return max(first, later)


def _padded_share(size: tuple[int, int] | None, level: int) -> float:
    """How much larger than the frame at downsampling level ``level`` (0: full resolution) a downsampler's input is
    after its one-pixel padding right and bottom; 1 when the frame size is unknown."""
    if size is None:
        return 1.0
    height, width = size[0] / 2**level, size[1] / 2**level
    return (height + 1) * (width + 1) / (height * width)


def activation_elements(config: VAEConfig, *, encode: bool, later_chunks: bool,
                        size: tuple[int, int] | None = None) -> float:
    """Peak activation elements per frame pixel (input pixel for encode, output pixel for decode) of one sample,
    with the convolution backend's copies; ``size`` is the (height, width) in pixels of the frame or tile.

    The VAE works on one temporal chunk at a time, so the peak does not grow with the frame count (the outputs are
    added by :func:`estimate_bytes`); ``later_chunks`` says the call has chunks after the first, which hold 4 frames
    at full resolution instead of 1. The peak is the causal cache (the last 2 input frames of every causal conv,
    alive from the first chunk to the last; the downsamplers' inputs are one pixel wider and higher) plus the
    busiest conv: in a residual stack (:func:`_stack_peak`), a down- or upsampler, or conv_out (conv_in, on 3 or
    16 channels, is never the busiest), each with the backend's copies of its input and output
    (:func:`_conv_copies`). While a conv runs, the slice that prefixes the carried frames keeps alive the 2 frames
    it replaces (later chunks) or, in the first chunk, the conv's own input. Weights are not included, nor is the
    decode input after ``post_quant_conv`` (0.25 per latent frame).

    Checked with ``bench/vae_memory.py`` (bench/README.md, section 6). Without the backend's copies this is what
    the tensor tracker counts, to 0.1% (bf16 and fp32 alike, linear in H*W); for the config below, decode of 2
    latent frames at 64x64 px and encode of 5 frames at 64x64, measured / this formula without the copies:

    ====================================  ===============  ===============
    block_out_channels, layers_per_block  decode           encode
    ====================================  ===============  ===============
    [128, 256, 512, 512], 2 (V5.1)        7908 / 7904.5    5391 / 5390.4
    [64, 256, 512, 512], 2                7140 / 7136.5    3179 / 3178.4
    [128, 256, 512, 512], 1               6948 / 6944.5    3919 / 3918.4
    [128, 256, 512, 512], 3               8868 / 8864.5    6351 / 6350.4
    [128, 128, 512, 512], 2               6564 / 6560.5    5115 / 5114.4
    [128, 256, 256, 256], 2               7348 / 7344.5    5187 / 5186.3
    ====================================  ===============  ===============

    V5.1 decode: cache 4320.5 plus the last up block, 14 * 256 (= 4 * 256 + 20 * 128), so it grows with
    block_out_channels[0] and [1], little with the deeper ones, and by 960 per layer (all of it cache). V5.1 encode:
    cache 2294 (2318.4 at 64x64 with the padding) plus the first down block, 24 * 128, so it grows with
    block_out_channels[0] and by 960 per layer from 2 layers on. The backend's copies add 2048 (decode: the first
    conv of the last up block, 6 * 256 + 4 * 128) and 1280 (encode: 6 * 128 + 4 * 128) at the same convs: on an
    H200 the CUDA allocator's allocated peak of whole-frame calls of several latent frames was this formula to
    0.6% (for a single frame the formula is 11% above it: it counts cache entries of convs that have not run).
    """
    layers = config.layers_per_block
    sites: list[tuple[float, float]] = []  # (cache made up to a conv, the conv's own elements), in order
    if encode:
        chs = config.block_out_channels
        pixels = 1.0  # share of the frame's pixels at the current resolution
        t = config.temporal_compression if later_chunks else 1  # frames per chunk at this resolution
        cache = 2 * config.in_channels  # conv_in
        for i, kind in enumerate(config.down_block_types):
            c_in, c_out = chs[max(i - 1, 0)], chs[i]
            carried = 2 if later_chunks else t
            cache += 2 * pixels * (c_in + (2 * layers - 1) * c_out)
            sites.append((cache, pixels * _stack_peak(c_in, c_out, layers, t, carried)))
            if i == len(chs) - 1:
                break
            # downsampler, beside the block input and output: its padded copy (a temporal stride of 2 takes one
            # carried frame less), the carried frames, its output at a quarter of the pixels, the backend's copies
            stride = 2 if kind == "SpatialTemporalDownBlock3D" else 1
            padded = t + 2 - (stride - 1 if later_chunks else 0)
            t_out = max(1, t // stride)
            pad = _padded_share(size, i)
            cache += 2 * pixels * pad * c_out
            sites.append((cache, pixels * (t * c_in + t * c_out + pad * (padded + carried) * c_out + t_out * c_out / 4
                                           + _conv_copies(pad * c_out, c_out / 4, padded, t_out))))
            pixels, t = pixels / 4, t_out
        c, carried = chs[-1], 2 if later_chunks else t
        cache += 2 * pixels * 2 * layers * c  # mid block
        sites.append((cache, pixels * _stack_peak(c, c, layers, t, carried)))
        cache += 2 * pixels * c  # conv_out, to the moments
        moments = 2 * config.latent_channels
        sites.append((cache, pixels * ((2 * t + 2 + carried) * c + moments * t + _conv_copies(c, moments, t + 2, t))))
    else:
        chs = tuple(reversed(config.block_out_channels))
        pixels = 1.0 / config.spatial_compression**2
        t = 1  # one latent frame per chunk
        c, carried = chs[0], 2 if later_chunks else 1
        cache = 2 * pixels * (config.latent_channels + 2 * layers * c)  # conv_in, mid block
        sites.append((cache, pixels * _stack_peak(c, c, layers, t, carried)))
        for i, kind in enumerate(config.up_block_types):
            c_in, c_out = chs[max(i - 1, 0)], chs[i]
            carried = 2 if later_chunks else t
            cache += 2 * pixels * (c_in + (2 * layers + 1) * c_out)  # layers + 1 blocks
            sites.append((cache, pixels * _stack_peak(c_in, c_out, layers + 1, t, carried)))
            if i == len(chs) - 1:
                break
            # upsampler, beside the block input and output: at 4x the pixels the padded copy of its interpolated
            # input, the carried frames, its output and the backend's copies, then (temporal) the output beside its
            # doubled copy
            doubles = later_chunks and kind == "SpatialTemporalUpBlock3D"
            cache += 2 * 4 * pixels * c_out
            upsampled = max((2 * t + 2 + carried) * c_out + _conv_copies(c_out, c_out, t + 2, t),
                            3 * t * c_out if doubles else 0)
            sites.append((cache, pixels * ((t * c_in + t * c_out) + 4 * upsampled)))
            pixels, t = 4 * pixels, 2 * t if doubles else t
        c, carried = chs[-1], 2 if later_chunks else t
        cache += 2 * c  # conv_out, to pixels
        out = config.out_channels
        sites.append((cache, (2 * t + 2 + carried) * c + out * t + _conv_copies(c, out, t + 2, t)))
    # Every cache entry exists from the first chunk on; within the first chunk only those made up to the conv.
    return max((cache if later_chunks else held) + own for held, own in sites)


def frame_size(config: VAEConfig, shape: torch.Size | tuple[int, ...], *, encode: bool) -> tuple[int, int]:
    """Height and width in pixels of the frames of an encode input ``[B, 3, F, H, W]`` or decode input
    ``[B, 16, T, h, w]``."""
    c = config.spatial_compression
    if encode:
        return shape[-2] // c * c, shape[-1] // c * c
    return shape[-2] * c, shape[-1] * c


def tensor_bytes(config: VAEConfig, shape: torch.Size | tuple[int, ...], *, encode: bool, dtype: torch.dtype,
                 tile_size: int | None = None) -> int:
    """Peak bytes of the activations, outputs and convolution backend copies of one ``encode`` of a video
    ``[B, 3, F, H, W]`` or ``decode`` of latents ``[B, 16, T, h, w]`` in ``dtype``, in whole frames or tiles of
    ``tile_size`` pixels; weights excluded. What the CUDA allocator's allocated peak measures (on an H200 to 0.6%
    in whole frames, 0 to 4% above it in tiles); :func:`estimate_bytes` adds what allocators hold beyond it.
    """
    batch, frames = shape[0], shape[2]
    c, step = config.spatial_compression, config.temporal_compression
    height, width = frame_size(config, shape, encode=encode)
    latent_frames = 1 + (frames - 1) // step if encode else frames
    # output elements per frame pixel: the moments [B, 32, T, h, w] of encode, the video [B, 3, F, H, W] of decode
    out = (2 * config.latent_channels * latent_frames / c**2 if encode
           else config.out_channels * (1 + step * (frames - 1)))

    def whole(size: tuple[int, int]) -> float:
        # the activations beside the outputs of the chunks before, then those beside their concatenation
        act = activation_elements(config, encode=encode, later_chunks=latent_frames > 1, size=size)
        return batch * size[0] * size[1] * max(act + out, 2 * out) * dtype.itemsize

    if tile_size is None or tile_size >= max(height, width):
        return round(whole((height, width)))
    tile = tile_size // c * c
    tile_frame = (min(tile, height), min(tile, width))
    accumulator = batch * height * width * out * 4  # run_tiled's fp32 sum of the weighted tiles
    weighted = batch * tile_frame[0] * tile_frame[1] * out * 4 * 2  # a tile's weighted fp32 copy
    during = accumulator + whole(tile_frame) + weighted
    end = 2 * accumulator + batch * height * width * out * dtype.itemsize  # the quotient by the weights, its cast
    return round(max(during, end))


def estimate_bytes(config: VAEConfig, shape: torch.Size | tuple[int, ...], *, encode: bool, dtype: torch.dtype,
                   tile_size: int | None = None, device: torch.device | str | None = None) -> int:
    """Upper bound of the memory one ``encode`` of a video ``[B, 3, F, H, W]`` or ``decode`` of latents
    ``[B, 16, T, h, w]`` in ``dtype`` takes on ``device`` (None: a GPU) beyond the weights and the input, in whole
    frames or tiles of ``tile_size`` pixels: :func:`tensor_bytes` times the allocator's overhead, plus
    :data:`RUNTIME_BYTES`.

    The factors are the largest measured ones (``bench/vae_memory.py``; bench/README.md, section 6), rounded up:
    :data:`ALLOCATOR_HEADROOM` for the CUDA caching allocator's fragmentation (the least memory limit a call
    succeeds under was up to 1.246 times :func:`tensor_bytes` on an H200) and for the peak RSS of whole-frame calls
    on the CPU (up to 1.18 times beyond the runtime's 64 MiB); :data:`HOST_TILES_HEADROOM` for tiled calls on the
    CPU, where glibc keeps freed blocks of one tile in its heap while the next runs (up to 1.65 times).
    """
    tensors = tensor_bytes(config, shape, encode=encode, dtype=dtype, tile_size=tile_size)
    height, width = frame_size(config, shape, encode=encode)
    tiled = tile_size is not None and tile_size < max(height, width)
    on_host = device is not None and torch.device(device).type == "cpu"
    headroom = HOST_TILES_HEADROOM if tiled and on_host else ALLOCATOR_HEADROOM
    return math.ceil(headroom * tensors) + RUNTIME_BYTES


def plan_tile(config: VAEConfig, shape: torch.Size | tuple[int, ...], *, encode: bool, dtype: torch.dtype,
              device: torch.device | str) -> int | None:
    """None (whole frames) when the call's estimate fits in :data:`MEMORY_MARGIN` of the free memory of ``device``
    or that is unknown; else the largest tile (a multiple of :data:`TILE_STEP` pixels, at least
    :data:`MIN_AUTO_TILE`) whose estimate fits, or the smallest tile when none does."""
    free = free_memory(device)
    if free is None:
        return None
    budget = MEMORY_MARGIN * free
    whole = estimate_bytes(config, shape, encode=encode, dtype=dtype, device=device)
    height, width = frame_size(config, shape, encode=encode)
    sizes = range((max(height, width) - 1) // TILE_STEP * TILE_STEP, MIN_AUTO_TILE - 1, -TILE_STEP)
    if whole <= budget or not sizes:
        return None
    tile = next((s for s in sizes if estimate_bytes(config, shape, encode=encode, dtype=dtype, tile_size=s,
                                                    device=device) <= budget), MIN_AUTO_TILE)
    needed = estimate_bytes(config, shape, encode=encode, dtype=dtype, tile_size=tile, device=device)
    logger.info("VAE %s of %dx%d frames (width x height): about %.2f GiB in whole frames, %.2f GiB free on %s "
                "(%d%% usable): tiles of %d px (about %.2f GiB%s).", "encode" if encode else "decode", width,
                height, whole / 2**30, free / 2**30, torch.device(device), round(MEMORY_MARGIN * 100), tile,
                needed / 2**30, "" if needed <= budget else ", more than usable: the smallest tile")
    return tile


def _release(device: torch.device) -> None:
    """Give the memory of a failed attempt back to the device (its tensors die with the exception)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def retry_smaller_tiles(attempt: Callable[[int | None], T], planned: int | None, frame: tuple[int, int], *,
                        what: str, device: torch.device | str) -> T:
    """``attempt(planned)``; after an out-of-memory error (of the GPU, or a host allocation failure:
    :func:`~.out_of_memory.is_out_of_memory`), ``attempt`` again with tiles half the size (of the planned tile, or of
    the frame's larger side for whole frames) down to :data:`MIN_AUTO_TILE` pixels.

    ``frame`` is (height, width) in pixels and ``what`` "encode" or "decode", for the messages. Raises
    :class:`VAEOutOfMemoryError` when the smallest tile runs out of memory too.
    """
    device = torch.device(device)
    tile = planned
    while True:
        try:
            return attempt(tile)
        except (MemoryError, RuntimeError) as exc:  # torch's OutOfMemoryError is a RuntimeError
            if not is_out_of_memory(exc):
                raise
            reason = (str(exc).splitlines() or [type(exc).__name__])[0].rstrip(".")
        _release(device)
        tried = tile or max(frame)
        if tried <= MIN_AUTO_TILE:
            raise VAEOutOfMemoryError(
                f"VAE {what} of {frame[1]}x{frame[0]} frames (width x height) ran out of memory on {device} even "
                f"with {'whole frames' if tile is None else f'tiles of {tile} px'} ({MIN_AUTO_TILE} px is the "
                f"smallest automatic tile): {reason}. Free memory on the device (close other programs, unload "
                f"other models), use a lower resolution, or choose a memory mode that offloads "
                f"(model_cpu_offload, or sequential_cpu_offload for the least VRAM)."
            ) from None
        smaller = max(MIN_AUTO_TILE, tried // 2 // TILE_STEP * TILE_STEP)
        logger.warning("VAE %s of %dx%d frames ran out of memory with %s; retrying with tiles of %d px.", what,
                       frame[1], frame[0], "whole frames" if tile is None else f"tiles of {tile} px", smaller)
        tile = smaller
