"""Text encode: prompt and negative prompt -> ComfyUI CONDITIONING, encoded once and reusable."""

from __future__ import annotations

from . import _comfy
from ._types import CATEGORY, CONDITIONING, TEXT_ENCODER


class EasyAnimateTextEncode:
    DESCRIPTION = ("Encodes the prompt and the negative prompt with the model's text encoder (Qwen2-VL for V5.1; "
                   "Bert and mT5 for V5) into ComfyUI conditioning. ComfyUI reuses the result until a prompt "
                   "changes and evicts the text encoder from the GPU when the sampler needs the room.")
    CATEGORY = CATEGORY
    FUNCTION = "encode"
    RETURN_TYPES = (CONDITIONING, CONDITIONING)
    RETURN_NAMES = ("positive", "negative")
    OUTPUT_TOOLTIPS = ("The prompt's embeddings [1, L, hidden] (V5: the Bert states, with the mT5 states beside "
                       "them), for EasyAnimate Sampler, EasyAnimate Conditioning or KSampler.",
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
            with torch.inference_mode(), _comfy.cancel_points(component(text_encoder).repeated_blocks()):
                positive = component(text_encoder).encode([prompt])
                negative = component(text_encoder).encode([negative_prompt])
        # The DiT attends to every token, pads included: no attention mask travels with them. A V5 prompt's mT5
        # states [1, L5, d_model] ride in the entry's dict beside its Bert states [1, L, hidden].
        return [_entry(positive)], [_entry(negative)]


def _entry(prompt) -> list:
    """One CONDITIONING entry [states, extras] of a prompt's embeddings."""
    from ._native import TEXT_T5_KEY

    return [prompt.states.cpu(), {} if prompt.states_t5 is None else {TEXT_T5_KEY: prompt.states_t5.cpu()}]


NODES = {"EasyAnimateTextEncode": EasyAnimateTextEncode}
DISPLAY = {"EasyAnimateTextEncode": "EasyAnimate Text Encode"}
