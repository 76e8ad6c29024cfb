"""Text encode: prompt and negative prompt -> ComfyUI CONDITIONING, encoded once and reusable."""

from __future__ import annotations

from . import _comfy
from ._types import CATEGORY, CONDITIONING, TEXT_ENCODER


class EasyAnimateTextEncode:
    DESCRIPTION = ("Encodes the prompt and the negative prompt with the model's Qwen2-VL text encoder into ComfyUI "
                   "conditioning. ComfyUI reuses the result until a prompt changes and evicts the text encoder "
                   "from the GPU when the sampler needs the room.")
    CATEGORY = CATEGORY
    FUNCTION = "encode"
    RETURN_TYPES = (CONDITIONING, CONDITIONING)
    RETURN_NAMES = ("positive", "negative")
    OUTPUT_TOOLTIPS = ("The prompt's embeddings [1, 256, hidden], for EasyAnimate Sampler, EasyAnimate "
                       "Conditioning or KSampler.",
                       "The negative prompt's embeddings (used when guidance / cfg > 1).")

    @classmethod
    def INPUT_TYPES(cls):
        from ..easyanimate_core.generation import DEFAULT_NEGATIVE_PROMPT

        return {
            "required": {
                "text_encoder": (TEXT_ENCODER, {"tooltip": "From EasyAnimate Model Loader."}),
                "prompt": ("STRING", {"multiline": True, "default": "",
                                      "tooltip": "What the video shows. Chinese and English both work."}),
                "negative_prompt": ("STRING", {"multiline": True, "default": DEFAULT_NEGATIVE_PROMPT,
                                               "tooltip": "What to avoid (used when guidance > 1). The default is "
                                                          "the official one: distorted bodies, captions, comics, "
                                                          "static frames, ugliness, glitches."}),
            }
        }

    def encode(self, text_encoder, prompt, negative_prompt):
        import torch

        from ._native import component, load_on_device, memory_stage

        with memory_stage("text encoding"):
            load_on_device(text_encoder)  # outside inference mode: moved weights must stay normal tensors
            with torch.inference_mode(), _comfy.cancel_points(component(text_encoder)):
                positive = component(text_encoder).encode([prompt])
                negative = component(text_encoder).encode([negative_prompt])
        # The DiT attends to every one of the 256 tokens, pads included: no attention mask travels with them.
        return [[positive.states.cpu(), {}]], [[negative.states.cpu(), {}]]


NODES = {"EasyAnimateTextEncode": EasyAnimateTextEncode}
DISPLAY = {"EasyAnimateTextEncode": "EasyAnimate Text Encode"}
