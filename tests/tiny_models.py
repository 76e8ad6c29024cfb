"""Tiny random EasyAnimate components for tests: diffusers reference models and checkpoint folders on disk."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from easyanimate_core import convert_transformer_state_dict

TINY_TRANSFORMER = dict(
    num_attention_heads=2,
    attention_head_dim=16,
    time_embed_dim=32,
    text_embed_dim=24,
    patch_size=2,
    out_channels=16,
    sample_width=90,
    sample_height=60,
)


def randomize_(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Give every parameter a random value (norm weights around 1) so no layer is an identity by default."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            noise = torch.randn(param.shape, generator=gen) * 0.2
            is_norm_weight = "norm" in name and name.endswith("weight") and ".linear." not in name
            param.copy_((noise + 1.0) if is_norm_weight else noise)
    return module


def diffusers_transformer(in_channels=16, add_norm_text_encoder=True, num_layers=2, mmdit_layers=2, seed=0):
    from diffusers import EasyAnimateTransformer3DModel

    torch.manual_seed(seed)
    model = EasyAnimateTransformer3DModel(
        in_channels=in_channels, num_layers=num_layers, mmdit_layers=mmdit_layers,
        add_norm_text_encoder=add_norm_text_encoder, **TINY_TRANSFORMER,
    )
    return randomize_(model, seed).eval()


def save_original_layout(diffusers_model, folder: Path) -> Path:
    """Write ``diffusers_model`` as an original-layout ``transformer/`` folder using our key converter."""
    folder.mkdir(parents=True, exist_ok=True)
    config = {k: v for k, v in dict(diffusers_model.config).items() if not k.startswith("_")}
    config.update(_class_name="EasyAnimateTransformer3DModel", ref_channels=None, clip_channels=None,
                  swa_layers=None, enable_clip_in_inpaint=False, add_ref_latent_in_control_model=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    state = convert_transformer_state_dict(diffusers_model.state_dict(), "diffusers", "original")
    save_file({k: v.contiguous() for k, v in state.items()}, folder / "diffusion_pytorch_model.safetensors")
    return folder


def transformer_inputs(model_config, batch=2, frames=2, h=8, w=12, text_len=7, seed=1):
    """Random latents, bf16-exact timesteps, text states and the extra channels the variant needs."""
    gen = torch.Generator().manual_seed(seed)
    latents = torch.randn(batch, 16, frames, h, w, generator=gen)
    timestep = torch.tensor([500.0, 250.0][:batch])
    text = torch.randn(batch, text_len, model_config.text_embed_dim, generator=gen) * 3
    extra = {}
    extra_channels = model_config.in_channels - 16
    if extra_channels == 17:
        extra["inpaint_latents"] = torch.randn(batch, 17, frames, h, w, generator=gen)
    elif extra_channels:
        extra["control_latents"] = torch.randn(batch, extra_channels, frames, h, w, generator=gen)
    return latents, timestep, text, extra
