"""The flow-matching training loss exactly as the reference trains V5.1 (reference 9.2).

sigma is drawn uniformly from the unshifted 1000-entry table (1.0, 0.999, ..., 0.001; dynamic-shift configs never
shift the training table), x_sigma = (1 - sigma) x0 + sigma eps, the target is eps - x0, and the timestep given to
the model is 1000 sigma (the model rounds it to bf16 itself). The loss is the mean squared error over all elements
with the elements where |prediction - target| > 50 set to zero.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

LOSS_THRESHOLD = 50.0


def training_sigmas(num_train_timesteps: int = 1000) -> torch.Tensor:
    """The unshifted sigma table of FlowMatchEulerDiscreteScheduler: [1.0, ..., 1 / n], fp32."""
    return torch.arange(num_train_timesteps, 0, -1, dtype=torch.float32) / num_train_timesteps


def masked_mse(prediction: torch.Tensor, target: torch.Tensor, threshold: float = LOSS_THRESHOLD) -> torch.Tensor:
    prediction, target = prediction.float(), target.float()
    keep = ((prediction - target).abs() <= threshold).float()
    return (F.mse_loss(prediction, target, reduction="none") * keep).mean()


def flow_matching_loss(
    transformer: nn.Module,
    latents: torch.Tensor,
    text_states: torch.Tensor,
    *,
    generator: torch.Generator,
    inpaint_latents: torch.Tensor | None = None,
    dtype: torch.dtype,
    num_train_timesteps: int = 1000,
) -> torch.Tensor:
    """Loss of one batch of scaled clean latents [B, 16, T, h, w] with text states [B, L, D].

    sigma and the noise come from ``generator`` (on the CPU, so a seed gives the same draw on every device);
    ``transformer`` may be a wrapper (DDP, accelerate) around the model, ``dtype`` is the model's input dtype.
    """
    b, device = latents.shape[0], latents.device
    sigmas = training_sigmas(num_train_timesteps)
    index = torch.randint(0, num_train_timesteps, (b,), generator=generator)
    sigma = sigmas[index].to(device)
    noise = torch.randn(latents.shape, generator=generator, dtype=torch.float32).to(device)
    s = sigma.view(b, 1, 1, 1, 1)
    clean = latents.float()
    noisy = (1.0 - s) * clean + s * noise
    extra = {} if inpaint_latents is None else {"inpaint_latents": inpaint_latents.to(device=device, dtype=dtype)}
    prediction = transformer(noisy.to(dtype), sigma * num_train_timesteps, text_states.to(device=device, dtype=dtype),
                             **extra)
    return masked_mse(prediction, noise - clean)
