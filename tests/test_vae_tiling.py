"""Automatic VAE tiling on a tiny VAE (CPU, fp32): the memory estimate against a tracked peak, the tile planner,
the retries after out-of-memory errors, and the decode node's automatic tile size."""

from __future__ import annotations

import importlib
import logging
import sys
from pathlib import Path

import pytest
import torch
from conftest import load_pack

from easyanimate_core import vae_tiling
from easyanimate_core.config import VAEConfig
from easyanimate_core.vae import MagvitVAE
from easyanimate_core.vae_tiling import MIN_AUTO_TILE, VAEOutOfMemoryError, estimate_bytes, plan_tile

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
    (False, latents(2, 4, 8, batch=2), 32),
    (True, video(9, 32, 48), None),
    (True, video(1, 32, 48), None),
    (True, video(5, 64, 64), 32),
], ids=["decode", "decode-1-frame", "decode-tiled-batch-2", "encode", "encode-1-frame", "encode-tiled"])
def test_estimate_matches_tracked_peak(vae, encode, x, tile):
    # Measured: 0.98 to 1.06 of the tracked peak. It may undershoot by up to 3% (the downsamplers' one-pixel
    # padding is left out; it weighs most at these small sizes) and overshoot by up to 8% (decode counts the last
    # chunk's output early, and a single frame counts carried frames of convs that have not run yet).
    peak = measured_peak(vae, x, encode=encode, tile_size=tile)
    estimate = estimate_bytes(CONFIG, x.shape, encode=encode, dtype=x.dtype, tile_size=tile)
    assert 0.97 * peak <= estimate <= 1.08 * peak


def test_estimate_scales_with_pixels_batch_and_dtype():
    small = estimate_bytes(CONFIG, (1, 16, 3, 4, 6), encode=False, dtype=torch.float32)
    assert estimate_bytes(CONFIG, (1, 16, 3, 8, 12), encode=False, dtype=torch.float32) == 4 * small
    assert estimate_bytes(CONFIG, (2, 16, 3, 4, 6), encode=False, dtype=torch.float32) == 2 * small
    assert estimate_bytes(CONFIG, (1, 16, 3, 4, 6), encode=False, dtype=torch.bfloat16) == small // 2


def test_auto_keeps_whole_frames_when_they_fit(vae, monkeypatch):
    monkeypatch.setattr(vae_tiling, "free_memory", lambda device: FREE_PLENTY)
    z = latents(2, 8, 12)
    assert plan_tile(CONFIG, z.shape, encode=False, dtype=z.dtype, device="cpu") is None
    assert torch.equal(vae.decode(z, tile_size="auto"), vae.decode(z))


def test_auto_without_a_memory_figure_keeps_whole_frames(monkeypatch):
    monkeypatch.setattr(vae_tiling, "free_memory", lambda device: None)
    assert plan_tile(CONFIG, (1, 16, 2, 24, 40), encode=False, dtype=torch.float32, device="cpu") is None


def test_auto_takes_the_largest_tile_that_fits(vae, monkeypatch, caplog):
    z = latents(1, 16, 40)  # 128x320 pixels: candidate tiles 256, 192, 128
    need = {t: estimate_bytes(CONFIG, z.shape, encode=False, dtype=z.dtype, tile_size=t) for t in (None, 256, 192)}
    assert need[None] > need[256] > need[192]
    free = int((need[192] + need[256]) / 2 / vae_tiling.MEMORY_MARGIN)  # 192 fits, 256 does not
    monkeypatch.setattr(vae_tiling, "free_memory", lambda device: free)
    with caplog.at_level(logging.INFO, logger=vae_tiling.__name__):
        assert plan_tile(CONFIG, z.shape, encode=False, dtype=z.dtype, device="cpu") == 192
        auto = vae.decode(z, tile_size="auto")
    assert "tiles of 192 px" in caplog.text
    assert torch.equal(auto, vae.decode(z, tile_size=192))

    x = video(5, 128, 192)
    need = estimate_bytes(CONFIG, x.shape, encode=True, dtype=x.dtype, tile_size=128)
    monkeypatch.setattr(vae_tiling, "free_memory", lambda device: int(need / vae_tiling.MEMORY_MARGIN) + 1)
    assert plan_tile(CONFIG, x.shape, encode=True, dtype=x.dtype, device="cpu") == 128
    assert torch.equal(vae.encode(x, tile_size="auto").mean, vae.encode(x, tile_size=128).mean)


def oom_until(tiles_needed: int, totals: list[int]):
    """A progress callback for one latent frame (``total`` is the tile count) that records each attempt's tile
    count and raises out-of-memory after the first tile of an attempt with fewer than ``tiles_needed`` tiles."""
    def callback(done: int, total: int) -> None:
        if done == 1:
            totals.append(total)
        if total < tiles_needed:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    return callback


def test_out_of_memory_retries_with_halved_tiles(vae, monkeypatch):
    monkeypatch.setattr(vae_tiling, "free_memory", lambda device: FREE_PLENTY)
    z = latents(1, 16, 48)  # 128x384 pixels: whole frames (1 tile), then 192 px (1x3 tiles), then 128 (1x4)
    totals = []
    auto = vae.decode(z, tile_size="auto", callback=oom_until(4, totals))
    assert totals == [1, 3, 4]
    assert torch.equal(auto, vae.decode(z, tile_size=MIN_AUTO_TILE))

    # From a planned tile: 256 px (1x2 tiles) fails, 128 px succeeds.
    need = estimate_bytes(CONFIG, z.shape, encode=False, dtype=z.dtype, tile_size=256)
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

    need = estimate_bytes(CONFIG, samples["samples"].shape, encode=False, dtype=torch.float32, tile_size=128)
    monkeypatch.setattr(tiling, "free_memory", lambda device: int(need / tiling.MEMORY_MARGIN) + 1)
    (auto,) = node.decode(vae=bundle, samples=samples, tile_size=0)
    (explicit,) = node.decode(vae=bundle, samples=samples, tile_size=128)
    assert torch.equal(auto, explicit) and not torch.equal(auto, whole)
    assert asked[1:] == [asked[0], 0]  # an explicit tile size asks ComfyUI for no activation room
