"""The denoise loop: any sampler of samplers.py with classifier-free guidance (reference section 5.2).

CFG runs the negative and the positive prompt as one batch [negative, positive], with every conditioning tensor
duplicated unchanged. ``callback(step, total, latents)`` runs after every step; if it raises (a cancel), the
exception propagates and no input has been modified.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .checks import finite_number, whole_number
from .samplers import as_stepper, set_timesteps, step_kwargs
from .teacache import TeaCacheOptions

logger = logging.getLogger(__name__)

StepCallback = Callable[[int, int, torch.Tensor], None]


@dataclass(frozen=True)
class Conditioning:
    """Extra transformer inputs for one video ``[1, C, T, h, w]``: InP mask + masked latents, or control channels."""

    inpaint_latents: torch.Tensor | None = None
    control_latents: torch.Tensor | None = None

    def batched(self, n: int, dtype: torch.dtype, device: torch.device) -> dict[str, torch.Tensor]:
        """Each tensor moved and expanded to a batch of ``n`` (a view: no copy per sample)."""
        return {name: t.to(device=device, dtype=dtype).expand(n, -1, -1, -1, -1)
                for name, t in (("inpaint_latents", self.inpaint_latents), ("control_latents", self.control_latents))
                if t is not None}


def initial_noise(shape: tuple[int, ...], *, seed: int | None = None, generator: torch.Generator | None = None,
                  dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> torch.Tensor:
    """Gaussian noise drawn on the CPU in fp32 (the same seed gives the same video on every device), then moved."""
    if (seed is None) == (generator is None):
        raise ValueError("pass exactly one of seed or generator")
    if generator is None:
        generator = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randn(shape, generator=generator, device=generator.device).to(device=device, dtype=dtype)


def rescale_guidance(guided: torch.Tensor, positive: torch.Tensor, amount: float) -> torch.Tensor:
    """Blend the guided prediction with itself rescaled to the positive prediction's std (0 = off)."""
    dims = list(range(1, guided.ndim))
    rescaled = guided * (positive.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True))
    return amount * rescaled + (1.0 - amount) * guided


def uses_guidance(guidance: float, negative_text: object | None) -> bool:
    """Whether :func:`denoise` runs the unconditional pass beside the conditional one (a batch of 2 per step)."""
    return guidance > 1.0 and negative_text is not None


def denoise(
    transformer: torch.nn.Module,
    scheduler,
    *,
    noise: torch.Tensor,
    text: torch.Tensor,
    negative_text: torch.Tensor | None = None,
    steps: int,
    guidance: float = 6.0,
    guidance_rescale: float = 0.0,
    strength: float = 1.0,
    clean_latents: torch.Tensor | None = None,
    conditioning: Conditioning = Conditioning(),
    callback: StepCallback | None = None,
    teacache: TeaCacheOptions | None = None,
    cfg_skip_ratio: float = 0.0,
    generator: torch.Generator | None = None,
    text_t5: torch.Tensor | None = None,
    negative_text_t5: torch.Tensor | None = None,
) -> torch.Tensor:
    """Denoise ``noise`` [1, 16, T, h, w] into scaled latents of the same shape.

    ``scheduler`` is our exact flow Euler (:class:`FlowMatchEulerScheduler`), a :class:`~.samplers.SchedulerConfig`
    (its default sampler) or a fresh diffusers scheduler object (:meth:`~.samplers.SchedulerConfig.build`), driven
    as diffusers' pipelines drive it: ``set_timesteps``, ``init_noise_sigma``, ``scale_model_input`` and ``step``,
    the timestep given to the transformer as the scheduler gives it; ``generator`` feeds the steps that draw noise
    (Euler A). ``text``/``negative_text`` are prompt embeddings [1, L, D] (``text_t5``/``negative_text_t5`` a V5
    prompt's mT5 states [1, L5, d_model], batched the same way); without a negative (or with guidance <= 1) there is
    no unconditional pass. ``strength`` < 1 runs the last ``int(steps * strength)`` steps from
    ``clean_latents`` noised to the first of them with the scheduler's ``add_noise`` (video-to-video). ``teacache``
    reuses the blocks' residual on steps whose input barely changed (teacache.py); ``cfg_skip_ratio`` runs only the
    conditional pass on that share of the last steps (the guided prediction is then the conditional one), as the
    official ``cfg_skip_ratio`` does.
    """
    if not 0.0 <= cfg_skip_ratio <= 1.0:
        raise ValueError(f"cfg_skip_ratio = {cfg_skip_ratio!r}: expected a share of the steps from 0 to 1.")
    whole_number("steps", steps, low=1)
    finite_number("strength", strength, low=0.0, high=1.0, low_open=True)
    dtype, device = transformer.dtype, transformer.device
    use_cfg = uses_guidance(guidance, negative_text)
    if strength < 1.0 and clean_latents is None:
        raise ValueError(f"strength = {strength} needs the clean latents of an input video (clean_latents).")
    if clean_latents is not None and clean_latents.shape != noise.shape:
        raise ValueError(f"clean_latents have shape {tuple(clean_latents.shape)}, the noise {tuple(noise.shape)}.")
    scheduler = as_stepper(scheduler)
    timesteps = _timesteps(scheduler, steps, strength, device)
    if teacache is not None and teacache.threshold > 0 and len(set(timesteps.tolist())) < len(timesteps):
        raise ValueError(f"TeaCache cannot run with {type(scheduler).__name__}: its schedule evaluates the model "
                         f"more than once at the same timestep, and TeaCache tells steps apart by their timestep. "
                         f"Set the TeaCache threshold to 0 or choose another sampler.")
    latents = noise.to(device=device, dtype=dtype)
    if strength < 1.0:
        latents = scheduler.add_noise(clean_latents.to(device=device, dtype=dtype), latents, timesteps[:1])
    elif scheduler.init_noise_sigma != 1.0:
        latents = (latents.float() * scheduler.init_noise_sigma).to(dtype)
    stepping = step_kwargs(scheduler, generator)
    states = torch.cat([negative_text, text]) if use_cfg else text
    states = states.to(device=device, dtype=dtype)
    states_t5 = None
    if text_t5 is not None:
        if use_cfg and negative_text_t5 is None:
            raise ValueError("a V5 negative prompt needs its mT5 states (negative_text_t5) beside the Bert states.")
        states_t5 = (torch.cat([negative_text_t5, text_t5]) if use_cfg else text_t5).to(device=device, dtype=dtype)
    extra = conditioning.batched(1, dtype, device)
    total = len(timesteps)
    step_cache = teacache.run(total, transformer.config) if teacache is not None else None
    # The official rule: the last steps from step index steps * (1 - ratio) on run without the negative pass.
    first_skipped = total * (1.0 - cfg_skip_ratio) if cfg_skip_ratio > 0 else float("inf")
    try:
        for i, t in enumerate(timesteps):
            guided = use_cfg and i < first_skipped
            batch = 2 if guided else 1
            model_input = scheduler.scale_model_input(latents, t)
            prediction = transformer(model_input.expand(batch, -1, -1, -1, -1), t.expand(batch),
                                     states if guided else states[-1:],
                                     **{k: v.expand(batch, -1, -1, -1, -1) for k, v in extra.items()},
                                     **({"text_states_t5": states_t5 if guided else states_t5[-1:]}
                                        if states_t5 is not None else {}),
                                     **({"step_cache": step_cache} if step_cache is not None else {}))
            if guided:
                uncond, cond = prediction.chunk(2)
                prediction = uncond + guidance * (cond - uncond)
                if guidance_rescale > 0.0:
                    prediction = rescale_guidance(prediction, cond, guidance_rescale)
            latents = scheduler.step(prediction, t, latents, **stepping, return_dict=False)[0]
            if callback is not None:
                callback(i + 1, total, latents)
    finally:
        if step_cache is not None:
            logger.info("%s", step_cache.summary())
        del step_cache  # its residuals are activation-sized: gone with the run, whatever ended it
    return latents


def _timesteps(scheduler, steps: int, strength: float, device: torch.device) -> torch.Tensor:
    """The timesteps to run, as diffusers' img2img pipelines take them: with ``strength`` < 1 the last
    ``int(steps * strength)`` steps (times the scheduler's order), the scheduler told where it begins."""
    set_timesteps(scheduler, steps, device)
    start = steps - int(steps * strength)  # strength is in (0, 1]
    if start >= steps:
        raise ValueError(f"strength = {strength} with {steps} steps leaves no step to run: "
                         f"use a strength of at least {1.0 / steps:.3f} or more steps.")
    if start == 0:
        return scheduler.timesteps
    begin = start * scheduler.order
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(begin)
    return scheduler.timesteps[begin:]
