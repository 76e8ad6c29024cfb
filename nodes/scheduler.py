"""EasyAnimate Scheduler: the released sigma schedule as ComfyUI SIGMAS, for SamplerCustomAdvanced."""

from __future__ import annotations

from ._types import CATEGORY, MODEL


class EasyAnimateScheduler:
    DESCRIPTION = ("The sigmas EasyAnimate samples with: steps evenly spaced in flow time from 1 to 1/1000, shifted "
                   "by the model's shift (e, as the released pipelines run it, unless ModelSamplingSD3 changed it). "
                   "With SamplerCustomAdvanced and euler this equals EasyAnimate Sampler.")
    CATEGORY = CATEGORY
    FUNCTION = "schedule"
    RETURN_TYPES = ("SIGMAS",)
    RETURN_NAMES = ("sigmas",)
    OUTPUT_TOOLTIPS = ("steps + 1 sigmas ending in 0 (fewer with denoise < 1).",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (MODEL, {"tooltip": "An EasyAnimate model (its model sampling gives the shift)."}),
                "steps": ("INT", {"default": 50, "min": 1, "max": 200, "tooltip": "Denoising steps."}),
                "denoise": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip": (
                    "Below 1 (video-to-video): the last int(steps x denoise) steps of the same schedule, as "
                    "EasyAnimate Sampler's denoise_strength.")}),
            }
        }

    def schedule(self, model, steps, denoise):
        import torch

        from ..easyanimate_core.scheduler import FlowMatchEulerScheduler
        from ._native import require_easyanimate

        require_easyanimate(model, "EasyAnimate Scheduler")
        scheduler = model.model.easyanimate_scheduler
        if scheduler.family != "flow":
            raise ValueError(f"EasyAnimate Scheduler gives the flow sigmas of EasyAnimate V5.1; this model has "
                             f"{scheduler.description}. Use ComfyUI's own schedulers on it: BasicScheduler (or "
                             f"KSampler's scheduler) with normal, ddim_uniform, karras or simple.")
        if denoise <= 0.0:
            return (torch.zeros(0),)
        shift = float(model.get_model_object("model_sampling").shift)
        flow = FlowMatchEulerScheduler(shift=shift, use_dynamic_shifting=False)
        return (flow.schedule(steps, strength=denoise).sigmas.cpu(),)


NODES = {"EasyAnimateScheduler": EasyAnimateScheduler}
DISPLAY = {"EasyAnimateScheduler": "EasyAnimate Scheduler"}
