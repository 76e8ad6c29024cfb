"""Model loader: one model folder -> transformer (ComfyUI MODEL), text encoder and VAE, all ModelPatchers."""

from __future__ import annotations

import logging

from . import _comfy
from ._types import CATEGORY, MODEL, TEXT_ENCODER, VAE

logger = logging.getLogger(__name__)

PRECISIONS = ("bf16", "fp16", "fp32")


class EasyAnimateModelLoader:
    DESCRIPTION = ("Loads an EasyAnimate V5.1 or V5 model folder (original or diffusers layout) from "
                   "ComfyUI/models/EasyAnimate/. The family, variant (T2V, InP, Control, Control-Camera; 7B or 12B) "
                   "is detected from the files and shown in the info output. The model is a native ComfyUI MODEL "
                   "with the model sampling of its scheduler config (flow for V5.1; the DDPM betas and prediction "
                   "type of V5): ComfyUI's memory management places it, and KSampler, LoraLoaderModelOnly, "
                   "TorchCompileModel and EasyCache work on it.")
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = (MODEL, TEXT_ENCODER, VAE, "STRING")
    RETURN_NAMES = ("model", "text_encoder", "vae", "info")
    OUTPUT_TOOLTIPS = (
        "The MMDiT transformer as a ComfyUI MODEL, for EasyAnimate Sampler or KSampler / SamplerCustomAdvanced.",
        "The text encoder (V5.1: Qwen2-VL's text tower; V5: Bert and mT5), for EasyAnimate Text Encode.",
        "The MagViT video VAE, for the sampler, EasyAnimate Conditioning and EasyAnimate Decode/Encode.",
        "The detected variant, size and layout.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        from ..easyanimate_core.memory import MEMORY_MODES
        from ._native import WEIGHT_DTYPES

        folders = sorted(_comfy.model_folders()) or ["(no model folder in models/EasyAnimate)"]
        return {
            "required": {
                "model": (folders, {"tooltip": "A model folder under ComfyUI/models/EasyAnimate/ (or a path from "
                                               "extra_model_paths.yaml), e.g. EasyAnimateV5.1-12b-zh-InP or "
                                               "EasyAnimateV5-12b-zh."}),
                "precision": (list(PRECISIONS), {"default": "bf16", "tooltip": "Compute dtype, and the storage of "
                                                                         "every weight fp8 does not take. bf16 is "
                                                                         "what the models were trained in."}),
                "memory_mode": (list(MEMORY_MODES), {"default": "model_cpu_offload", "tooltip": (
                    "Inside ComfyUI its memory management places the models: full and model_cpu_offload both "
                    "leave it to ComfyUI. ..._qfloat8 / ..._fp8_cast store the transformer's large linears in "
                    "fp8_e4m3fn (unless weight_dtype says otherwise) and the text encoder in fp8 (qfloat8 scaled, "
                    "fp8_cast the official plain cast). sequential_cpu_offload keeps no transformer weight on the "
                    "GPU: every layer streams in when it runs (least VRAM, slowest). block_swap keeps "
                    "blocks_on_gpu blocks' worth of weights and streams the rest.")}),
                "blocks_on_gpu": ("INT", {"default": -1, "min": -1, "max": 48, "tooltip": (
                    "block_swap only: the transformer weights kept on the GPU, in blocks (12B: 48 blocks of 0.46 "
                    "GiB in bf16; 7B: 36). -1 = as many as ComfyUI finds room for beside the activations. "
                    "Fewer = less VRAM, slower.")}),
                "weight_dtype": (list(WEIGHT_DTYPES), {"default": "default", "tooltip": (
                    "Storage of the transformer's large linears, as ComfyUI's Load Diffusion Model offers it: "
                    "default = precision (or fp8_e4m3fn in the fp8 memory modes); fp8_e4m3fn_fast also multiplies "
                    "in fp8 on GPUs that can (RTX 40xx, H100). Norms, modulation and the in/out projections stay "
                    "in precision.")}),
            },
        }

    def load(self, model, precision, memory_mode, blocks_on_gpu, weight_dtype):
        import torch

        from ..easyanimate_core.loading import inspect_model, load_vae
        from ..easyanimate_core.memory import FP8_MODES, MEMORY_MODES
        from ..easyanimate_core.text_encoder import load_text_encoder
        from . import _native

        folders = _comfy.model_folders()
        if model not in folders:
            roots = ", ".join(str(r) for r in _comfy.model_roots()) or "models/EasyAnimate"
            raise FileNotFoundError(f"Model folder '{model}' not found in {roots}. Put the model folder (with "
                                    f"transformer/, vae/, text_encoder/, tokenizer/) there and refresh the page.")
        if memory_mode not in MEMORY_MODES:
            raise ValueError(f"memory_mode {memory_mode!r}: expected one of {MEMORY_MODES}.")
        folder = folders[model]
        inspect_model(folder)  # every config checked before a weight is read
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]
        offload = _native.offload_device()
        vae_dtype = dtype
        if _native.compute_device().type == "cpu" and dtype != torch.float32:
            # PyTorch's CPU convolutions in bf16/fp16 are tens of times slower than in fp32 (35x measured for the
            # VAE); the VAE is small (0.5 GB in bf16), so on a CPU-only ComfyUI it runs in fp32.
            logger.warning("EasyAnimate Model Loader: ComfyUI computes on the CPU, where the VAE in %s is ~35x "
                           "slower than in fp32: the VAE is loaded in fp32 (the transformer and the text encoder "
                           "stay in %s).", precision, precision)
            vae_dtype = torch.float32
        vae = load_vae(folder, dtype=vae_dtype, device=offload)
        transformer = _native.load_model(folder, dtype, weight_dtype, memory_mode, blocks_on_gpu, vae.scaling_factor)
        text_encoder = load_text_encoder(folder, dtype=dtype, device=offload, fp8=FP8_MODES.get(memory_mode))
        config = transformer.model.diffusion_model.config
        info = f"{config.variant_description} ({folder.name}, {precision}, {memory_mode}, weights {weight_dtype})"
        if vae_dtype != dtype:
            info += ", VAE in fp32 on the CPU"
        return (transformer, _native.component_patcher(text_encoder), _native.component_patcher(vae), info)


NODES = {"EasyAnimateModelLoader": EasyAnimateModelLoader}
DISPLAY = {"EasyAnimateModelLoader": "EasyAnimate Model Loader"}
