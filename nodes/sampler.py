"""EasyAnimate Sampler: the one-node path. MODEL + conditioning + optional images, videos, trajectory or camera ->
LATENT, with the denoise loop of the reference (CFG and bf16 latents between steps) and the sampler chosen from the
model's scheduler config (by default the model family's own: the exact released flow schedule for V5.1, DDIM for
V5)."""

from __future__ import annotations

from . import _comfy
from ._types import (CATEGORY, CONDITIONING, MODEL, SEED_INPUT, VAE, mode_input_types, resize_input_types,
                     size_input_types, teacache_input_types)


# The sampler widget's default: the model family's own (samplers.DEFAULT_SAMPLER). Workflows saved with "Flow"
# (the default before) keep running V5.1 models exactly as before.
AUTO = "auto"


class EasyAnimateSampler:
    DESCRIPTION = ("Generates video latents with the reference loop and the chosen sampler (by default the "
                   "model's own: Flow, the released schedule, for V5.1; DDIM for V5). The mode follows from the "
                   "inputs connected: none (text-to-video), start/end image (image-to-video), input video "
                   "(video-to-video), control video, trajectory or camera. A model that cannot do the mode is "
                   "refused before any work, naming the model needed. KSampler with EasyAnimate Conditioning gives "
                   "the same result with ComfyUI's samplers.")
    CATEGORY = CATEGORY
    FUNCTION = "sample"
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("samples",)
    OUTPUT_TOOLTIPS = ("Video latents [1, 16, T, H/8, W/8] for EasyAnimate Decode.",)

    @classmethod
    def INPUT_TYPES(cls):
        from ..easyanimate_core.samplers import SAMPLER_NAMES

        return {
            "required": {
                "model": (MODEL, {"tooltip": "From EasyAnimate Model Loader (or a LoRA loader)."}),
                "vae": (VAE, {"tooltip": "From EasyAnimate Model Loader; encodes images and videos."}),
                "positive": (CONDITIONING, {"tooltip": "The prompt, from EasyAnimate Text Encode."}),
                "negative": (CONDITIONING, {"tooltip": "The negative prompt, from EasyAnimate Text Encode."}),
                **size_input_types(),
                "steps": ("INT", {"default": 50, "min": 1, "max": 200, "tooltip": "Denoising steps."}),
                "guidance": ("FLOAT", {"default": 6.0, "min": 1.0, "max": 20.0, "step": 0.1,
                                       "tooltip": "Classifier-free guidance scale; 1 turns the negative prompt off."}),
                "seed": SEED_INPUT,
                "denoise_strength": ("FLOAT", {"default": 1.0, "min": 0.05, "max": 1.0, "step": 0.01,
                                               "tooltip": "Video-to-video only: how much of the input video to "
                                                          "replace (1 = all). Keep 1 for the other modes."}),
                **teacache_input_types(0.0),
                "cfg_skip_ratio": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip": (
                    "Share of the last steps run without the negative prompt (one pass instead of two; the "
                    "official option). 0 = off; 0.1-0.25 saves that share of half the work.")}),
            },
            "optional": {**mode_input_types(), **resize_input_types(), "sampler": ([AUTO, *SAMPLER_NAMES], {
                "default": AUTO, "tooltip": (
                    "auto: the model's own default (Flow for V5.1, DDIM for V5). V5.1 models: Flow (the released "
                    "schedule, exact), Flow UniPC or Flow DPM++ (diffusers' multistep solvers on the same shifted "
                    "flow sigmas). V5 models: Euler, Euler A, DPM++, PNDM or DDIM (the official V5 choice), built "
                    "from the model's scheduler_config.json. A sampler of the other family is refused before any "
                    "work.")})},
        }

    def sample(self, model, vae, positive, negative, width, height, frames, steps, guidance, seed, denoise_strength,
               teacache_threshold, teacache_start_steps, teacache_end_steps, cfg_skip_ratio, **optional):
        from ..easyanimate_core.generation import (GenerationRequest, denoise_activation_bytes, require_model_for,
                                                   run_denoise)
        from ..easyanimate_core.resize import DEFAULT_RESIZE
        from ..easyanimate_core.teacache import TeaCacheOptions
        from ._native import encode_inputs, load_on_device, memory_stage, prompt_states, require_easyanimate

        require_easyanimate(model, "EasyAnimate Sampler")
        transformer = model.model.diffusion_model
        request = GenerationRequest(
            width=width, height=height, frames=frames, steps=steps, guidance=guidance, seed=seed,
            strength=denoise_strength, start_images=optional.get("start_image"), end_images=optional.get("end_image"),
            input_video=optional.get("input_video"), control_video=optional.get("control_video"),
            reference_image=optional.get("reference_image"), trajectory=optional.get("trajectory"),
            camera=optional.get("camera"), cfg_skip_ratio=cfg_skip_ratio,
            resize=optional.get("resize_mode", DEFAULT_RESIZE),
            sampler=None if optional.get("sampler", AUTO) == AUTO else optional["sampler"],  # None: the model's default
            teacache=TeaCacheOptions(teacache_threshold, teacache_start_steps, teacache_end_steps),
        ).checked()
        require_model_for(transformer.config, request)  # refused before any model moves
        model.model.easyanimate_scheduler.check_sampler(request.sampler, request.steps)
        text = prompt_states(positive, "positive", transformer.config)
        negative_text = prompt_states(negative, "negative", transformer.config) if guidance > 1.0 else None
        prepared = encode_inputs(vae, transformer.config, request)
        progress = _comfy.Progress(request.steps)

        def on_step(step, total, latents):
            progress.update(step, total, latents)
            _comfy.check_interrupt()

        with memory_stage("sampling", request):
            load_on_device(model, denoise_activation_bytes(transformer, prepared, text, negative_text), whole=False)
            with _comfy.cancel_points(transformer.repeated_blocks()):  # the blocks as loaded (compiled ones included)
                latents = run_denoise(transformer, model.model.easyanimate_scheduler, prepared, text, negative_text,
                                      callback=on_step)
        return ({"samples": model.model.process_latent_out(latents.float().cpu())},)


NODES = {"EasyAnimateSampler": EasyAnimateSampler}
DISPLAY = {"EasyAnimateSampler": "EasyAnimate Sampler"}
