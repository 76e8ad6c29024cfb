"""Conditioning for every mode: InP against diffusers' EasyAnimateInpaintPipeline, control and camera by hand."""

from __future__ import annotations

import pytest
import torch
from tiny_models import diffusers_transformer, randomize_

from easyanimate_core import FlowMatchEulerScheduler, load_transformer, load_vae
from easyanimate_core.camera import plucker_embedding, preset_path
from easyanimate_core.conditioning import (
    camera_conditioning,
    control_conditioning,
    image_to_video_inputs,
    inpaint_conditioning,
    require_variant,
    video_latents,
)
from easyanimate_core.sampling import denoise, initial_noise

W, H, FRAMES = 96, 64, 5  # 3:2 latent grid (8 x 12 -> 4 x 6 tokens)


@pytest.fixture(scope="module")
def vae_pair(tmp_path_factory):
    from diffusers import AutoencoderKLMagvit

    root = tmp_path_factory.mktemp("vae")
    torch.manual_seed(0)
    reference = randomize_(AutoencoderKLMagvit(block_out_channels=[8, 8, 8, 8], norm_num_groups=4,
                                               layers_per_block=1), seed=4).eval()
    with torch.no_grad():  # keep activations in a sane range through the random layers
        for name, p in reference.named_parameters():
            if "conv" in name and name.endswith("weight"):
                p.mul_(0.5)
    reference.save_pretrained(root / "vae")
    return reference, load_vae(root, dtype=torch.float32)


def _bf16_timesteps(transformer):
    forward = transformer.forward
    transformer.forward = lambda x, t, *a, **k: forward(x, t.to(torch.bfloat16).float(), *a, **k)
    return transformer


def test_i2v_matches_diffusers_inpaint_pipeline(tmp_path, vae_pair):
    from diffusers import EasyAnimateInpaintPipeline, FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.easyanimate.pipeline_easyanimate_inpaint import get_image_to_video_latent

    reference_vae, vae = vae_pair
    reference = diffusers_transformer(in_channels=33)
    reference.save_pretrained(tmp_path / "transformer")
    ours = load_transformer(tmp_path, dtype=torch.float32)
    gen = torch.Generator().manual_seed(0)
    start = torch.rand(H, W, 3, generator=gen)
    end = torch.rand(H, W, 3, generator=gen)
    text, negative = torch.randn(1, 9, 24, generator=gen), torch.randn(1, 9, 24, generator=gen)
    mask = torch.ones(1, 9, dtype=torch.long)
    noise = initial_noise((1, 16, 2, H // 8, W // 8), seed=3)

    reference_vae.register_to_config(cache_mag_vae=True)  # the pipeline reads it (reference 15.4)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True)
    scheduler.init_noise_sigma = 1.0  # diffusers 0.42 leaves `noise` unbound when latents are passed without it
    pipe = EasyAnimateInpaintPipeline(vae=reference_vae, text_encoder=None, tokenizer=None,
                                      transformer=_bf16_timesteps(reference), scheduler=scheduler)
    video, mask_video = get_image_to_video_latent(start.permute(2, 0, 1), end.permute(2, 0, 1), FRAMES, (H, W))
    with torch.no_grad():
        expected = pipe(video=video, mask_video=mask_video, prompt_embeds=text, negative_prompt_embeds=negative,
                        prompt_attention_mask=mask, negative_prompt_attention_mask=mask, latents=noise.clone(),
                        generator=torch.Generator().manual_seed(11), num_frames=FRAMES, height=H, width=W,
                        num_inference_steps=3, guidance_scale=6.0, output_type="latent", return_dict=False)[0]
        pixels, keep = image_to_video_inputs(start[None], end[None], frames=FRAMES, width=W, height=H)
        assert keep.tolist() == [True, False, False, False, True]
        conditioning = inpaint_conditioning(vae, pixels, keep, frames=FRAMES, width=W, height=H, add_noise=True,
                                            generator=torch.Generator().manual_seed(11))
        got = denoise(ours, FlowMatchEulerScheduler(), noise=noise, text=text, negative_text=negative, steps=3,
                      guidance=6.0, conditioning=conditioning)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_inpaint_mask_channel_by_hand(vae_pair):
    _, vae = vae_pair
    start = torch.rand(1, H, W, 3)
    pixels, keep = image_to_video_inputs(start, None, frames=9, width=W, height=H)
    cond = inpaint_conditioning(vae, pixels, keep, frames=9, width=W, height=H, add_noise=False)
    latents = cond.inpaint_latents
    assert latents.shape == (1, 17, 3, H // 8, W // 8)
    # Reference 5.3: for plain I2V the mask channel is 0.7125 on latent frame 0 and 0 elsewhere.
    assert torch.allclose(latents[:, 0, 0], torch.full_like(latents[:, 0, 0], 0.7125))
    assert latents[:, 0, 1:].abs().max() == 0
    t2v = inpaint_conditioning(vae, None, None, frames=9, width=W, height=H, add_noise=True)
    assert t2v.inpaint_latents.shape == (1, 17, 3, H // 8, W // 8) and t2v.inpaint_latents.abs().max() == 0


def test_control_conditioning_by_hand(vae_pair):
    _, vae = vae_pair
    control = torch.rand(9, H, W, 3)
    reference = torch.rand(1, H, W, 3)
    cond = control_conditioning(vae, control, reference, frames=9, width=W, height=H)
    latents = cond.control_latents
    assert latents.shape == (1, 32, 3, H // 8, W // 8)
    with torch.no_grad():
        expected_control = vae.encode(control.permute(3, 0, 1, 2)[None] * 2 - 1).mode() * 0.7125
        expected_ref = vae.encode(reference.permute(3, 0, 1, 2)[None] * 2 - 1).mode() * 0.7125
    torch.testing.assert_close(latents[:, :16], expected_control, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(latents[:, 16:, :1], expected_ref, atol=1e-5, rtol=1e-5)
    assert latents[:, 16:, 1:].abs().max() == 0
    empty = control_conditioning(vae, None, None, frames=9, width=W, height=H).control_latents
    assert empty.abs().max() == 0
    single = control_conditioning(vae, control, reference, frames=1, width=W, height=H).control_latents
    assert single[:, 16:].abs().max() == 0  # T = 1: the reference slot stays empty (reference 5.5)
    with pytest.raises(ValueError, match="control video has 9 frames; the output needs 13"):
        control_conditioning(vae, control, None, frames=13, width=W, height=H)


def test_camera_conditioning_by_hand(vae_pair):
    _, vae = vae_pair
    path = preset_path("Pan Left", 9)
    plucker = plucker_embedding(path, W, H)
    cond = camera_conditioning(vae, plucker, torch.rand(1, H, W, 3), frames=9, width=W, height=H)
    latents = cond.control_latents
    assert latents.shape == (1, 22, 3, H // 8, W // 8)
    first = torch.nn.functional.interpolate(plucker[:1].permute(3, 0, 1, 2)[None], size=(1, H // 8, W // 8),
                                            mode="trilinear", align_corners=False) * 6
    torch.testing.assert_close(latents[:, :6, :1], first, atol=1e-5, rtol=1e-5)
    assert latents[:, 6:, 0].abs().max() > 0 and latents[:, 6:, 1:].abs().max() == 0


def test_video_latents_need_enough_frames(vae_pair):
    _, vae = vae_pair
    assert video_latents(vae, torch.rand(7, H, W, 3), frames=5, width=W, height=H).shape == (1, 16, 2, 8, 12)
    with pytest.raises(ValueError, match="ask for at most 5 frames"):
        video_latents(vae, torch.rand(7, H, W, 3), frames=9, width=W, height=H)


@pytest.mark.parametrize(
    "variant, mode, ok",
    [("t2v", "t2v", True), ("inp", "t2v", True), ("inp", "i2v", True), ("t2v", "i2v", False),
     ("control", "camera", False), ("control_camera", "camera", True), ("control", "trajectory", True),
     ("inp", "control", False), ("t2v", "v2v", True)],
)
def test_mode_needs_the_right_variant(variant, mode, ok):
    from easyanimate_core.demo import demo_transformer_config

    config = demo_transformer_config({"control_camera": "camera"}.get(variant, variant))
    if ok:
        require_variant(config, mode)
    else:
        with pytest.raises(ValueError, match=f"{mode} needs .*Load the right model folder"):
            require_variant(config, mode)
