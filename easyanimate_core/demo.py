"""A tiny EasyAnimate model with random weights, written as a real model folder (original layout).

It lets every command, workflow and test run end to end through the real loading code on a machine without the
released weights. Its output is noise-like by construction: it proves the plumbing, not the picture.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from .config import TransformerConfig, VAEConfig
from .transformer import EasyAnimateTransformer
from .vae import MagvitVAE

DEMO_VARIANT_CHANNELS = {"t2v": 16, "inp": 33, "control": 48, "camera": 38}

DEMO_VAE = VAEConfig(block_out_channels=(16, 32, 32, 32), norm_num_groups=8, layers_per_block=1)

SCHEDULER_CONFIG = {
    "_class_name": "FlowMatchEulerDiscreteScheduler",
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
}


def demo_transformer_config(variant: str = "t2v") -> TransformerConfig:
    if variant not in DEMO_VARIANT_CHANNELS:
        raise ValueError(f"demo variant {variant!r}: expected one of {sorted(DEMO_VARIANT_CHANNELS)}")
    return TransformerConfig(
        in_channels=DEMO_VARIANT_CHANNELS[variant], num_attention_heads=4, attention_head_dim=16, num_layers=2,
        mmdit_layers=2, time_embed_dim=64, text_embed_dim=64, add_norm_text_encoder=True,
    ).validate("the demo model")


def _write_component(folder: Path, class_name: str, config, module: torch.nn.Module, extra_config: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    fields = {"_class_name": class_name, **dataclasses.asdict(config), **extra_config}
    (folder / "config.json").write_text(json.dumps(fields, indent=2), encoding="utf-8")
    state = {k: v.detach().contiguous() for k, v in module.state_dict().items()}
    save_file(state, folder / "diffusion_pytorch_model.safetensors")


def write_demo_model(folder: str | Path, variant: str = "t2v", seed: int = 0) -> Path:
    """Write ``transformer/``, ``vae/`` and ``scheduler/`` of a tiny random model under ``folder``."""
    folder = Path(folder)
    config = demo_transformer_config(variant)
    torch.manual_seed(seed)
    transformer = EasyAnimateTransformer(config)
    _write_component(folder / "transformer", "EasyAnimateTransformer3DModel", config, transformer,
                     {"enable_text_attention_mask": True, "resize_inpaint_mask_directly": True})
    _write_component(folder / "vae", "AutoencoderKLMagvit", DEMO_VAE, MagvitVAE(DEMO_VAE),
                     {"cache_mag_vae": True, "mid_block_use_attention": False})
    (folder / "scheduler").mkdir(parents=True, exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(SCHEDULER_CONFIG, indent=2))
    return folder
