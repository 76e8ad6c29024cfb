"""EasyAnimate V5.1 in pure PyTorch: models, loaders and sampling, independent of ComfyUI."""

from .config import TransformerConfig, VAEConfig, transformer_config_from_dict, vae_config_from_dict
from .loading import (
    ModelFormatError,
    convert_transformer_key,
    convert_transformer_state_dict,
    load_scheduler,
    load_transformer,
    load_vae,
)
from .safetensors_io import CorruptWeightsError
from .samplers import SAMPLER_NAMES, SchedulerConfig
from .scheduler import FlowMatchEulerScheduler, FlowSchedule
from .transformer import EasyAnimateTransformer
from .vae import MagvitVAE

__all__ = [
    "CorruptWeightsError",
    "EasyAnimateTransformer",
    "FlowMatchEulerScheduler",
    "FlowSchedule",
    "MagvitVAE",
    "ModelFormatError",
    "SAMPLER_NAMES",
    "SchedulerConfig",
    "TransformerConfig",
    "VAEConfig",
    "convert_transformer_key",
    "convert_transformer_state_dict",
    "load_scheduler",
    "load_transformer",
    "load_vae",
    "transformer_config_from_dict",
    "vae_config_from_dict",
]
