"""LoRA loaders (from models/loras, or from a path such as the trainer's output): the LoRA becomes ComfyUI weight
patches on a clone of the model, so ComfyUI's own LoRA handling applies it (merged while loaded, streamed in
low-VRAM mode, removed on unload) exactly as LoraLoaderModelOnly does for the official format."""

from __future__ import annotations

from pathlib import Path

from . import _comfy
from ._types import CATEGORY, MODEL

# Inputs both loaders share.
_MODEL_INPUT = (MODEL, {"tooltip": "From EasyAnimate Model Loader or another LoRA loader."})
_STRENGTH_INPUT = ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01,
                             "tooltip": "How strongly the LoRA applies; 0 turns it off."})


class EasyAnimateLoraLoader:
    DESCRIPTION = ("Adds a LoRA from ComfyUI/models/loras to the model. Chain several. Reads the official "
                   "EasyAnimate format, diffusers/PEFT files in either layout and our trainer's output, and refuses "
                   "a LoRA made for another model by name. Core LoraLoaderModelOnly reads the same files.")
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = (MODEL,)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("A clone of the model with this LoRA's patches added.",)

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
    DESCRIPTION = ("Adds a LoRA given by its file path, e.g. the output of EasyAnimate Train LoRA, to the model, "
                   "as EasyAnimate LoRA Loader does.")
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = (MODEL,)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("A clone of the model with this LoRA's patches added.",)

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
        return (_with_lora(model, _comfy.user_path(lora_path, "lora_path"), strength),)


def _with_lora(model, path: Path, strength: float):
    from ..easyanimate_core.checks import finite_number
    from ..easyanimate_core.lora import read_lora
    from ._native import add_lora, require_easyanimate

    require_easyanimate(model, "EasyAnimate LoRA Loader")
    finite_number("LoRA strength", strength, hint="0 turns the LoRA off; 1 applies it as trained.")
    lora = read_lora(path, model.model.diffusion_model)  # checked whatever the strength
    return model.clone() if strength == 0 else add_lora(model, lora, strength)


NODES = {"EasyAnimateLoraLoader": EasyAnimateLoraLoader, "EasyAnimateLoraLoaderFromPath": EasyAnimateLoraLoaderFromPath}
DISPLAY = {"EasyAnimateLoraLoader": "EasyAnimate LoRA Loader",
           "EasyAnimateLoraLoaderFromPath": "EasyAnimate LoRA Loader (from path)"}
