"""EasyAnimate as a native ComfyUI model: the ModelPatcher / model_base glue (DESIGN.md section 6).

The transformer is our core's, built through a namespace of ``comfy.ops`` layers and ComfyUI's optimized attention,
inside a ``comfy.model_base.BaseModel`` with a 16-channel 3D latent format (the VAE's scaling factor) and the model
sampling of the folder's scheduler config: for V5.1 flow sampling equal to the released schedule (shift e,
multiplier 1000), for V5 ComfyUI's discrete DDPM sampling (epsilon or v) with the file's betas. A ``ModelPatcher``
holds it, so ComfyUI counts, moves and evicts its weights, applies LoRAs as weight patches, and its samplers,
TorchCompileModel, EasyCache and ModelSamplingSD3 work on it. The text encoder and the VAE are ModelPatchers too.

The variant channels reach the model through the conditioning: EasyAnimate Conditioning stores the InP or control
latents (model space, batch 1) under :data:`INPAINT_KEY` / :data:`CONTROL_KEY` in each conditioning entry, and
:meth:`EasyAnimateModel.extra_conds` hands them to the transformer. A V5 prompt's mT5 states travel the same way,
under :data:`TEXT_T5_KEY`, set by EasyAnimate Text Encode.

Every function imports ComfyUI inside: this module is only used when the nodes run in ComfyUI (or its tests).
"""

from __future__ import annotations

import functools
import logging
import math
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

INPAINT_KEY = "easyanimate_inpaint_latents"
CONTROL_KEY = "easyanimate_control_latents"
# A V5 prompt's mT5 states [1, L5, d_model] beside its Bert states (the conditioning's tensor), set by EasyAnimate
# Text Encode; ``extra_conds`` hands them to the transformer as ``text_states_t5``.
TEXT_T5_KEY = "easyanimate_text_t5"
TEACACHE_KEY = "easyanimate_teacache"  # transformer_options: the TeaCacheOptions, then the run's TeaCache
WEIGHT_DTYPES = ("default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2")  # as ComfyUI's UNETLoader offers them
_FP8 = {"fp8_e4m3fn": torch.float8_e4m3fn, "fp8_e4m3fn_fast": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}


def comfy_layer_ops(weight_dtype: torch.dtype | None, compute_dtype: torch.dtype, load_device, fast_fp8: bool):
    """Our layer namespace made of ComfyUI's layers: its weight casting, LoRA patches and low-VRAM streaming
    apply to every layer, and attention goes through ComfyUI's optimized attention (its --use-*-attention flags)."""
    import comfy.ops

    from ..easyanimate_core import ops

    linear_ops = comfy.ops.pick_operations(weight_dtype or compute_dtype, compute_dtype, load_device=load_device,
                                           fp8_optimizations=fast_fp8)
    # The fp32 norms get fp32 inputs beside bf16 weights: only ComfyUI's casting layers compute those.
    cast = comfy.ops.manual_cast
    return ops.LayerOps(Linear=linear_ops.Linear, Conv2d=linear_ops.Conv2d, Conv3d=linear_ops.Conv3d,
                        LayerNorm=cast.LayerNorm, GroupNorm=cast.GroupNorm, RMSNorm=_comfy_rms_norm(),
                        attention=_comfy_attention)


def _comfy_attention(q, k, v):
    """ComfyUI's optimized attention, looked up per call (its flags pick SDPA, sage, flash...):
    [B, heads, N, head_dim] x 3 -> [B, N, heads * head_dim] -> [B, N, heads, head_dim]."""
    import comfy.ldm.modules.attention as comfy_attention

    out = comfy_attention.optimized_attention(q, k, v, heads=q.shape[1], skip_reshape=True)
    return out.unflatten(2, (q.shape[1], -1))


@functools.cache
def _comfy_rms_norm():
    """Our RMSNorm with its weight fetched through ComfyUI's cast (device, dtype, weight patches, low-VRAM)."""
    import comfy.ops

    from ..easyanimate_core import ops

    class RMSNorm(ops.RMSNorm, comfy.ops.CastWeightBiasOp):
        comfy_cast_weights = True
        bias = None

        def cast_weight(self, x: torch.Tensor) -> torch.Tensor:
            weight, _ = comfy.ops.cast_bias_weight(self, x)
            return weight

    return RMSNorm


@functools.cache
def _native_transformer_class():
    import comfy.patcher_extension as extension

    from ..easyanimate_core.transformer import EasyAnimateTransformer

    class NativeEasyAnimateTransformer(EasyAnimateTransformer):
        """The core transformer with the call ComfyUI's BaseModel makes, running ComfyUI's diffusion-model wrappers
        (EasyCache and friends) around the core forward."""

        load_device = None  # where it computes, whatever part of its weights ComfyUI keeps on the host

        @property
        def device(self) -> torch.device:
            return self.load_device if self.load_device is not None else super().device

        def forward(self, x, timestep, context, control=None, transformer_options=None, inpaint_latents=None,
                    control_latents=None, step_cache=None, text_states_t5=None, **kwargs):
            transformer_options = transformer_options if transformer_options is not None else {}
            cache_key = None
            if step_cache is None:  # in ComfyUI's samplers: the run's cache of EasyAnimate TeaCache, if patched
                step_cache = transformer_options.get(TEACACHE_KEY)
                cache_key = tuple(transformer_options.get("cond_or_uncond", ())) or None
            wrappers = extension.get_all_wrappers(extension.WrappersMP.DIFFUSION_MODEL, transformer_options)
            return extension.WrapperExecutor.new_class_executor(self._forward, self, wrappers).execute(
                x, timestep, context, inpaint_latents, control_latents, step_cache, cache_key, transformer_options,
                text_states_t5)

        def _forward(self, x, timestep, context, inpaint_latents, control_latents, step_cache, cache_key,
                     transformer_options, text_states_t5=None):
            return EasyAnimateTransformer.forward(self, x, timestep, context, text_states_t5=text_states_t5,
                                                  inpaint_latents=inpaint_latents, control_latents=control_latents,
                                                  step_cache=step_cache, cache_key=cache_key)

    return NativeEasyAnimateTransformer


@functools.cache
def _model_classes():
    """(latent format, model config, BaseModel subclass, ModelPatcher subclass), built once per process."""
    import comfy.conds
    import comfy.latent_formats
    import comfy.model_base
    import comfy.model_patcher
    import comfy.model_sampling
    import comfy.supported_models_base

    class EasyAnimateLatentFormat(comfy.latent_formats.LatentFormat):
        latent_channels = 16
        latent_dimensions = 3

        def __init__(self, scale_factor: float = 1.0):
            self.scale_factor = scale_factor

    class EasyAnimateConfig(comfy.supported_models_base.BASE):
        unet_config = {"disable_unet_model_creation": True}
        unet_extra_config = {}
        # The released schedule: dynamic shifting with mu = 1, i.e. a constant shift of e, timesteps = 1000 sigma.
        latent_format = EasyAnimateLatentFormat

    class EasyAnimateModel(comfy.model_base.BaseModel):
        """``diffusion_model`` is our transformer; ``easyanimate_scheduler`` the model folder's scheduler config
        (``samplers.SchedulerConfig``: the samplers EasyAnimate Sampler may use); ``weight_budget`` bytes of weights
        ComfyUI may keep on the device (None: as many as ComfyUI decides), for the sequential and block-swap memory
        modes."""

        def __init__(self, model_config, transformer, scheduler, weight_budget, device=None):
            super().__init__(model_config, model_type(scheduler), device=device)
            self.diffusion_model = transformer
            self.easyanimate_scheduler = scheduler
            self.weight_budget = weight_budget
            self.memory_usage_factor_conds = ()

        def extra_conds(self, **kwargs):
            out = super().extra_conds(**kwargs)
            config = self.diffusion_model.config
            if config.family == "V5" and isinstance(self.model_sampling, comfy.model_sampling.CONST):
                raise ValueError(f"the {config.variant_description} is a DDPM-family model, but its model sampling "
                                 f"was switched to flow matching (ModelSamplingSD3 or another flow patch): remove "
                                 f"that node for V5; it suits EasyAnimate V5.1 models only.")
            noise = kwargs["noise"]  # [B, 16, T, h, w]
            check_latent({"samples": noise}, f"sampling the {config.variant_description}")
            inpaint, control = kwargs.get(INPAINT_KEY), kwargs.get(CONTROL_KEY)
            check_conditioning(config, inpaint is not None, control is not None)
            if inpaint is None and config.variant == "inp":  # text-to-video through an InP model
                inpaint = noise.new_zeros((1, config.in_channels - config.out_channels, *noise.shape[2:]))
            if inpaint is not None:
                out["inpaint_latents"] = comfy.conds.CONDNoiseShape(inpaint)
            if control is not None:
                out["control_latents"] = comfy.conds.CONDNoiseShape(control)
            states_t5 = check_text_t5(kwargs.get(TEXT_T5_KEY), config, "the conditioning")
            if states_t5 is not None:  # [1, L5, d_model]; batched beside c_crossattn (equal lengths concatenate)
                out["text_states_t5"] = comfy.conds.CONDRegular(states_t5)
            return out

        def extra_conds_shapes(self, **kwargs):
            shapes = {}
            for key, value in (("c_crossattn", kwargs.get("cross_attn")), ("text_states_t5", kwargs.get(TEXT_T5_KEY))):
                if isinstance(value, torch.Tensor):
                    shapes[key] = list(value.shape)
            return shapes

        def memory_required(self, input_shape, cond_shapes=None):
            # Our counted activation peak of one forward with the prompts' text tokens (Bert + mT5 for V5); 256
            # per text stream when ComfyUI gives no shapes (the length V5.1 and the released V5 tokenizers use).
            tokens = 0
            v5 = self.diffusion_model.config.family == "V5"
            streams = ("c_crossattn", "text_states_t5") if v5 else ("c_crossattn",)
            for key in streams:
                lengths = [shape[1] for shape in (cond_shapes or {}).get(key, ()) if len(shape) > 1]
                tokens += max(lengths, default=256)
            return self.diffusion_model.activation_bytes(tuple(input_shape), tokens)

    class EasyAnimatePatcher(comfy.model_patcher.ModelPatcher):
        """A ModelPatcher that keeps at most the model's ``weight_budget`` bytes of weights on the device; the rest
        stream in layer by layer through ComfyUI's low-VRAM casting (``--lowvram`` for this one model)."""

        def load(self, device_to=None, lowvram_model_memory=0, force_patch_weights=False, full_load=False):
            budget = getattr(self.model, "weight_budget", None)
            if budget is not None:
                lowvram_model_memory = budget if full_load or not lowvram_model_memory else min(
                    lowvram_model_memory, budget)
                full_load = False
            return super().load(device_to, lowvram_model_memory=lowvram_model_memory,
                                force_patch_weights=force_patch_weights, full_load=full_load)

    return EasyAnimateLatentFormat, EasyAnimateConfig, EasyAnimateModel, EasyAnimatePatcher


# diffusers' beta_schedule names -> ComfyUI's (comfy make_beta_schedule): diffusers' "linear" spaces the betas
# evenly (ComfyUI's "sqrt_linear"), its "scaled_linear" their square roots (ComfyUI's "linear", SD 1.x's schedule).
_BETA_SCHEDULES = {"linear": "sqrt_linear", "scaled_linear": "linear", "squaredcos_cap_v2": "squaredcos_cap_v2"}


def model_type(scheduler):
    """ComfyUI's model type for a model folder's scheduler config (``samplers.SchedulerConfig``): flow for V5.1,
    epsilon or v prediction (discrete DDPM sigmas) for V5, as its ``prediction_type`` says."""
    import comfy.model_base

    if scheduler.family == "flow":
        return comfy.model_base.ModelType.FLOW
    if scheduler.raw.get("prediction_type", "epsilon") == "v_prediction":
        return comfy.model_base.ModelType.V_PREDICTION
    return comfy.model_base.ModelType.EPS


def sampling_settings(scheduler) -> dict:
    """ComfyUI's ``sampling_settings`` for the scheduler config: the released flow schedule (shift e, timesteps
    1000 sigma) for V5.1; for V5 the DDPM betas of its file (schedule, beta_start/end, num_train_timesteps, zero
    terminal SNR), with diffusers' defaults where the file is silent, as ModelSamplingDiscrete builds them for
    ComfyUI's SD-style models."""
    if scheduler.family == "flow":
        return {"shift": math.e, "multiplier": 1000}
    raw, where = scheduler.raw, f" in {scheduler.source}" if scheduler.source else ""
    schedule = raw.get("beta_schedule", "linear")
    if schedule not in _BETA_SCHEDULES or raw.get("trained_betas") is not None:
        given = "trained_betas" if raw.get("trained_betas") is not None else f"beta_schedule = {schedule!r}"
        raise ValueError(f"scheduler {given}{where}: ComfyUI's model sampling builds the betas of "
                         f"{', '.join(_BETA_SCHEDULES)} only. Use the scheduler_config.json that came with the "
                         f"EasyAnimate V5 model.")
    return {"beta_schedule": _BETA_SCHEDULES[schedule], "linear_start": raw.get("beta_start", 0.0001),
            "linear_end": raw.get("beta_end", 0.02), "timesteps": raw.get("num_train_timesteps", 1000),
            "zsnr": raw.get("rescale_betas_zero_snr", False)}


def require_easyanimate(model, node: str) -> None:
    """Refuse a ComfyUI MODEL that holds no EasyAnimate transformer, naming what it holds."""
    base = getattr(model, "model", None)
    if not hasattr(base, "easyanimate_scheduler"):
        raise ValueError(f"{node} needs an EasyAnimate model from EasyAnimate Model Loader; it got "
                         f"{type(base).__name__ if base is not None else type(model).__name__}.")


def prompt_states(conditioning, name: str, config):
    """The :class:`PromptEmbeddings` of a CONDITIONING from EasyAnimate Text Encode: its states [1, L,
    text_embed_dim] and, for a V5 model, the mT5 states [1, L5, text_embed_dim_t5] under :data:`TEXT_T5_KEY`.
    Anything else (another text encoder's conditioning, several combined prompts, the other family's prompt) is
    refused by name."""
    from ..easyanimate_core.text_encoder import PromptEmbeddings

    try:
        states, extra = conditioning[0][0], conditioning[0][1]
        ok = len(conditioning) == 1 and states.ndim == 3 and states.shape[0] == 1 and isinstance(extra, dict)
    except (TypeError, IndexError, AttributeError):
        ok = False
    if not ok or states.shape[2] != config.text_embed_dim:
        shape = tuple(states.shape) if ok else type(conditioning).__name__
        raise ValueError(f"the {name} conditioning ({shape}) is not one prompt from EasyAnimate Text Encode, which "
                         f"gives [1, L, {config.text_embed_dim}] states for the {config.variant_description}: "
                         f"connect EasyAnimate Text Encode on this model's text encoder (no Conditioning Combine / "
                         f"Concat).")
    states_t5 = check_text_t5(extra.get(TEXT_T5_KEY), config, f"the {name} conditioning")
    ones = torch.ones(states.shape[:2], dtype=torch.long)  # the DiT takes no mask: every token attends
    return PromptEmbeddings(states=states, mask=ones, states_t5=states_t5)


def check_text_t5(states_t5, config, where: str):
    """The mT5 states a V5 model needs beside the Bert states ([B, L5, text_embed_dim_t5]; None for V5.1, which
    must get none), refused by name when missing, misshapen or given to a V5.1 model."""
    if config.text_embed_dim_t5 is None:
        if states_t5 is not None:
            raise ValueError(f"{where} carries the mT5 states of an EasyAnimate V5 text encoder, but the model is "
                             f"an {config.variant_description}: encode the prompt with this model's own text "
                             f"encoder (EasyAnimate Text Encode on the same loader).")
        return None
    if not isinstance(states_t5, torch.Tensor) or states_t5.ndim != 3 or states_t5.shape[2] != config.text_embed_dim_t5:
        got = "none" if states_t5 is None else (tuple(states_t5.shape) if isinstance(states_t5, torch.Tensor)
                                                else type(states_t5).__name__)
        raise ValueError(f"{where} has no mT5 states for the {config.variant_description} (got {got}; it needs "
                         f"[1, L, {config.text_embed_dim_t5}] beside the Bert states): encode the prompt with "
                         f"EasyAnimate Text Encode on this V5 model's text encoder.")
    return states_t5


def check_latent(samples, node: str) -> torch.Tensor:
    """The ``[B, 16, T, h, w]`` tensor of an EasyAnimate LATENT; another model's LATENT is refused by name."""
    latents = samples.get("samples") if isinstance(samples, dict) else None
    if not isinstance(latents, torch.Tensor) or latents.ndim != 5 or latents.shape[1] != 16:
        shape = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
        raise ValueError(f"{node}: samples have shape {shape}: expected EasyAnimate video latents "
                         f"[B, 16, T, H/8, W/8] (from EasyAnimate Sampler, Conditioning, Encode or a KSampler on an "
                         f"EasyAnimate model, not an image model's LATENT).")
    return latents


def check_conditioning(config, has_inpaint: bool, has_control: bool) -> None:
    """Refuse variant channels the model cannot take (or a Control model without its control channels), naming the
    model to load."""
    from ..easyanimate_core.conditioning import require_variant

    if has_inpaint:
        require_variant(config, "i2v")
    if has_control:
        require_variant(config, "camera" if config.variant == "control_camera" else "control")
    if config.variant in ("control", "control_camera") and not has_control:
        raise ValueError(f"the {config.variant_description} needs control channels: connect EasyAnimate Conditioning "
                         f"(with a control video, trajectory or camera path) between the text encoder and the "
                         f"sampler.")


def weight_budget(transformer, memory_mode: str, blocks_on_gpu: int) -> int | None:
    """Bytes of transformer weights ComfyUI may keep on the device in a memory mode; None: ComfyUI decides."""
    from ..easyanimate_core.memory import module_bytes

    if memory_mode == "sequential_cpu_offload":
        return 0
    if memory_mode != "block_swap" or blocks_on_gpu < 0:
        return None
    blocks = transformer.repeated_blocks()
    other = module_bytes(transformer) - sum(module_bytes(b) for b in blocks)
    return other + sum(module_bytes(b) for b in blocks[:blocks_on_gpu])


def storage_dtype(weight_dtype: str, memory_mode: str) -> torch.dtype | None:
    """The storage dtype of the transformer's large linears for UNETLoader's ``weight_dtype`` name (None: the
    precision dtype); the fp8 memory modes store fp8_e4m3fn when it is "default"."""
    from ..easyanimate_core.memory import FP8_MODES

    if weight_dtype not in WEIGHT_DTYPES:
        raise ValueError(f"weight_dtype {weight_dtype!r}: expected one of {WEIGHT_DTYPES}.")
    if weight_dtype == "default" and memory_mode in FP8_MODES:
        return _FP8["fp8_e4m3fn"]
    return _FP8.get(weight_dtype)


def build(build_transformer, dtype: torch.dtype, weight_dtype: str, memory_mode: str, blocks_on_gpu: int,
          latent_scale: float, scheduler):
    """A ComfyUI MODEL (an EasyAnimatePatcher over an EasyAnimateModel) around the transformer that
    ``build_transformer(ops=..., model_class=..., weight_dtype=..., device=...)`` makes, which is our core loader
    (:func:`load_model`) or, in the benchmarks, a random model. ``latent_scale`` is the VAE's scaling factor.
    The high-precision layers the transformer names stay in ``dtype`` whatever ``weight_dtype`` says."""
    import comfy.model_management as mm

    from ..easyanimate_core.samplers import SchedulerConfig

    scheduler = SchedulerConfig.of(scheduler)  # a bare exact flow Euler (the benchmarks) is a flow config
    settings = sampling_settings(scheduler)  # a config ComfyUI cannot sample is refused before any weight is read
    storage = storage_dtype(weight_dtype, memory_mode)
    load_device, offload_device = mm.get_torch_device(), mm.unet_offload_device()
    fast = weight_dtype == "fp8_e4m3fn_fast"
    latent_format, config_class, model_class, patcher_class = _model_classes()
    transformer = build_transformer(ops=comfy_layer_ops(storage, dtype, load_device, fast),
                                    model_class=_native_transformer_class(), weight_dtype=storage,
                                    device=offload_device)
    transformer.load_device = load_device
    config = config_class({"disable_unet_model_creation": True})
    config.sampling_settings = settings
    config.latent_format = latent_format(latent_scale)
    config.manual_cast_dtype = dtype if storage is not None else None
    config.optimizations["fp8"] = fast
    model = model_class(config, transformer, scheduler, weight_budget(transformer, memory_mode, blocks_on_gpu),
                        device=load_device)
    install_lora_key_map()
    return patcher_class(model, load_device=load_device, offload_device=offload_device)


def load_model(folder: Path, dtype: torch.dtype, weight_dtype: str, memory_mode: str, blocks_on_gpu: int,
               latent_scale: float):
    """The model folder's transformer as a ComfyUI MODEL (:func:`build`), read straight into ComfyUI's layers."""
    from functools import partial

    from ..easyanimate_core.loading import load_scheduler, load_transformer

    return build(partial(load_transformer, folder, dtype=dtype), dtype, weight_dtype, memory_mode, blocks_on_gpu,
                 latent_scale, load_scheduler(folder))


def compute_device() -> torch.device:
    """Where ComfyUI runs models (the CPU on a machine without a usable GPU, or with --cpu)."""
    import comfy.model_management as mm

    return torch.device(mm.get_torch_device())


def offload_device() -> torch.device:
    """Where ComfyUI keeps models between uses (system RAM, or the GPU with --gpu-only / --highvram)."""
    import comfy.model_management as mm

    return mm.unet_offload_device()


class Component(torch.nn.Module):
    """The text encoder or the VAE inside a ModelPatcher, which keeps its own bookkeeping (``device``, loaded
    bytes...) as attributes of the module it holds: this holder takes them, so our modules keep their properties."""

    def __init__(self, module: torch.nn.Module):
        super().__init__()
        self.component = module


def component_patcher(module: torch.nn.Module):
    """A plain ModelPatcher for the text encoder or the VAE (loaded whole when used, evicted by ComfyUI)."""
    import comfy.model_management as mm
    import comfy.model_patcher

    return comfy.model_patcher.ModelPatcher(Component(module), load_device=mm.get_torch_device(),
                                            offload_device=mm.unet_offload_device())


def component(patcher) -> torch.nn.Module:
    """The text encoder or VAE a :func:`component_patcher` holds; anything else is refused by name."""
    held = getattr(getattr(patcher, "model", None), "component", None)
    if held is None:
        raise ValueError(f"expected the text encoder or VAE of EasyAnimate Model Loader, got {type(patcher).__name__}.")
    return held


def memory_stage(stage: str, request=None, *, vae_tiles: bool = False):
    """A context in which an out-of-memory error becomes the plan for ComfyUI users (out_of_memory.py): where it
    happened, what was allocated, what to change (``request``: the video's size, for the smaller-size advice)."""
    import comfy.model_management as mm

    from ..easyanimate_core.out_of_memory import Workload, explain_out_of_memory

    workload = Workload() if request is None else Workload(request.width, request.height, request.frames)
    return explain_out_of_memory(stage, mm.get_torch_device(), workload=workload, vae_tiles=vae_tiles, comfyui=True)


def encode_inputs(vae, config, request):
    """``generation.prepare_inputs`` in a node: the VAE placed by ComfyUI, its encodes with a progress bar and
    Cancel between residual blocks, an out-of-memory error told as the plan."""
    from ..easyanimate_core.conditioning import encode_progress
    from ..easyanimate_core.generation import prepare_inputs
    from . import _comfy

    with memory_stage("VAE encode of the input images and videos", request, vae_tiles=True):
        load_on_device(vae)
        with _comfy.cancel_points(component(vae).residual_blocks()), encode_progress(_comfy.Progress.reporter()):
            return prepare_inputs(config, component(vae), request)


def load_on_device(patcher, memory_required: int = 0, *, whole: bool = True) -> None:
    """Ask ComfyUI to place ``patcher`` on its device (evicting other models as needed), ``memory_required`` bytes
    of activations beside it. ``whole``: no low-VRAM streaming (text encoder and VAE, built from plain layers)."""
    import comfy.model_management as mm

    mm.load_models_gpu([patcher], memory_required=memory_required, force_full_load=whole)


# ---------------------------------------------------------------- LoRA patches


def _lora_key_map(model) -> dict[str, str]:
    """LoRA key stems -> state-dict keys for an EasyAnimate model, beyond ComfyUI's generic ones: the official
    EasyAnimate / kohya names (``lora_unet__transformer_blocks_0_attn1_to_q``) and diffusers/PEFT names in either
    layout, with or without a ``transformer.`` / ``base_model.model.`` prefix."""
    from torch import nn

    from ..easyanimate_core.loading import convert_transformer_key
    from ..easyanimate_core.lora import OFFICIAL_PREFIX

    keys = {}
    for name, layer in model.diffusion_model.named_modules():
        if not isinstance(layer, nn.Linear):
            continue
        target = f"diffusion_model.{name}.weight"
        diffusers = convert_transformer_key(name + ".weight", "original", "diffusers")[: -len(".weight")]
        keys[OFFICIAL_PREFIX + name.replace(".", "_")] = target
        for stem in {name, diffusers}:
            for prefix in ("", "transformer.", "diffusion_model.", "base_model.model."):
                keys[prefix + stem] = target
    return keys


def install_lora_key_map() -> None:
    """Teach ``comfy.lora.model_lora_keys_unet`` (what LoraLoader / LoraLoaderModelOnly call) our key names, for
    EasyAnimate models only; every other model gets ComfyUI's map unchanged. Idempotent."""
    import comfy.lora

    _install_lora_checks()
    original = comfy.lora.model_lora_keys_unet
    if getattr(original, "easyanimate", False):
        return

    def model_lora_keys_unet(model, key_map=None):
        key_map = original(model, {} if key_map is None else key_map)
        if hasattr(model, "easyanimate_scheduler"):
            for stem, target in _lora_key_map(model).items():
                key_map.setdefault(stem, target)
        return key_map

    model_lora_keys_unet.easyanimate = True
    comfy.lora.model_lora_keys_unet = model_lora_keys_unet


def _install_lora_checks() -> None:
    """Check a LoRA given to ComfyUI's own loaders (``comfy.sd.load_lora_for_models``) for an EasyAnimate model as
    our loader does: finite tensors, the blocks of this model's size (a 7B LoRA fits the 12B's layer shapes), one
    rank per layer. Keys it does not know are left to ComfyUI, which skips them. Idempotent."""
    import comfy.sd

    original = comfy.sd.load_lora_for_models
    if getattr(original, "easyanimate", False):
        return

    def load_lora_for_models(model, clip, lora, strength_model, strength_clip):
        from ..easyanimate_core.checks import finite_number
        from ..easyanimate_core.lora import lora_layers

        if model is not None and hasattr(model.model, "easyanimate_scheduler"):
            finite_number("strength_model", strength_model, hint="0 turns the LoRA off; 1 applies it as trained.")
            # Checked as stored: no fp32 copy of the whole LoRA, except fp8 tensors (isfinite has no fp8 kernel).
            lora_layers("The LoRA given to the LoRA loader",
                        ((k, v.float() if v.element_size() == 1 and v.is_floating_point() else v)
                         for k, v in lora.items()), model.model.diffusion_model, strict=False)
        return original(model, clip, lora, strength_model, strength_clip)

    load_lora_for_models.easyanimate = True
    comfy.sd.load_lora_for_models = load_lora_for_models


def add_lora(model, lora_file, strength: float):
    """A clone of ``model`` with the LoRA (read by :func:`easyanimate_core.lora.read_lora`, any format) added as
    ComfyUI weight patches, exactly as LoraLoaderModelOnly adds an official-format file."""
    import comfy.lora

    from ..easyanimate_core.lora import OFFICIAL_PREFIX

    state = {}
    for name, layer in lora_file.layers.items():
        stem = OFFICIAL_PREFIX + name.replace(".", "_")
        state[f"{stem}.lora_down.weight"] = layer.down
        state[f"{stem}.lora_up.weight"] = layer.up
        if layer.alpha is not None:
            state[f"{stem}.alpha"] = torch.tensor(layer.alpha)
    patches = comfy.lora.load_lora(state, comfy.lora.model_lora_keys_unet(model.model, {}))
    clone = model.clone()
    added = clone.add_patches(patches, strength)
    if len(added) != len(lora_file.layers):
        raise RuntimeError(f"{lora_file.path}: {len(added)} of {len(lora_file.layers)} LoRA layers found their "
                           f"weight in the model.")
    return clone


# ---------------------------------------------------------------- TeaCache as a model patch


def with_teacache(model, options):
    """A clone of ``model`` whose runs in ComfyUI's samplers use TeaCache: an OUTER_SAMPLE wrapper gives each run
    a fresh cache (sized by its sigmas), logs what it skipped and drops it in a ``finally``."""
    import comfy.model_patcher
    import comfy.patcher_extension as extension

    def run_with_cache(executor, *args, **kwargs):
        guider = executor.class_obj
        original = guider.model_options
        sigmas = args[3]
        step_cache = options.run(len(sigmas) - 1, guider.model_patcher.model.diffusion_model.config)
        guider.model_options = comfy.model_patcher.create_model_options_clone(original)
        guider.model_options["transformer_options"][TEACACHE_KEY] = step_cache
        try:
            return executor(*args, **kwargs)
        finally:
            if step_cache is not None:
                logger.info("%s", step_cache.summary())
            guider.model_options = original

    patched = model.clone()
    patched.remove_wrappers_with_key(extension.WrappersMP.OUTER_SAMPLE, TEACACHE_KEY)  # a second patch replaces
    patched.add_wrapper_with_key(extension.WrappersMP.OUTER_SAMPLE, TEACACHE_KEY, run_with_cache)
    return patched
