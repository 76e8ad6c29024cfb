"""EasyAnimate Compile: regional torch.compile as a model patch (each transformer block compiled once)."""

from __future__ import annotations

from ._types import CATEGORY, MODEL

MODES = ("default", "max-autotune-no-cudagraphs", "reduce-overhead")


class EasyAnimateCompile:
    DESCRIPTION = ("Compiles each transformer block with torch.compile while the model is loaded (regional "
                   "compilation: one graph serves every block, so compiling takes seconds, not minutes). Works with "
                   "EasyAnimate Sampler and ComfyUI's samplers; a new prompt, seed or LoRA strength reuses the "
                   "graph, a new video size compiles again. Core TorchCompileModel compiles the whole model instead.")
    CATEGORY = CATEGORY
    FUNCTION = "patch"
    RETURN_TYPES = (MODEL,)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("A clone of the model whose blocks run compiled.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (MODEL, {"tooltip": "An EasyAnimate model."}),
                "mode": (list(MODES), {"default": "default", "tooltip": (
                    "torch.compile's mode: default; max-autotune-no-cudagraphs searches faster kernels (long "
                    "first compile); reduce-overhead adds CUDA graphs (fixed memory addresses: no weight "
                    "streaming).")}),
            }
        }

    def patch(self, model, mode):
        from ..easyanimate_core.regional_compile import compile_block
        from ._native import require_easyanimate

        require_easyanimate(model, "EasyAnimate Compile")
        patched = model.clone()
        transformer = model.get_model_object("diffusion_model")
        for index, block in enumerate(transformer.repeated_blocks()):
            # ComfyUI puts object patches in place while the model is loaded and takes them out when it unloads.
            patched.add_object_patch(f"diffusion_model.{transformer.REPEATED_BLOCKS}.{index}",
                                     compile_block(block, mode=None if mode == "default" else mode))
        return (patched,)


NODES = {"EasyAnimateCompile": EasyAnimateCompile}
DISPLAY = {"EasyAnimateCompile": "EasyAnimate Compile"}
