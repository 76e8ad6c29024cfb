"""The objects our nodes pass to each other, and their ComfyUI type names. Frozen: a node never changes its inputs."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

MODEL = "EASYANIMATE_MODEL"
TEXT_ENCODER = "EASYANIMATE_TEXT_ENCODER"
VAE = "EASYANIMATE_VAE"
CONDITIONING = "EASYANIMATE_CONDITIONING"
CAMERA = "EASYANIMATE_CAMERA"
TRAJECTORY = "EASYANIMATE_TRAJECTORY"
CATEGORY = "EasyAnimate"


@dataclass(frozen=True)
class ModelBundle:
    """The transformer, its scheduler and placement, and the LoRAs to apply while sampling."""

    transformer: Any
    scheduler: Any
    placement: Any
    folder: str
    loras: tuple = field(default=())  # ((LoraFile, strength), ...)

    def with_lora(self, lora, strength: float) -> "ModelBundle":
        return replace(self, loras=self.loras + ((lora, strength),))


@dataclass(frozen=True)
class TextEncoderBundle:
    encoder: Any
    placement: Any


@dataclass(frozen=True)
class VAEBundle:
    vae: Any
    placement: Any


@dataclass(frozen=True)
class PromptConditioning:
    """Encoded prompt and negative prompt (``PromptEmbeddings``); the negative is None without guidance."""

    positive: Any
    negative: Any
