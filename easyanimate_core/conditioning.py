"""Image, video, control, trajectory and camera inputs -> the extra latents each model variant takes.

Reference sections 2.6 and 5.3-5.5: InP models take 1 mask channel + 16 masked-video channels; Control models
take 16 control-video channels + 16 reference-image channels; Control-Camera models take 6 Plucker channels + the
16 reference channels. All latents are VAE means times the scaling factor. Each builder checks that the loaded
variant can do the asked mode and names the model to pick when it cannot.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
import torch.nn.functional as F

from .config import TransformerConfig
from .memory import execution_device
from .resize import DEFAULT_RESIZE
from .sampling import Conditioning
from .vae import MagvitVAE
from .vae_tiling import ProgressCallback
from .video import frames_to_model, latent_frames

# Inference noise on the known frames of InP models: the mean of the log-normal amplitude used in training.
REFERENCE_NOISE_STRENGTH = 0.0563

VARIANTS_FOR_MODE = {
    "t2v": ("t2v", "inp"),
    "i2v": ("inp",),
    "v2v": ("t2v", "inp"),
    "control": ("control",),
    "trajectory": ("control",),
    "camera": ("control_camera",),
}
_MODEL_NAMES = {
    "t2v": "EasyAnimateV5.1-12b-zh or -7b-zh (or an InP model)",
    "inp": "an InP model (EasyAnimateV5.1-12b-zh-InP or -7b-zh-InP)",
    "control": "a Control model (EasyAnimateV5.1-12b-zh-Control or -7b-zh-Control)",
    "control_camera": "a Control-Camera model (EasyAnimateV5.1-12b-zh-Control-Camera or -7b-zh-Control-Camera)",
}


NO_REFERENCE_SLOT = ("a V5 Control model has no reference-image input (its channels are the latents and the control "
                     "video only): disconnect the reference image, or load an EasyAnimate V5.1 Control model to use "
                     "one.")


def require_variant(config: TransformerConfig, mode: str) -> None:
    """Refuse a mode the loaded variant cannot do, before any work, naming the model that can."""
    if mode not in VARIANTS_FOR_MODE:
        raise ValueError(f"mode {mode!r}: expected one of {sorted(VARIANTS_FOR_MODE)}.")
    allowed = VARIANTS_FOR_MODE[mode]
    if config.family == "V5" and mode in ("trajectory", "camera"):
        raise ValueError(f"{mode} control is an EasyAnimate V5.1 feature and the loaded model is the "
                         f"{config.variant_description}: load {_MODEL_NAMES[allowed[0]]}.")
    if config.variant not in allowed:
        raise ValueError(f"{mode} needs {_MODEL_NAMES[allowed[0]]}; the loaded model is the "
                         f"{config.variant_description}. Load the right model folder.")


# Progress of the VAE encodes below, for callers several functions up (a node's progress bar and Cancel): set for
# a block by :func:`encode_progress`, read by every encode in it.
_ENCODE_PROGRESS: ContextVar[ProgressCallback | None] = ContextVar("easyanimate_encode_progress", default=None)


@contextmanager
def encode_progress(callback: ProgressCallback | None) -> Iterator[None]:
    """Within the block, every VAE encode of this module calls ``callback(done, total)`` after each temporal chunk
    (of each tile); the callback may raise to cancel."""
    token = _ENCODE_PROGRESS.set(callback)
    try:
        yield
    finally:
        _ENCODE_PROGRESS.reset(token)


def _encode(vae: MagvitVAE, video: torch.Tensor) -> torch.Tensor:
    """[1, 3, F, H, W] in [-1, 1] -> scaled latent means [1, 16, T, h, w] in the VAE's dtype; in spatial tiles
    when whole frames do not fit in free memory."""
    video = video.to(device=execution_device(vae), dtype=vae.dtype)
    return vae.encode(video, tile_size="auto", callback=_ENCODE_PROGRESS.get()).mode() * vae.scaling_factor


def resize_mask_to_latents(mask: torch.Tensor, latent_t: int, height: int, width: int) -> torch.Tensor:
    """[1, 1, F, H, W] -> [1, 1, T, h, w]: frame 0 alone, frames 1.. to the other latent frames (trilinear)."""
    first = F.interpolate(mask[:, :, :1], size=(1, height, width), mode="trilinear", align_corners=False)
    if latent_t == 1:
        return first
    rest = F.interpolate(mask[:, :, 1:], size=(latent_t - 1, height, width), mode="trilinear", align_corners=False)
    return torch.cat([first, rest], dim=2)


def inpaint_conditioning(
    vae: MagvitVAE,
    video: torch.Tensor | None,
    keep: torch.Tensor | None,
    *,
    frames: int,
    width: int,
    height: int,
    add_noise: bool,
    generator: torch.Generator | None = None,
    noise_strength: float = REFERENCE_NOISE_STRENGTH,
) -> Conditioning:
    """InP channels from a pixel video [1, 3, F, H, W] in [-1, 1] and ``keep`` [F] (True = known frame).

    Known frames get light noise (V5.1 models, ``add_noise``) and are encoded; generated frames are black (-1).
    With no known frame the channels are all zero, as in text-to-video through an InP model.
    """
    t, h, w = latent_frames(frames), height // 8, width // 8
    if video is None or keep is None or not bool(keep.any()):
        return Conditioning(inpaint_latents=torch.zeros(1, 17, t, h, w))
    known = keep.to(torch.float32).view(1, 1, -1, 1, 1)  # [1, 1, F, 1, 1], 1 = known
    masked = torch.where(known > 0.5, video.float(), torch.full_like(video.float(), -1.0))
    if add_noise:
        noise = torch.randn(masked.shape, generator=generator, dtype=masked.dtype, device=masked.device)
        masked = masked + torch.where(masked == -1, torch.zeros_like(masked), noise * noise_strength)
    masked_latents = _encode(vae, masked).float().cpu()
    mask = resize_mask_to_latents(known.expand(1, 1, frames, height, width), t, h, w) * vae.scaling_factor
    return Conditioning(inpaint_latents=torch.cat([mask, masked_latents], dim=1))


def image_to_video_inputs(
    start: torch.Tensor | None, end: torch.Tensor | None, *, frames: int, width: int, height: int,
    resize: str = DEFAULT_RESIZE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Start image(s) and/or end image(s) (IMAGE [N, H, W, C]) -> pixel video [1, 3, F, H, W] and ``keep`` [F].
    ``resize`` fits images of another aspect ratio (``resize.py``: crop, pad or stretch).

    Several start images fill the first frames; the first one also fills every unknown frame (as the reference
    does, though those pixels are blacked out before encoding).
    """
    if start is None and end is None:
        raise ValueError("image-to-video needs a start image, an end image or both.")
    first = start if start is not None else end
    video = frames_to_model(first[:1], width, height, resize).expand(-1, -1, frames, -1, -1).clone()
    keep = torch.zeros(frames, dtype=torch.bool)
    if start is not None:
        n = start.shape[0]
        if n >= frames:
            raise ValueError(f"{n} start images leave no frame to generate in a {frames}-frame video.")
        video[:, :, :n] = frames_to_model(start, width, height, resize)
        keep[:n] = True
    if end is not None:
        n = end.shape[0]
        if n >= frames or keep[-n:].any():
            raise ValueError(f"{n} end images overlap the start images in a {frames}-frame video: use more frames.")
        video[:, :, -n:] = frames_to_model(end, width, height, resize)
        keep[-n:] = True
    return video, keep


def _reference_latents(vae: MagvitVAE | None, reference: torch.Tensor | None, *, frames: int, width: int,
                   height: int, resize: str = DEFAULT_RESIZE) -> torch.Tensor:
    """[1, 16, T, h, w]: the reference image's latent in frame 0 (when T > 1), zeros elsewhere."""
    t, h, w = latent_frames(frames), height // 8, width // 8
    slot = torch.zeros(1, 16, t, h, w)
    if reference is not None and t > 1:
        slot[:, :, :1] = _encode(vae, frames_to_model(reference[:1], width, height, resize)).float().cpu()
    return slot


def control_conditioning(
    vae: MagvitVAE, control: torch.Tensor | None, reference: torch.Tensor | None, *, frames: int, width: int,
    height: int, resize: str = DEFAULT_RESIZE, reference_slot: bool = True,
) -> Conditioning:
    """Control channels from a control video (IMAGE [F', H, W, C]; canny, pose, depth, a trajectory render...):
    [1, 32, T, h, w] with the reference image's slot (V5.1), [1, 16, T, h, w] without (V5 Control, whose
    ``reference_slot`` is False; a reference image is refused for it rather than silently dropped)."""
    if not reference_slot and reference is not None:
        raise ValueError(NO_REFERENCE_SLOT)
    t, h, w = latent_frames(frames), height // 8, width // 8
    if control is None:
        control_latents = torch.zeros(1, 16, t, h, w)
    else:
        if control.shape[0] < frames:
            raise ValueError(f"the control video has {control.shape[0]} frames; the output needs {frames}: "
                             f"give a longer control video or ask for fewer frames.")
        control_latents = _encode(vae, frames_to_model(control[:frames], width, height, resize)).float().cpu()
    if not reference_slot:
        return Conditioning(control_latents=control_latents)
    ref = _reference_latents(vae, reference, frames=frames, width=width, height=height, resize=resize)
    return Conditioning(control_latents=torch.cat([control_latents, ref], dim=1))


def camera_conditioning(
    vae: MagvitVAE, plucker: torch.Tensor, reference: torch.Tensor | None, *, frames: int, width: int, height: int,
    resize: str = DEFAULT_RESIZE,
) -> Conditioning:
    """Control-Camera channels from a Plucker embedding [F, H, W, 6] (``camera.plucker_embedding``)."""
    from .camera import camera_control_channels

    if plucker.shape[0] < frames:
        raise ValueError(f"the camera path has {plucker.shape[0]} poses; the output needs {frames}: "
                         f"make the camera path {frames} frames long.")
    t, h, w = latent_frames(frames), height // 8, width // 8
    camera = camera_control_channels(plucker[:frames], t, h, w).float()
    ref = _reference_latents(vae, reference, frames=frames, width=width, height=height, resize=resize)
    return Conditioning(control_latents=torch.cat([camera, ref], dim=1))


def video_latents(vae: MagvitVAE, video: torch.Tensor, *, frames: int, width: int, height: int,
                  resize: str = DEFAULT_RESIZE) -> torch.Tensor:
    """Scaled latents of an input video (IMAGE [F', H, W, C]) for video-to-video."""
    if video.shape[0] < frames:
        raise ValueError(f"the input video has {video.shape[0]} frames; the output needs {frames}: "
                         f"ask for at most {(video.shape[0] - 1) // 4 * 4 + 1} frames.")
    return _encode(vae, frames_to_model(video[:frames], width, height, resize)).float().cpu()
