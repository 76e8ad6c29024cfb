"""MagvitVAE against diffusers' AutoencoderKLMagvit on a tiny random config (CPU, fp32)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKLMagvit

from easyanimate_core.config import VAEConfig, vae_config_from_dict
from easyanimate_core.vae import MagvitVAE, Posterior
from easyanimate_core.vae_tiling import run_tiled

ATOL = 1e-5


def tiny_diffusers_vae(seed: int = 0) -> AutoencoderKLMagvit:
    """A randomly initialised diffusers VAE with the V5.1 topology and tiny widths."""
    torch.manual_seed(seed)
    return AutoencoderKLMagvit(
        block_out_channels=[8, 16, 16, 16], norm_num_groups=4, layers_per_block=1, latent_channels=16,
        spatial_group_norm=True,
    ).eval()


def tiny_vae_pair(seed: int = 0) -> tuple[AutoencoderKLMagvit, MagvitVAE]:
    """The diffusers reference and our VAE holding the same weights."""
    ref = tiny_diffusers_vae(seed)
    ours = MagvitVAE(vae_config_from_dict(dict(ref.config))).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


def random_video(frames: int, height: int = 32, width: int = 48, batch: int = 1, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, frames, height, width, generator=g) * 2 - 1


def random_latents(frames: int, height: int = 4, width: int = 6, batch: int = 1, seed: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 16, frames, height, width, generator=g)


@pytest.fixture(autouse=True)
def no_grad():
    with torch.no_grad():
        yield


@pytest.fixture(scope="module")
def pair():
    return tiny_vae_pair()


@pytest.fixture(scope="module")
def vae(pair):
    return pair[1]


@pytest.mark.parametrize("frames", [1, 9, 13])
def test_encode_matches_diffusers(pair, frames):
    ref, ours = pair
    x = random_video(frames, batch=2)
    expected = ref.encode(x).latent_dist
    got = ours.encode(x)
    assert got.mean.shape == (2, 16, 1 + (frames - 1) // 4, 4, 6)
    torch.testing.assert_close(got.mean, expected.mean, atol=ATOL, rtol=0)
    torch.testing.assert_close(got.logvar, expected.logvar, atol=ATOL, rtol=0)
    assert got.mode() is got.mean


@pytest.mark.parametrize("frames", [1, 3, 4])
def test_decode_matches_diffusers(pair, frames):
    ref, ours = pair
    z = random_latents(frames, batch=2)
    expected = ref.decode(z).sample.clamp(-1, 1)
    got = ours.decode(z)
    assert got.shape == (2, 3, 1 + 4 * (frames - 1), 32, 48)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)
    # The comparison means something only if most values are not clamped.
    assert (got.abs() < 1).float().mean() > 0.5


def test_bf16_matches_diffusers():
    # Measured bit-identical on CPU (torch 2.13): the same ops in the same order.
    ref, ours = tiny_vae_pair()
    ref.to(torch.bfloat16)
    ours.to(torch.bfloat16)
    z = random_latents(2).bfloat16()
    torch.testing.assert_close(ours.decode(z), ref.decode(z).sample.clamp(-1, 1))
    x = random_video(5).bfloat16()
    torch.testing.assert_close(ours.encode(x).mean, ref.encode(x).latent_dist.mean)


def test_batch_items_and_calls_are_independent(vae):
    x = torch.cat([random_video(9, seed=3), random_video(9, seed=4)])
    both = vae.encode(x).mean
    for i in range(2):
        torch.testing.assert_close(both[i:i + 1], vae.encode(x[i:i + 1]).mean, atol=ATOL, rtol=0)

    z = torch.cat([random_latents(3, seed=5), random_latents(3, seed=6)])
    both = vae.decode(z)
    for i in range(2):
        torch.testing.assert_close(both[i:i + 1], vae.decode(z[i:i + 1]), atol=ATOL, rtol=0)
    assert torch.equal(vae.decode(z), both)
    assert torch.equal(vae.encode(x).mean, vae.encode(x).mean)


def test_tile_larger_than_frame_equals_untiled(vae):
    z = random_latents(2)
    assert torch.equal(vae.decode(z, tile_size=512), vae.decode(z))
    x = random_video(5)
    assert torch.equal(vae.encode(x, tile_size=512).mean, vae.encode(x).mean)


@pytest.mark.parametrize("overlap", [0, 1, 3])
def test_tile_blending_is_exact_for_local_maps(overlap):
    # A map with no spatial context must come out of the tiler unchanged: no seams, no gaps, no double counting.
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, 3, 2, 10, 13, generator=g)

    def upsample(t, report):
        report()
        return F.interpolate(t, scale_factor=(1, 8, 8), mode="nearest")

    def pool(t, report):
        report()
        return F.avg_pool3d(t, (1, 8, 8))

    tiled = run_tiled(upsample, x, in_scale=1, out_scale=8, tile=4, overlap=overlap, chunks=1, callback=None)
    torch.testing.assert_close(tiled, upsample(x, lambda: None), atol=1e-6, rtol=0)
    pixels = upsample(x, lambda: None) + 0.1 * torch.randn(2, 3, 2, 80, 104, generator=g)
    tiled = run_tiled(pool, pixels, in_scale=8, out_scale=1, tile=4, overlap=overlap, chunks=1, callback=None)
    torch.testing.assert_close(tiled, pool(pixels, lambda: None), atol=1e-6, rtol=0)


def test_small_tiles_shape_and_error_no_worse_than_diffusers(pair):
    # Random tiny weights make tiling far from free: each tile has its own group-norm statistics and zero padding
    # at its borders. Measured (64x96 pixels, 2 latent frames, 64 px tiles, overlap 0.25): decode max 1.21 /
    # mean 0.070 against untiled, diffusers' own tiled_decode 1.66 / 0.128; encode max 0.35 / mean 0.029.
    ref, vae = pair
    z = random_latents(2, height=8, width=12)
    whole = vae.decode(z)
    tiled = vae.decode(z, tile_size=64, tile_overlap=0.25)
    assert tiled.shape == whole.shape == (1, 3, 5, 64, 96)
    error = (tiled - whole).abs().mean()
    assert error < 0.1
    ref.enable_tiling(tile_sample_min_height=64, tile_sample_min_width=64,
                      tile_sample_stride_height=48, tile_sample_stride_width=48)
    try:
        assert error <= (ref.decode(z).sample.clamp(-1, 1) - whole).abs().mean()
    finally:
        ref.disable_tiling()

    x = random_video(5, height=64, width=96)
    whole = vae.encode(x).mean
    tiled = vae.encode(x, tile_size=64, tile_overlap=0.25).mean
    assert tiled.shape == whole.shape == (1, 16, 2, 8, 12)
    assert (tiled - whole).abs().mean() < 0.05


@pytest.mark.parametrize("frames", [0, 2, 4, 8, 10])
def test_invalid_frame_count_raises(vae, frames):
    with pytest.raises(ValueError, match=rf"got {frames} frames"):
        vae.encode(random_video(frames, height=16, width=16))


def test_invalid_shapes_and_tile_options_raise(vae):
    with pytest.raises(ValueError, match=r"\[B, 16, T, h, w\]"):
        vae.decode(torch.zeros(1, 4, 2, 4, 4))
    with pytest.raises(ValueError, match="tile_size"):
        vae.decode(random_latents(1), tile_size=4)
    with pytest.raises(ValueError, match="tile_overlap"):
        vae.encode(random_video(1), tile_size=256, tile_overlap=1.5)


def test_callback_once_per_chunk(vae):
    calls = []
    vae.encode(random_video(9), callback=lambda done, total: calls.append((done, total)))
    assert calls == [(1, 3), (2, 3), (3, 3)]

    calls.clear()
    vae.decode(random_latents(4), callback=lambda done, total: calls.append((done, total)))
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]

    calls.clear()
    vae.decode(random_latents(2, height=7, width=7), tile_size=32,
               callback=lambda done, total: calls.append((done, total)))
    assert calls == [(i, 8) for i in range(1, 9)]  # 2x2 tiles of 4 latents (overlap 1) x 2 latent frames


def test_callback_exception_cancels_and_leaves_no_state(vae):
    z = random_latents(3)
    expected = vae.decode(z)

    def cancel(done, total):
        if done == 2:
            raise InterruptedError("cancelled")

    with pytest.raises(InterruptedError):
        vae.decode(z, callback=cancel)
    with pytest.raises(InterruptedError):
        vae.encode(random_video(9), callback=cancel)
    assert torch.equal(vae.decode(z), expected)


def test_posterior_sample_and_clamp():
    moments = torch.cat([torch.zeros(1, 16, 1, 2, 2), torch.full((1, 16, 1, 2, 2), 50.0)], dim=1)
    posterior = Posterior.from_moments(moments)
    assert posterior.logvar.max() == 20.0
    unit = Posterior(torch.ones(1, 16, 1, 2, 2), torch.zeros(1, 16, 1, 2, 2))
    expected = 1 + torch.randn(1, 16, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(unit.sample(torch.Generator().manual_seed(0)), expected)
    assert unit.sample().shape == unit.mean.shape


def test_meta_build_and_keys_match_diffusers(pair):
    ref, _ = pair
    ours = MagvitVAE(vae_config_from_dict(dict(ref.config)), device=torch.device("meta"))
    assert all(p.is_meta for p in ours.parameters())
    assert list(ours.state_dict()) == list(ref.state_dict())
    assert ours.scaling_factor == ref.config.scaling_factor

    # The shipped V5.1 topology, full size, on meta: same keys and shapes as diffusers.
    with torch.device("meta"):
        full_ref = AutoencoderKLMagvit()
    full = MagvitVAE(VAEConfig(), dtype=torch.bfloat16, device="meta")
    assert {k: v.shape for k, v in full.state_dict().items()} == {
        k: v.shape for k, v in full_ref.state_dict().items()}
    assert all(p.dtype == torch.bfloat16 for p in full.parameters())


def test_rejects_3d_group_norm_config():
    with pytest.raises(ValueError, match="spatial_group_norm"):
        MagvitVAE(VAEConfig(spatial_group_norm=False), device="meta")
