"""VAE decode (LATENT -> IMAGE frames) and encode (IMAGE frames -> LATENT)."""

from __future__ import annotations

import logging

from . import _comfy
from ._types import CATEGORY, VAE

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
                "samples": ("LATENT", {"tooltip": "From EasyAnimate Sampler or EasyAnimate Encode."}),
                "tile_size": ("INT", {"default": 0, "min": 0, "max": 2048, "step": 64,
                                      "tooltip": "0 = automatic: whole frames when they fit in free memory, "
                                                 "otherwise the largest tiles that fit; a size at least as large "
                                                 "as the frame never tiles. A pixel size such as 256 or 384 "
                                                 "decodes overlapping tiles: much less memory for large videos."}),
            }
        }

    def decode(self, vae, samples, tile_size):
        from ..easyanimate_core.generation import decode_latents
        from ..easyanimate_core.vae_tiling import estimate_bytes

        latents = samples["samples"]
        if latents.ndim != 5 or latents.shape[1] != 16:
            raise ValueError(f"samples have shape {tuple(latents.shape)}: expected EasyAnimate video latents "
                             f"[B, 16, T, H/8, W/8] (from EasyAnimate Sampler, not an image model's LATENT).")
        progress = _comfy.Progress(latents.shape[0] * latents.shape[2])

        def on_chunk(done, total):
            progress.update(done, total)
            _comfy.check_interrupt()

        with vae.placement.active(vae.vae):
            if not tile_size:
                # ComfyUI may free other models' VRAM for whole frames before the planner looks at free memory
                _comfy.make_room(estimate_bytes(vae.vae.config, latents.shape, encode=False, dtype=vae.vae.dtype))
            frames = decode_latents(vae.vae, latents, tile_size=tile_size or "auto", callback=on_chunk)
        return (frames.cpu(),)


class EasyAnimateEncode:
    DESCRIPTION = "Encodes frames (4k+1 of them, sides multiples of 8) into EasyAnimate video latents."
    CATEGORY = CATEGORY
    FUNCTION = "encode"
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("samples",)
    OUTPUT_TOOLTIPS = ("Scaled latents [1, 16, T, H/8, W/8].",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "vae": (VAE, {"tooltip": "From EasyAnimate Model Loader."}),
                "frames": ("IMAGE", {"tooltip": "The video frames; extra frames beyond 4k+1 are dropped."}),
            }
        }

    def encode(self, vae, frames):
        import torch

        from ..easyanimate_core.conditioning import video_latents
        from ..easyanimate_core.video import check_frames

        count = check_frames(frames.shape[0], allow_round=True)
        height, width = frames.shape[1] // 8 * 8, frames.shape[2] // 8 * 8
        if (count, height, width) != tuple(frames.shape[:3]):
            logger.warning("EasyAnimate Encode: %d frames of %dx%d become %d frames of %dx%d (the VAE takes 4k+1 "
                           "frames with sides that are multiples of 8).", frames.shape[0], frames.shape[2],
                           frames.shape[1], count, width, height)
        with vae.placement.active(vae.vae), torch.inference_mode():
            latents = video_latents(vae.vae, frames, frames=count, width=width, height=height)
        return ({"samples": latents},)


NODES = {"EasyAnimateDecode": EasyAnimateDecode, "EasyAnimateEncode": EasyAnimateEncode}
DISPLAY = {"EasyAnimateDecode": "EasyAnimate Decode", "EasyAnimateEncode": "EasyAnimate Encode"}
