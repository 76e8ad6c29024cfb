"""VAE decode (LATENT -> IMAGE frames) and encode (IMAGE frames -> LATENT).

A LATENT holds raw VAE latents, as everywhere in ComfyUI; the model scales them by the VAE's scaling factor (its
latent format) when it samples them.
"""

from __future__ import annotations

import logging

from . import _comfy
from ._types import CATEGORY, VAE, resize_input_types

logger = logging.getLogger(__name__)


class EasyAnimateDecode:
    DESCRIPTION = ("Decodes EasyAnimate video latents into frames, in spatial tiles when whole frames do not fit in "
                   "free memory (or always, with a tile size).")
    CATEGORY = CATEGORY
    FUNCTION = "decode"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("frames",)
    OUTPUT_TOOLTIPS = ("The video as an IMAGE batch, one image per frame.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "vae": (VAE, {"tooltip": "From EasyAnimate Model Loader."}),
                "samples": ("LATENT", {"tooltip": "From EasyAnimate Sampler, KSampler or EasyAnimate Encode."}),
                "tile_size": ("INT", {"default": 0, "min": 0, "max": 2048, "step": 64,
                                      "tooltip": "0 = automatic: whole frames when they fit in free memory, "
                                                 "otherwise the largest tiles that fit; a size at least as large "
                                                 "as the frame never tiles. A pixel size such as 256 or 384 "
                                                 "decodes overlapping tiles: much less memory for large videos."}),
            }
        }

    def decode(self, vae, samples, tile_size):
        from ..easyanimate_core.generation import decode_latents
        from ..easyanimate_core.out_of_memory import Workload
        from ..easyanimate_core.vae_tiling import estimate_bytes
        from ._native import check_latent, component, load_on_device, memory_stage

        latents = check_latent(samples, "EasyAnimate Decode")
        model = component(vae)
        progress = _comfy.Progress(latents.shape[0] * latents.shape[2])

        def on_chunk(done, total):
            progress.update(done, total)
            _comfy.check_interrupt()

        # ComfyUI frees other models' VRAM for whole frames before the tile planner looks at free memory.
        whole_frames = 0 if tile_size else estimate_bytes(model.config, latents.shape, encode=False, dtype=model.dtype)
        video = Workload(latents.shape[-1] * 8, latents.shape[-2] * 8, (latents.shape[2] - 1) * 4 + 1)
        with memory_stage("VAE decode", video, vae_tiles=True):
            load_on_device(vae, whole_frames)
            with _comfy.cancel_points(model.residual_blocks()):
                frames = decode_latents(model, latents * model.scaling_factor, tile_size=tile_size or "auto",
                                        callback=on_chunk)
        return (frames.cpu(),)


class EasyAnimateEncode:
    DESCRIPTION = "Encodes frames (4k+1 of them, sides multiples of 8) into EasyAnimate video latents."
    CATEGORY = CATEGORY
    FUNCTION = "encode"
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("samples",)
    OUTPUT_TOOLTIPS = ("Latents [1, 16, T, H/8, W/8], e.g. for KSampler with denoise < 1 (video-to-video).",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "vae": (VAE, {"tooltip": "From EasyAnimate Model Loader."}),
                "frames": ("IMAGE", {"tooltip": "The video frames; extra frames beyond 4k+1 are dropped."}),
            },
            "optional": resize_input_types(
                "Frames whose sides are not multiples of 8 are brought to the multiples below: crop (the default) "
                "drops the few edge pixels beyond them, pad scales to fit and adds black borders, stretch squeezes."),
        }

    def encode(self, vae, frames, resize_mode=None):
        import torch

        from ..easyanimate_core.conditioning import encode_progress, video_latents
        from ..easyanimate_core.out_of_memory import Workload
        from ..easyanimate_core.resize import DEFAULT_RESIZE
        from ..easyanimate_core.video import check_frames
        from ._native import component, load_on_device, memory_stage

        count = check_frames(frames.shape[0], allow_round=True)
        height, width = frames.shape[1] // 8 * 8, frames.shape[2] // 8 * 8
        if (count, height, width) != tuple(frames.shape[:3]):
            logger.warning("EasyAnimate Encode: %d frames of %dx%d become %d frames of %dx%d (the VAE takes 4k+1 "
                           "frames with sides that are multiples of 8).", frames.shape[0], frames.shape[2],
                           frames.shape[1], count, width, height)
        with memory_stage("VAE encode", Workload(width, height, count), vae_tiles=True):
            load_on_device(vae)  # outside inference mode: weights moved inside it would become inference tensors
            with (torch.inference_mode(), _comfy.cancel_points(component(vae).residual_blocks()),
                  encode_progress(_comfy.Progress.reporter())):
                latents = video_latents(component(vae), frames, frames=count, width=width, height=height,
                                        resize=resize_mode or DEFAULT_RESIZE)
        return ({"samples": latents / component(vae).scaling_factor},)


NODES = {"EasyAnimateDecode": EasyAnimateDecode, "EasyAnimateEncode": EasyAnimateEncode}
DISPLAY = {"EasyAnimateDecode": "EasyAnimate Decode", "EasyAnimateEncode": "EasyAnimate Encode"}
