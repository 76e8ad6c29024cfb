"""Automatic VAE tiling on a tiny VAE (CPU, fp32): the memory estimate against a tracked peak, the tile planner,
the retries after out-of-memory errors, and the decode node's automatic tile size."""

from __future__ import annotations

import importlib
import logging
import math
import sys
from pathlib import Path

import pytest
import torch
from conftest import load_pack

from easyanimate_core import vae_tiling
from easyanimate_core.config import VAEConfig
from easyanimate_core.vae import MagvitVAE
from easyanimate_core.out_of_memory import is_out_of_memory
from easyanimate_core.vae_tiling import (
    ALLOCATOR_HEADROOM,
    HOST_TILES_HEADROOM,
    MIN_AUTO_TILE,
    RUNTIME_BYTES,
    VAEOutOfMemoryError,
    estimate_bytes,
    plan_tile,
    tensor_bytes,
)

# The peak tracker lives with the benchmark that reports it.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from vae_memory import measured_peak

# The V5.1 topology with tiny widths; the deeper blocks wider than the first, as in V5.1.
CONFIG = VAEConfig(block_out_channels=(8, 16, 32, 32), norm_num_groups=4, layers_per_block=2)
FREE_PLENTY = 1 << 40


@pytest.fixture(scope="module")
def vae():
    torch.manual_seed(0)
    return MagvitVAE(CONFIG).eval()


def latents(frames: int, height: int, width: int, batch: int = 1) -> torch.Tensor:
    return torch.randn(batch, 16, frames, height, width, generator=torch.Generator().manual_seed(3))


def video(frames: int, height: int, width: int) -> torch.Tensor:
    return torch.rand(1, 3, frames, height, width, generator=torch.Generator().manual_seed(4)) * 2 - 1


@pytest.mark.parametrize("encode, x, tile", [
    (False, latents(3, 4, 6), None),
    (False, latents(1, 4, 6), None),
    (False, latents(3, 2, 48), None),
    (False, latents(2, 4, 8, batch=2), 32),
    (False, latents(2, 8, 12), 88),
    (False, latents(3, 2, 48), 128),
    (True, video(9, 32, 48), None),
    (True, video(1, 32, 48), None),
    (True, video(5, 16, 512), None),
    (True, video(5, 64, 64), 32),
    (True, video(5, 64, 96), 88),
    (True, video(5, 16, 512), 128),
], ids=["decode", "decode-1-frame", "decode-wide", "decode-tiled-batch-2", "decode-tile-near-frame",
        "decode-wide-tiled", "encode", "encode-1-frame", "encode-wide", "encode-tiled", "encode-tile-near-frame",
        "encode-wide-tiled"])
def test_estimate_is_an_upper_bound_of_the_tracked_peak(vae, encode, x, tile):
    # tensor_bytes is the tracked peak plus the convolution backend's copies of the busiest conv's input and output
    # (measured 1.07 to 1.29 of the tracked peak for this config); estimate_bytes adds the allocators' overhead.
    peak = measured_peak(vae, x, encode=encode, tile_size=tile)
    tensors = tensor_bytes(CONFIG, x.shape, encode=encode, dtype=x.dtype, tile_size=tile)
    assert peak <= tensors <= 1.3 * peak
    for device in (None, "cuda", "cpu"):
        estimate = estimate_bytes(CONFIG, x.shape, encode=encode, dtype=x.dtype, tile_size=tile, device=device)
        assert peak + RUNTIME_BYTES <= estimate <= 2.3 * peak + RUNTIME_BYTES


def test_estimate_headroom_by_device():
    shape = (1, 16, 3, 8, 12)  # 64x96 pixels
    tensors = tensor_bytes(CONFIG, shape, encode=False, dtype=torch.float32)
    for device in (None, "cuda", "cpu"):
        assert estimate_bytes(CONFIG, shape, encode=False, dtype=torch.float32, device=device) == (
            math.ceil(ALLOCATOR_HEADROOM * tensors) + RUNTIME_BYTES)
    # Tiles on the host: glibc's heap keeps a tile's freed blocks while the next one runs.
    tiled = tensor_bytes(CONFIG, shape, encode=False, dtype=torch.float32, tile_size=64)
    assert estimate_bytes(CONFIG, shape, encode=False, dtype=torch.float32, tile_size=64, device="cpu") == (
        math.ceil(HOST_TILES_HEADROOM * tiled) + RUNTIME_BYTES)
    assert estimate_bytes(CONFIG, shape, encode=False, dtype=torch.float32, tile_size=64, device="cuda") == (
        math.ceil(ALLOCATOR_HEADROOM * tiled) + RUNTIME_BYTES)


def test_tensor_bytes_scale_with_pixels_batch_and_dtype():
    small = tensor_bytes(CONFIG, (1, 16, 3, 4, 6), encode=False, dtype=torch.float32)
    assert tensor_bytes(CONFIG, (1, 16, 3, 8, 12), encode=False, dtype=torch.float32) == 4 * small
    assert tensor_bytes(CONFIG, (2, 16, 3, 4, 6), encode=False, dtype=torch.float32) == 2 * small
    assert tensor_bytes(CONFIG, (1, 16, 3, 4, 6), encode=False, dtype=torch.bfloat16) == small // 2


def test_encode_estimate_counts_the_downsamplers_padding():
    # The downsamplers' inputs (and their carried frames) are one pixel wider and higher: it weighs most on frames
    # only a few latent pixels high.
    wide, square = (1, 3, 5, 16, 4096), (1, 3, 5, 256, 256)  # the same pixel count
    assert (tensor_bytes(CONFIG, wide, encode=True, dtype=torch.float32)
            > tensor_bytes(CONFIG, square, encode=True, dtype=torch.float32))


def test_auto_keeps_whole_frames_when_they_fit(vae, monkeypatch):
    monkeypatch.setattr(vae_tiling, "free_memory", lambda device: FREE_PLENTY)
    z = latents(2, 8, 12)
    assert plan_tile(CONFIG, z.shape, encode=False, dtype=z.dtype, device="cpu") is None
    assert torch.equal(vae.decode(z, tile_size="auto"), vae.decode(z))


def test_auto_without_a_memory_figure_keeps_whole_frames(monkeypatch):
    monkeypatch.setattr(vae_tiling, "free_memory", lambda device: None)
    assert plan_tile(CONFIG, (1, 16, 2, 24, 40), encode=False, dtype=torch.float32, device="cpu") is None


def test_auto_takes_the_largest_tile_that_fits(vae, monkeypatch, caplog):
    z = latents(1, 16, 64)  # 128x512 pixels: candidate tiles 448, 384, ..., 128
    need = {t: estimate_bytes(CONFIG, z.shape, encode=False, dtype=z.dtype, tile_size=t, device="cpu")
            for t in (None, 448, 256, 192)}
    # On the host a tile near the frame's size needs more than whole frames (glibc's heap keeps a tile's blocks).
    assert need[448] > need[None] > need[256] > need[192]
    free = int((need[192] + need[256]) / 2 / vae_tiling.MEMORY_MARGIN)  # 192 fits, 256 does not
    monkeypatch.setattr(vae_tiling, "free_memory", lambda device: free)
    with caplog.at_level(logging.INFO, logger=vae_tiling.__name__):
        assert plan_tile(CONFIG, z.shape, encode=False, dtype=z.dtype, device="cpu") == 192
        auto = vae.decode(z, tile_size="auto")
    assert "tiles of 192 px" in caplog.text
    assert torch.equal(auto, vae.decode(z, tile_size=192))

    x = video(5, 128, 192)
    need = estimate_bytes(CONFIG, x.shape, encode=True, dtype=x.dtype, tile_size=128, device="cpu")
    monkeypatch.setattr(vae_tiling, "free_memory", lambda device: int(need / vae_tiling.MEMORY_MARGIN) + 1)
    assert plan_tile(CONFIG, x.shape, encode=True, dtype=x.dtype, device="cpu") == 128
    assert torch.equal(vae.encode(x, tile_size="auto").mean, vae.encode(x, tile_size=128).mean)


HOST_FAILURE = "DefaultCPUAllocator: can't allocate memory: you tried to allocate 123 bytes. Error code 12"


def oom_until(tiles_needed: int, totals: list[int], error=lambda: torch.OutOfMemoryError(
        "CUDA out of memory. Tried to allocate 2.00 GiB")):
    """A progress callback for one latent frame (``total`` is the tile count) that records each attempt's tile
    count and raises ``error()`` (out-of-memory) from inside the tile runner after the first tile of an attempt with
    fewer than ``tiles_needed`` tiles."""
    def callback(done: int, total: int) -> None:
        if done == 1:
            totals.append(total)
        if total < tiles_needed:
            raise error()
    return callback


def test_out_of_memory_retries_with_halved_tiles(vae, monkeypatch):
    monkeypatch.setattr(vae_tiling, "free_memory", lambda device: FREE_PLENTY)
    z = latents(1, 16, 48)  # 128x384 pixels: whole frames (1 tile), then 192 px (1x3 tiles), then 128 (1x4)
    totals = []
    auto = vae.decode(z, tile_size="auto", callback=oom_until(4, totals))
    assert totals == [1, 3, 4]
    assert torch.equal(auto, vae.decode(z, tile_size=MIN_AUTO_TILE))

    # From a planned tile: 256 px (1x2 tiles) fails, 128 px succeeds.
    need = estimate_bytes(CONFIG, z.shape, encode=False, dtype=z.dtype, tile_size=256, device="cpu")
    monkeypatch.setattr(vae_tiling, "free_memory", lambda device: int(need / vae_tiling.MEMORY_MARGIN) + 1)
    totals.clear()
    vae.decode(z, tile_size="auto", callback=oom_until(4, totals))
    assert totals == [2, 4]


def test_out_of_memory_with_the_smallest_tile_says_what_to_do(vae, monkeypatch):
    monkeypatch.setattr(vae_tiling, "free_memory", lambda device: FREE_PLENTY)
    totals = []
    with pytest.raises(VAEOutOfMemoryError) as caught:
        vae.decode(latents(1, 20, 24), tile_size="auto", callback=oom_until(1000, totals))
    assert totals == [1, 4]  # 192x160 pixels: whole frames, then 2x2 tiles of 128 px
    message = str(caught.value)
    for part in ("192x160 frames", "tiles of 128 px", "Tried to allocate", "lower resolution", "offload"):
        assert part in message
    assert isinstance(caught.value, torch.OutOfMemoryError)
    assert caught.value.__context__ is None and caught.value.__cause__ is None  # no traceback holding tensors


@pytest.mark.parametrize("error", [lambda: RuntimeError(HOST_FAILURE), lambda: MemoryError()],
                         ids=["DefaultCPUAllocator", "MemoryError"])
def test_host_allocation_failure_retries_with_smaller_tiles(vae, monkeypatch, error):
    monkeypatch.setattr(vae_tiling, "free_memory", lambda device: FREE_PLENTY)
    z = latents(1, 16, 48)  # 128x384 pixels: whole frames (1 tile), then 192 px (1x3 tiles), then 128 (1x4)
    totals = []
    auto = vae.decode(z, tile_size="auto", callback=oom_until(3, totals, error))
    assert totals == [1, 3]
    assert torch.equal(auto, vae.decode(z, tile_size=192))

    x = video(5, 64, 384)  # the same frame to encode: 2 chunks per tile
    totals.clear()
    encoded = vae.encode(x, tile_size="auto", callback=oom_until(8, totals, error))
    assert totals == [2, 6, 8]
    assert torch.equal(encoded.mean, vae.encode(x, tile_size=MIN_AUTO_TILE).mean)


def test_host_allocation_failure_with_the_smallest_tile_is_an_out_of_memory_error(vae, monkeypatch):
    monkeypatch.setattr(vae_tiling, "free_memory", lambda device: FREE_PLENTY)
    totals = []
    with pytest.raises(VAEOutOfMemoryError) as caught:
        vae.decode(latents(1, 20, 24), tile_size="auto", callback=oom_until(1000, totals, lambda: RuntimeError(
            HOST_FAILURE)))
    assert totals == [1, 4]
    assert isinstance(caught.value, torch.OutOfMemoryError) and is_out_of_memory(caught.value)
    for part in ("192x160 frames", "tiles of 128 px", "DefaultCPUAllocator: can't allocate memory"):
        assert part in str(caught.value)
    assert caught.value.__context__ is None and caught.value.__cause__ is None


def test_other_errors_are_not_retried(vae, monkeypatch):
    monkeypatch.setattr(vae_tiling, "free_memory", lambda device: FREE_PLENTY)
    totals = []
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        vae.decode(latents(1, 16, 48), tile_size="auto", callback=oom_until(1000, totals, lambda: RuntimeError(
            "mat1 and mat2 shapes cannot be multiplied")))
    assert totals == [1]


def test_decode_node_tile_size_0_is_automatic(comfyui, monkeypatch):
    pack = load_pack()
    tiling = importlib.import_module(f"{pack.__name__}.easyanimate_core.vae_tiling")
    native = importlib.import_module(f"{pack.__name__}.nodes._native")
    node = pack.NODE_CLASS_MAPPINGS["EasyAnimateDecode"]()
    torch.manual_seed(0)
    model = importlib.import_module(f"{pack.__name__}.easyanimate_core.vae").MagvitVAE(CONFIG).eval()
    bundle = native.component_patcher(model)
    samples = {"samples": latents(2, 16, 24)}
    asked = []
    real_load = native.load_on_device

    def recording_load(patcher, memory_required=0, **kwargs):
        asked.append(memory_required)
        return real_load(patcher, memory_required, **kwargs)

    monkeypatch.setattr(native, "load_on_device", recording_load)
    monkeypatch.setattr(tiling, "free_memory", lambda device: FREE_PLENTY)

    (whole,) = node.decode(vae=bundle, samples=samples, tile_size=0)
    assert whole.shape == (5, 128, 192, 3)
    assert asked == [estimate_bytes(CONFIG, samples["samples"].shape, encode=False, dtype=torch.float32)]

    need = estimate_bytes(CONFIG, samples["samples"].shape, encode=False, dtype=torch.float32, tile_size=128,
                          device="cpu")
    monkeypatch.setattr(tiling, "free_memory", lambda device: int(need / tiling.MEMORY_MARGIN) + 1)
    (auto,) = node.decode(vae=bundle, samples=samples, tile_size=0)
    (explicit,) = node.decode(vae=bundle, samples=samples, tile_size=128)
    assert torch.equal(auto, explicit) and not torch.equal(auto, whole)
    assert asked[1:] == [asked[0], 0]  # an explicit tile size asks ComfyUI for no activation room
