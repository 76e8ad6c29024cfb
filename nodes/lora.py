"""LoRA loader: adds a LoRA (with its strength) to the model; applied only while the sampler runs."""

from __future__ import annotations

from . import _comfy
from ._types import CATEGORY, MODEL


class EasyAnimateLoraLoader:
    DESCRIPTION = ("Adds a LoRA from ComfyUI/models/loras to the model. Chain several. The LoRA runs beside the "
                   "weights while sampling and is never merged, so an interrupt or an error cannot leave it in the "
                   "cached model. Reads the official EasyAnimate format, diffusers/PEFT files and our trainer's "
                   "output.")
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = (MODEL,)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The same model with this LoRA added to its list.",)

    @classmethod
    def INPUT_TYPES(cls):
        names = _comfy.lora_names() or ["(no LoRA in models/loras)"]
        return {
            "required": {
                "model": (MODEL, {"tooltip": "From EasyAnimate Model Loader or another LoRA loader."}),
                "lora_name": (names, {"tooltip": "A LoRA trained for EasyAnimate V5.1 (the same 7B/12B size)."}),
                "strength": ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01,
                                       "tooltip": "How strongly the LoRA applies; 0 turns it off."}),
            }
        }

    def load(self, model, lora_name, strength):
        from ..easyanimate_core.lora import read_lora

        return (model.with_lora(read_lora(_comfy.lora_path(lora_name), model.transformer), strength),)


NODES = {"EasyAnimateLoraLoader": EasyAnimateLoraLoader}
DISPLAY = {"EasyAnimateLoraLoader": "EasyAnimate LoRA Loader"}
