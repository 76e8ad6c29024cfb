"""Text encode: prompt and negative prompt -> our conditioning, encoded once and reusable."""

from __future__ import annotations

from ._types import CATEGORY, CONDITIONING, TEXT_ENCODER, PromptConditioning


class EasyAnimateTextEncode:
    DESCRIPTION = ("Encodes the prompt and the negative prompt with the model's Qwen2-VL text encoder. The result "
                   "is reused until a prompt changes, so the text encoder can stay off the GPU while sampling.")
    CATEGORY = CATEGORY
    FUNCTION = "encode"
    RETURN_TYPES = (CONDITIONING,)
    RETURN_NAMES = ("conditioning",)
    OUTPUT_TOOLTIPS = ("Prompt and negative prompt embeddings for the EasyAnimate Sampler.",)

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
        with text_encoder.placement.active(text_encoder.encoder) as encoder:
            positive = encoder.encode([prompt])
            negative = encoder.encode([negative_prompt])
        return (PromptConditioning(positive=positive, negative=negative),)


NODES = {"EasyAnimateTextEncode": EasyAnimateTextEncode}
DISPLAY = {"EasyAnimateTextEncode": "EasyAnimate Text Encode"}
