"""One generation request -> latents, for every mode; shared by the command line and the ComfyUI nodes.

The mode follows from the inputs given: a camera path -> camera control, a trajectory -> trajectory control, a
control video -> control, an input video -> video-to-video, start/end images -> image-to-video, none ->
text-to-video. Prompts are encoded by the caller (so a prompt is encoded once and the text encoder can be freed
before sampling); decoding is a separate step.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import torch

from .camera import CameraPath, fit_to_frames, plucker_embedding
from .checks import check_seed, check_workload, finite_number, whole_number
from .conditioning import (
    NO_REFERENCE_SLOT,
    camera_conditioning,
    control_conditioning,
    image_to_video_inputs,
    inpaint_conditioning,
    require_variant,
    video_latents,
)
from .config import TransformerConfig
from .memory import execution_device
from .resize import DEFAULT_RESIZE, check_resize, fit_note
from .sampling import Conditioning, StepCallback, denoise, initial_noise, uses_guidance
from .samplers import SchedulerConfig, known_sampler
from .scheduler import FlowMatchEulerScheduler
from .teacache import TeaCacheOptions
from .text_encoder import PromptEmbeddings
from .trajectory import Trajectory, render_trajectory_video
from .transformer import EasyAnimateTransformer
from .vae import MagvitVAE
from .vae_tiling import TileSize
from .video import check_frames, check_size, latent_shape, model_to_frames

logger = logging.getLogger(__name__)

# The negative prompt of the official predict scripts ("twisted body, limb deformities, text captions, comic,
# static, ugly, error, messy code").
DEFAULT_NEGATIVE_PROMPT = "扭曲的身体，肢体残缺，文本字幕，漫画，静止，丑陋，错误，乱码。"


@dataclass(frozen=True)
class GenerationRequest:
    """Everything one video needs besides the models. Images and videos are IMAGE tensors [F, H, W, C] in 0..1."""

    width: int = 672
    height: int = 384
    frames: int = 49
    steps: int = 50
    guidance: float = 6.0
    guidance_rescale: float = 0.0
    seed: int = 43
    strength: float = 1.0
    start_images: torch.Tensor | None = None
    end_images: torch.Tensor | None = None
    input_video: torch.Tensor | None = None
    control_video: torch.Tensor | None = None
    reference_image: torch.Tensor | None = None
    trajectory: Trajectory | None = None
    camera: CameraPath | None = None
    allow_rounding: bool = False
    teacache: TeaCacheOptions | None = None  # step caching (teacache.py); None or threshold 0: off
    cfg_skip_ratio: float = 0.0  # share of the last steps without the negative pass
    resize: str = DEFAULT_RESIZE  # how images and videos of another aspect ratio fit: crop, pad, stretch
    sampler: str | None = None  # one of samplers.SAMPLER_NAMES; None: the model's default (Flow V5.1, DDIM V5)

    @property
    def mode(self) -> str:
        given = [name for name, value in (("camera", self.camera), ("trajectory", self.trajectory),
                                          ("control", self.control_video), ("v2v", self.input_video))
                 if value is not None]
        if len(given) > 1:
            raise ValueError(f"inputs for several modes were given ({', '.join(given)}): connect only one of camera "
                             f"poses, trajectory, control video and input video.")
        images = self.start_images is not None or self.end_images is not None
        if given and images:
            raise ValueError(f"start/end images cannot be combined with {given[0]}: use the reference image input "
                             f"for control modes, or image-to-video alone.")
        if given:
            return given[0]
        return "i2v" if images else "t2v"

    def checked_settings(self) -> "GenerationRequest":
        """The request with its numbers checked and a valid frame count and size (rounded only when
        ``allow_rounding``); its images, videos and paths are not looked at, so this runs before any is read."""
        frames = check_frames(self.frames, allow_round=self.allow_rounding)
        width, height = check_size(self.width, self.height, allow_round=self.allow_rounding)
        whole_number("steps", self.steps, low=1)
        finite_number("guidance", self.guidance, low=0.0, hint="1 turns classifier-free guidance off; 6 is usual.")
        finite_number("guidance_rescale", self.guidance_rescale, low=0.0, high=1.0)
        finite_number("strength", self.strength, low=0.0, high=1.0, low_open=True,
                      hint="1 replaces the whole input video.")
        finite_number("cfg_skip_ratio", self.cfg_skip_ratio, low=0.0, high=1.0, hint="A share of the steps.")
        check_seed(self.seed)
        check_workload(width, height, frames)
        check_resize(self.resize)
        if self.sampler is not None:
            known_sampler(self.sampler)
        return replace(self, frames=frames, width=width, height=height)

    def checked(self) -> "GenerationRequest":
        """:meth:`checked_settings`, the strength against the mode the inputs give, and a camera path of another
        length resampled to the frame count (never cut)."""
        request = self.checked_settings()
        if request.strength < 1.0 and request.mode != "v2v":
            raise ValueError(f"strength = {request.strength} only applies to video-to-video: connect an input video "
                             f"or set the strength to 1.")
        if request.camera is not None:
            request = replace(request, camera=fit_to_frames(request.camera, request.frames))
        return request


def _log_fits(request: GenerationRequest) -> None:
    """One line per image or video input whose aspect ratio differs from the output's: what the resize does."""
    for name, value in (("The start image", request.start_images), ("The end image", request.end_images),
                        ("The reference image", request.reference_image), ("The input video", request.input_video),
                        ("The control video", request.control_video)):
        if value is not None:
            note = fit_note(name, value.shape[2], value.shape[1], request.width, request.height, request.resize)
            if note:
                logger.info("%s", note)


def _conditioning(request: GenerationRequest, config: TransformerConfig, vae: MagvitVAE,
                  generator: torch.Generator) -> tuple[Conditioning, torch.Tensor | None]:
    mode = request.mode
    _log_fits(request)
    size = dict(frames=request.frames, width=request.width, height=request.height)
    fit = dict(size, resize=request.resize)
    if mode in ("t2v", "v2v"):
        clean = video_latents(vae, request.input_video, **fit) if mode == "v2v" else None
        if config.variant == "inp":
            return inpaint_conditioning(vae, None, None, add_noise=False, **size), clean
        return Conditioning(), clean
    if mode == "i2v":
        pixels, keep = image_to_video_inputs(request.start_images, request.end_images, **fit)
        return inpaint_conditioning(vae, pixels, keep, add_noise=config.add_noise_in_inpaint_model,
                                    generator=generator, **size), None
    if mode == "camera":
        plucker = plucker_embedding(request.camera, request.width, request.height)
        return camera_conditioning(vae, plucker, request.reference_image, **fit), None
    control = request.control_video
    if mode == "trajectory":
        control = render_trajectory_video(request.trajectory, request.frames, request.width, request.height)
    return control_conditioning(vae, control, request.reference_image, reference_slot=config.family != "V5",
                                **fit), None


@dataclass(frozen=True)
class PreparedInputs:
    """What the denoise loop needs besides the models: the checked request, the noise and the conditioning, and
    the state of the seeded generator after them (the noise of samplers that draw some per step continues it, as
    one generator does in diffusers' pipelines)."""

    request: GenerationRequest
    noise: torch.Tensor
    conditioning: Conditioning
    clean_latents: torch.Tensor | None
    generator_state: torch.Tensor | None = None


def require_model_for(config: TransformerConfig, request: GenerationRequest) -> None:
    """Refuse a request the model cannot take, naming the model that can: the mode against the variant, and a
    reference image for a V5 Control model (it has no slot for one). Needs only the config: no weight is read."""
    require_variant(config, request.mode)
    if request.mode == "control" and config.family == "V5" and request.reference_image is not None:
        raise ValueError(NO_REFERENCE_SLOT)


def prepare_inputs(config: TransformerConfig, vae: MagvitVAE, request: GenerationRequest) -> PreparedInputs:
    """Check ``request`` against the model (before any work), then draw the noise and encode the inputs with the
    VAE. Only the VAE needs to be on the compute device for this."""
    request = request.checked()
    require_model_for(config, request)
    generator = torch.Generator(device="cpu").manual_seed(request.seed)
    noise = initial_noise(latent_shape(request.frames, request.width, request.height), generator=generator)
    with torch.inference_mode():
        conditioning, clean = _conditioning(request, config, vae, generator)
    return PreparedInputs(request, noise, conditioning, clean, generator.get_state())


def _states(prompt: PromptEmbeddings | torch.Tensor) -> torch.Tensor:
    return prompt.states if isinstance(prompt, PromptEmbeddings) else prompt


def denoise_activation_bytes(transformer: EasyAnimateTransformer, prepared: PreparedInputs,
                             prompt: PromptEmbeddings | torch.Tensor,
                             negative: PromptEmbeddings | torch.Tensor | None = None) -> int:
    """The transformer's activation peak in :func:`run_denoise` (batch 2 with classifier-free guidance), for
    ``Placement.active(transformer, working_bytes=...)``."""
    request = prepared.request
    batch = 2 if uses_guidance(request.guidance, negative) else 1
    cached = request.teacache is not None and request.teacache.threshold > 0
    return transformer.activation_bytes((batch, *prepared.noise.shape[1:]), _text_tokens(prompt), cached)


def _states_t5(prompt: PromptEmbeddings | torch.Tensor | None) -> torch.Tensor | None:
    """A V5 prompt's mT5 states (None for V5.1 prompts and bare tensors)."""
    return prompt.states_t5 if isinstance(prompt, PromptEmbeddings) else None


def _text_tokens(prompt: PromptEmbeddings | torch.Tensor) -> int:
    """Text tokens in the transformer's joint sequence: V5 adds its mT5 tokens after the Bert tokens."""
    t5 = _states_t5(prompt)
    return _states(prompt).shape[1] + (0 if t5 is None else t5.shape[1])


def run_denoise(
    transformer: EasyAnimateTransformer,
    scheduler: SchedulerConfig | FlowMatchEulerScheduler,
    prepared: PreparedInputs,
    prompt: PromptEmbeddings | torch.Tensor,
    negative: PromptEmbeddings | torch.Tensor | None = None,
    *,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Scaled latents [1, 16, T, h, w] with the request's sampler of the model's scheduler config
    (``loading.load_scheduler``). Only the transformer needs to be on the compute device for this."""
    request = prepared.request
    sampler = SchedulerConfig.of(scheduler).build(request.sampler)
    generator = torch.Generator(device="cpu")
    if prepared.generator_state is not None:
        generator.set_state(prepared.generator_state)
    else:
        generator.manual_seed(request.seed)
    with torch.inference_mode():
        return denoise(transformer, sampler, noise=prepared.noise, text=_states(prompt),
                       negative_text=None if negative is None else _states(negative),
                       text_t5=_states_t5(prompt), negative_text_t5=_states_t5(negative), steps=request.steps,
                       guidance=request.guidance, guidance_rescale=request.guidance_rescale,
                       strength=request.strength, clean_latents=prepared.clean_latents,
                       conditioning=prepared.conditioning, callback=callback, teacache=request.teacache,
                       cfg_skip_ratio=request.cfg_skip_ratio, generator=generator)


def sample_latents(
    transformer: EasyAnimateTransformer,
    vae: MagvitVAE,
    scheduler: SchedulerConfig | FlowMatchEulerScheduler,
    request: GenerationRequest,
    prompt: PromptEmbeddings | torch.Tensor,
    negative: PromptEmbeddings | torch.Tensor | None = None,
    *,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """:func:`prepare_inputs` then :func:`run_denoise`, for callers that keep both models in place."""
    prepared = prepare_inputs(transformer.config, vae, request)
    return run_denoise(transformer, scheduler, prepared, prompt, negative, callback=callback)


def decode_latents(vae: MagvitVAE, latents: torch.Tensor, *, tile_size: TileSize = "auto",
                   callback=None) -> torch.Tensor:
    """Scaled latents [B, 16, T, h, w] -> IMAGE [B*F, H, W, 3] in 0..1; ``tile_size`` as in ``MagvitVAE.decode``."""
    with torch.inference_mode():
        video = vae.decode(latents.to(device=execution_device(vae), dtype=vae.dtype) / vae.scaling_factor,
                           tile_size=tile_size, callback=callback)
    return model_to_frames(video)
