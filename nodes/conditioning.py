"""EasyAnimate Conditioning: the mode's inputs -> conditioning and the LATENT to sample, for ComfyUI's samplers.

Like ComfyUI's Wan-Fun nodes, it takes positive, negative and the VAE, encodes the start/end images, control video,
trajectory or camera path into the channels the model variant takes (stored in the conditioning), and returns the
LATENT to sample: empty for every mode but video-to-video, whose input video it encodes (sample it with a denoise
below 1). KSampler or SamplerCustomAdvanced with EasyAnimate Scheduler then equals EasyAnimate Sampler.
"""

from __future__ import annotations

from ._types import (CATEGORY, CONDITIONING, MODEL, SEED_INPUT, VAE, mode_input_types, resize_input_types,
                     size_input_types)


class EasyAnimateConditioning:
    DESCRIPTION = ("Prepares an EasyAnimate generation for KSampler / SamplerCustomAdvanced: the mode follows from "
                   "the inputs connected (none: text-to-video; start/end image; input video; control video; "
                   "trajectory; camera). The model is only checked: a variant that cannot do the mode is refused, "
                   "naming the model to load.")
    CATEGORY = CATEGORY
    FUNCTION = "condition"
    RETURN_TYPES = (CONDITIONING, CONDITIONING, "LATENT")
    RETURN_NAMES = ("positive", "negative", "latent")
    OUTPUT_TOOLTIPS = ("The prompt with the mode's channels, for the sampler.",
                       "The negative prompt with the same channels.",
                       "The latent to sample: empty, or the encoded input video for video-to-video (denoise < 1).")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (MODEL, {"tooltip": "The EasyAnimate model that will sample (its variant is checked)."}),
                "positive": (CONDITIONING, {"tooltip": "From EasyAnimate Text Encode."}),
                "negative": (CONDITIONING, {"tooltip": "From EasyAnimate Text Encode."}),
                "vae": (VAE, {"tooltip": "From EasyAnimate Model Loader."}),
                **size_input_types(),
                "seed": (SEED_INPUT[0], {**SEED_INPUT[1], "control_after_generate": False, "tooltip": (
                    "Seeds the light noise InP models put on the known frames; the sampler's seed reproduces "
                    "EasyAnimate Sampler exactly.")}),
            },
            "optional": {**mode_input_types(), **resize_input_types()},
        }

    def condition(self, model, positive, negative, vae, width, height, frames, seed, **optional):
        import node_helpers
        import torch

        from ..easyanimate_core.generation import GenerationRequest, require_model_for
        from ..easyanimate_core.resize import DEFAULT_RESIZE
        from ._native import CONTROL_KEY, INPAINT_KEY, encode_inputs, require_easyanimate

        require_easyanimate(model, "EasyAnimate Conditioning")
        config = model.model.diffusion_model.config
        request = GenerationRequest(
            width=width, height=height, frames=frames, seed=seed, start_images=optional.get("start_image"),
            end_images=optional.get("end_image"), input_video=optional.get("input_video"),
            control_video=optional.get("control_video"), reference_image=optional.get("reference_image"),
            trajectory=optional.get("trajectory"), camera=optional.get("camera"),
            resize=optional.get("resize_mode", DEFAULT_RESIZE),
        ).checked()
        require_model_for(config, request)  # before the VAE moves
        prepared = encode_inputs(vae, config, request)
        values = {key: tensor for key, tensor in ((INPAINT_KEY, prepared.conditioning.inpaint_latents),
                                                  (CONTROL_KEY, prepared.conditioning.control_latents))
                  if tensor is not None}
        if prepared.clean_latents is not None:
            latent = model.model.process_latent_out(prepared.clean_latents)
        else:
            latent = torch.zeros(prepared.noise.shape)
        return (node_helpers.conditioning_set_values(positive, values),
                node_helpers.conditioning_set_values(negative, values), {"samples": latent})


NODES = {"EasyAnimateConditioning": EasyAnimateConditioning}
DISPLAY = {"EasyAnimateConditioning": "EasyAnimate Conditioning"}
