"""LoRA loaders (from models/loras, or from a path such as the trainer's output): add a LoRA with its strength to
the model; it is applied only while the sampler runs."""

from __future__ import annotations

from pathlib import Path

from . import _comfy
from ._types import CATEGORY, MODEL

# Inputs both loaders share.
_MODEL_INPUT = (MODEL, {"tooltip": "From EasyAnimate Model Loader or another LoRA loader."})
_STRENGTH_INPUT = ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01,
                             "tooltip": "How strongly the LoRA applies; 0 turns it off."})


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
                "model": _MODEL_INPUT,
                "lora_name": (names, {"tooltip": "A LoRA trained for EasyAnimate V5.1 (the same 7B/12B size)."}),
                "strength": _STRENGTH_INPUT,
            }
        }

    def load(self, model, lora_name, strength):
        return (_with_lora(model, _comfy.lora_path(lora_name), strength),)


class EasyAnimateLoraLoaderFromPath:
    DESCRIPTION = ("Adds a LoRA given by its file path, e.g. the output of EasyAnimate Train LoRA, to the model. "
                   "Like EasyAnimate LoRA Loader, it runs beside the weights and is never merged.")
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = (MODEL,)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The same model with this LoRA added to its list.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": _MODEL_INPUT,
                "lora_path": ("STRING", {"forceInput": True, "tooltip": "Path of a .safetensors LoRA, e.g. "
                                                                        "lora_path of EasyAnimate Train LoRA."}),
                "strength": _STRENGTH_INPUT,
            }
        }

    def load(self, model, lora_path, strength):
        return (_with_lora(model, Path(lora_path.strip()).expanduser(), strength),)


def _with_lora(model, path: Path, strength: float):
    from ..easyanimate_core.lora import read_lora

    return model.with_lora(read_lora(path, model.transformer), strength)


NODES = {"EasyAnimateLoraLoader": EasyAnimateLoraLoader, "EasyAnimateLoraLoaderFromPath": EasyAnimateLoraLoaderFromPath}
DISPLAY = {"EasyAnimateLoraLoader": "EasyAnimate LoRA Loader",
           "EasyAnimateLoraLoaderFromPath": "EasyAnimate LoRA Loader (from path)"}
