"""Sampler: model + conditioning + optional images, videos, trajectory or camera -> LATENT."""

from __future__ import annotations

from . import _comfy
from ._types import CAMERA, CATEGORY, CONDITIONING, MODEL, TRAJECTORY, VAE

_OPTIONAL = {
    "start_image": ("IMAGE", "Image-to-video (InP models): the first frame(s)."),
    "end_image": ("IMAGE", "Image-to-video (InP models): the last frame(s)."),
    "input_video": ("IMAGE", "Video-to-video: the frames to transform (see denoise_strength)."),
    "control_video": ("IMAGE", "Control models: a canny, pose, depth or any control video."),
    "reference_image": ("IMAGE", "Control, trajectory and camera modes: the reference image (first frame)."),
    "trajectory": (TRAJECTORY, "Trajectory control (Control models): from EasyAnimate Trajectory."),
    "camera": (CAMERA, "Camera control (Control-Camera models): from the EasyAnimate Camera nodes."),
}


class EasyAnimateSampler:
    DESCRIPTION = ("Generates video latents. The mode follows from the inputs connected: none (text-to-video), "
                   "start/end image (image-to-video), input video (video-to-video), control video, trajectory or "
                   "camera. A model that cannot do the mode is refused before any work, naming the model needed.")
    CATEGORY = CATEGORY
    FUNCTION = "sample"
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("samples",)
    OUTPUT_TOOLTIPS = ("Video latents [1, 16, T, H/8, W/8] for EasyAnimate Decode.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (MODEL, {"tooltip": "From EasyAnimate Model Loader (or a LoRA loader)."}),
                "vae": (VAE, {"tooltip": "From EasyAnimate Model Loader; encodes images and videos."}),
                "conditioning": (CONDITIONING, {"tooltip": "From EasyAnimate Text Encode."}),
                "width": ("INT", {"default": 672, "min": 16, "max": 2048, "step": 16,
                                  "tooltip": "Video width in pixels, a multiple of 16."}),
                "height": ("INT", {"default": 384, "min": 16, "max": 2048, "step": 16,
                                   "tooltip": "Video height in pixels, a multiple of 16."}),
                "frames": ("INT", {"default": 49, "min": 1, "max": 161, "step": 4,
                                   "tooltip": "Number of frames, 4k+1 (the models were trained on up to 49)."}),
                "steps": ("INT", {"default": 50, "min": 1, "max": 200, "tooltip": "Denoising steps."}),
                "guidance": ("FLOAT", {"default": 6.0, "min": 1.0, "max": 20.0, "step": 0.1,
                                       "tooltip": "Classifier-free guidance scale; 1 turns the negative prompt off."}),
                "seed": ("INT", {"default": 43, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True,
                                 "tooltip": "Noise seed; the same seed gives the same video on every device."}),
                "denoise_strength": ("FLOAT", {"default": 1.0, "min": 0.05, "max": 1.0, "step": 0.01,
                                               "tooltip": "Video-to-video only: how much of the input video to "
                                                          "replace (1 = all). Keep 1 for the other modes."}),
            },
            "optional": {name: (kind, {"tooltip": tip}) for name, (kind, tip) in _OPTIONAL.items()},
        }

    def sample(self, model, vae, conditioning, width, height, frames, steps, guidance, seed, denoise_strength,
               **optional):
        from ..easyanimate_core.conditioning import require_variant
        from ..easyanimate_core.generation import (GenerationRequest, denoise_activation_bytes, prepare_inputs,
                                                   run_denoise)
        from ..easyanimate_core.lora import applied

        request = GenerationRequest(
            width=width, height=height, frames=frames, steps=steps, guidance=guidance, seed=seed,
            strength=denoise_strength, start_images=optional.get("start_image"), end_images=optional.get("end_image"),
            input_video=optional.get("input_video"), control_video=optional.get("control_video"),
            reference_image=optional.get("reference_image"), trajectory=optional.get("trajectory"),
            camera=optional.get("camera"),
        ).checked()
        require_variant(model.transformer.config, request.mode)  # refused before any model moves
        with vae.placement.active(vae.vae):
            prepared = prepare_inputs(model.transformer.config, vae.vae, request)
        progress = _comfy.Progress(request.steps)

        def on_step(step, total, latents):
            progress.update(step, total, latents)
            _comfy.check_interrupt()

        negative = conditioning.negative if guidance > 1.0 else None
        working = denoise_activation_bytes(model.transformer, prepared, conditioning.positive, negative)
        with model.placement.active(model.transformer, working) as transformer, applied(transformer, model.loras):
            latents = run_denoise(transformer, model.scheduler, prepared, conditioning.positive, negative,
                                  callback=on_step)
        return ({"samples": latents.float().cpu()},)


NODES = {"EasyAnimateSampler": EasyAnimateSampler}
DISPLAY = {"EasyAnimateSampler": "EasyAnimate Sampler"}
