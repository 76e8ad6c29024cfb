"""The denoise loop against diffusers' EasyAnimatePipeline (text-to-video) on tiny components."""

from __future__ import annotations

import pytest
import torch
from tiny_models import diffusers_transformer

from easyanimate_core import FlowMatchEulerScheduler, load_transformer
from easyanimate_core.sampling import Conditioning, denoise, initial_noise


@pytest.fixture(scope="module")
def components(tmp_path_factory):
    root = tmp_path_factory.mktemp("t2v")
    reference = diffusers_transformer(in_channels=16, num_layers=2, mmdit_layers=2)
    reference.save_pretrained(root / "transformer")
    return reference, load_transformer(root, dtype=torch.float32)


def _bf16_timesteps(transformer):
    """The released pipeline runs in bf16 and casts t to bf16 before the model; emulate that for an fp32 run."""
    forward = transformer.forward

    def rounded(hidden_states, timestep, *args, **kwargs):
        return forward(hidden_states, timestep.to(torch.bfloat16).float(), *args, **kwargs)

    transformer.forward = rounded
    return transformer


def test_t2v_matches_diffusers_pipeline(components):
    from diffusers import AutoencoderKLMagvit, EasyAnimatePipeline, FlowMatchEulerDiscreteScheduler

    reference, ours = components
    gen = torch.Generator().manual_seed(0)
    text, negative = torch.randn(1, 9, 24, generator=gen), torch.randn(1, 9, 24, generator=gen)
    mask = torch.ones(1, 9, dtype=torch.long)
    noise = initial_noise((1, 16, 2, 8, 12), seed=42)  # 3:2 latent grid, so both RoPE formulas agree
    pipe = EasyAnimatePipeline(
        vae=AutoencoderKLMagvit(block_out_channels=[8, 8, 8, 8], norm_num_groups=4, layers_per_block=1),
        text_encoder=None, tokenizer=None, transformer=_bf16_timesteps(reference),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True),
    )
    with torch.no_grad():
        expected = pipe(prompt_embeds=text, negative_prompt_embeds=negative, prompt_attention_mask=mask,
                        negative_prompt_attention_mask=mask, latents=noise.clone(), num_frames=5, height=64,
                        width=96, num_inference_steps=4, guidance_scale=6.0, output_type="latent",
                        return_dict=False)[0]
        got = denoise(ours, FlowMatchEulerScheduler(), noise=noise, text=text, negative_text=negative, steps=4,
                      guidance=6.0)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_callback_sees_every_step_and_can_cancel_without_side_effects(components):
    _, ours = components
    noise = initial_noise((1, 16, 1, 4, 6), seed=1)
    text = torch.randn(1, 5, 24)
    before = noise.clone()
    seen = []
    denoise(ours, FlowMatchEulerScheduler(), noise=noise, text=text, steps=3, guidance=1.0,
            callback=lambda step, total, latents: seen.append((step, total, latents.shape)))
    assert seen == [(1, 3, noise.shape), (2, 3, noise.shape), (3, 3, noise.shape)]

    def cancel(step, total, latents):
        if step == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        denoise(ours, FlowMatchEulerScheduler(), noise=noise, text=text, steps=3, callback=cancel)
    assert torch.equal(noise, before)


def test_strength_starts_from_the_noised_clean_latents(components):
    _, ours = components
    noise, clean = initial_noise((1, 16, 1, 4, 6), seed=1), initial_noise((1, 16, 1, 4, 6), seed=2)
    text = torch.randn(1, 5, 24)
    with pytest.raises(ValueError, match="clean_latents"):
        denoise(ours, FlowMatchEulerScheduler(), noise=noise, text=text, steps=4, strength=0.5)
    first = []
    denoise(ours, FlowMatchEulerScheduler(), noise=noise, text=text, steps=4, strength=0.5, clean_latents=clean,
            callback=lambda step, total, latents: first.append(total))
    assert first == [2, 2]


def test_same_seed_same_noise_and_conditioning_is_checked(components):
    _, ours = components
    assert torch.equal(initial_noise((1, 2), seed=7), initial_noise((1, 2), seed=7))
    with pytest.raises(ValueError, match="exactly one of seed or generator"):
        initial_noise((1, 2))
    noise = initial_noise((1, 16, 1, 4, 6), seed=1)
    with pytest.raises(ValueError, match="text-to-video model takes no inpaint"):
        denoise(ours, FlowMatchEulerScheduler(), noise=noise, text=torch.randn(1, 5, 24), steps=1,
                conditioning=Conditioning(inpaint_latents=torch.zeros(1, 17, 1, 4, 6)))
