"""EasyAnimate TeaCache: step caching as a model patch, for KSampler / SamplerCustomAdvanced."""

from __future__ import annotations

from ._types import CATEGORY, MODEL, teacache_input_types


class EasyAnimateTeaCache:
    DESCRIPTION = ("TeaCache for EasyAnimate models in ComfyUI's samplers: a step whose first-block input barely "
                   "changed reuses the residual the transformer added last time (the official EasyAnimate method "
                   "and coefficients). 0.1 is the official default; higher thresholds skip more steps and drift "
                   "further from the uncached video. EasyAnimate Sampler has the same option built in.")
    CATEGORY = CATEGORY
    FUNCTION = "patch"
    RETURN_TYPES = (MODEL,)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("A clone of the model that samples with TeaCache.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": (MODEL, {"tooltip": "An EasyAnimate model."}), **teacache_input_types(0.1)}}

    def patch(self, model, teacache_threshold, teacache_start_steps, teacache_end_steps):
        from ..easyanimate_core.teacache import TeaCacheOptions
        from ._native import require_easyanimate, with_teacache

        require_easyanimate(model, "EasyAnimate TeaCache")
        return (with_teacache(model, TeaCacheOptions(teacache_threshold, teacache_start_steps, teacache_end_steps)),)


NODES = {"EasyAnimateTeaCache": EasyAnimateTeaCache}
DISPLAY = {"EasyAnimateTeaCache": "EasyAnimate TeaCache"}
