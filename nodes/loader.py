"""Model loader: one model folder -> transformer (MODEL), text encoder and VAE."""

from __future__ import annotations

from . import _comfy
from ._types import CATEGORY, MODEL, TEXT_ENCODER, VAE, ModelBundle, TextEncoderBundle, VAEBundle

PRECISIONS = ("bf16", "fp16", "fp32")


class EasyAnimateModelLoader:
    DESCRIPTION = ("Loads an EasyAnimate V5.1 model folder (original or diffusers layout) from "
                   "ComfyUI/models/EasyAnimate/. The variant (T2V, InP, Control, Control-Camera; 7B or 12B) is "
                   "detected from the files and shown in the info output.")
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = (MODEL, TEXT_ENCODER, VAE, "STRING")
    RETURN_NAMES = ("model", "text_encoder", "vae", "info")
    OUTPUT_TOOLTIPS = (
        "The MMDiT transformer with its scheduler, for the sampler.",
        "The Qwen2-VL text encoder (text tower only), for EasyAnimate Text Encode.",
        "The MagViT video VAE, for the sampler and EasyAnimate Decode/Encode.",
        "The detected variant, size and layout.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        from ..easyanimate_core.memory import MEMORY_MODES

        folders = sorted(_comfy.model_folders()) or ["(no model folder in models/EasyAnimate)"]
        return {
            "required": {
                "model": (folders, {"tooltip": "A model folder under ComfyUI/models/EasyAnimate/ (or a path from "
                                               "extra_model_paths.yaml), e.g. EasyAnimateV5.1-12b-zh-InP."}),
                "precision": (list(PRECISIONS), {"default": "bf16", "tooltip": "Weight and compute dtype. bf16 is what "
                                                                         "the models were trained in."}),
                "memory_mode": (list(MEMORY_MODES), {"default": "model_cpu_offload", "tooltip": (
                    "full: every model stays on the GPU (fastest, most VRAM). model_cpu_offload: each model "
                    "moves to the GPU only while it is used. ..._qfloat8 / ..._fp8_cast: the same with fp8 "
                    "weights (half the memory; qfloat8 is scaled and more accurate, fp8_cast matches the official "
                    "fp8 mode). sequential_cpu_offload: layer by layer (least VRAM, slowest). block_swap: the "
                    "first blocks_on_gpu transformer blocks stay, the others stream in.")}),
                "blocks_on_gpu": ("INT", {"default": -1, "min": -1, "max": 48, "tooltip": (
                    "block_swap only: transformer blocks kept on the GPU (12B: 48 blocks of 0.46 GiB in bf16; "
                    "7B: 36). -1 = as many as fit in free VRAM beside the activations of the video being sampled. "
                    "Fewer = less VRAM, slower.")}),
            }
        }

    def load(self, model, precision, memory_mode, blocks_on_gpu):
        import torch

        from ..easyanimate_core.loading import load_scheduler, load_transformer, load_vae
        from ..easyanimate_core.memory import Placement
        from ..easyanimate_core.text_encoder import load_text_encoder

        folders = _comfy.model_folders()
        if model not in folders:
            roots = ", ".join(str(r) for r in _comfy.model_roots()) or "models/EasyAnimate"
            raise FileNotFoundError(f"Model folder '{model}' not found in {roots}. Put the model folder (with "
                                    f"transformer/, vae/, text_encoder/, tokenizer/) there and refresh the page.")
        folder = folders[model]
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]
        # The offload modes park models in system RAM, even when ComfyUI itself runs --gpu-only.
        placement = Placement(memory_mode, _comfy.torch_device(), torch.device("cpu"),
                              blocks_on_gpu=None if blocks_on_gpu < 0 else blocks_on_gpu,
                              make_room=_comfy.make_room)
        device = placement.resting_device
        if device == placement.compute and device.type != "cpu":
            weights = sum(f.stat().st_size for part in ("transformer", "vae", "text_encoder")
                          for f in (folder / part).glob("*.safetensors"))
            _comfy.make_room(weights)
        # fp8 modes convert each block as it is read: the host never holds a whole model in bf16.
        transformer = load_transformer(folder, dtype=dtype, device=device, fp8=placement.fp8)
        text_encoder = load_text_encoder(folder, dtype=dtype, device=device, fp8=placement.fp8)
        bundle = ModelBundle(transformer, load_scheduler(folder), placement, str(folder))
        encoder = TextEncoderBundle(text_encoder, placement)
        vae = VAEBundle(load_vae(folder, dtype=dtype, device=device), placement)
        info = f"{transformer.config.variant_description} ({folder.name}, {precision}, {memory_mode})"
        return bundle, encoder, vae, info


NODES = {"EasyAnimateModelLoader": EasyAnimateModelLoader}
DISPLAY = {"EasyAnimateModelLoader": "EasyAnimate Model Loader"}
