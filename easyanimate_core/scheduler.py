"""Flow-matching Euler sampler exactly as EasyAnimate V5.1 runs it (reference sections 5.1 and 15.3).

The released ``scheduler_config.json`` asks for dynamic shifting; the pipelines always pass mu = 1, so the
effective shift is e and the configured ``shift`` goes unused. The model predicts v = noise - x0 and
x_sigma = (1 - sigma) * x0 + sigma * noise. All schedule and step math is fp32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class FlowSchedule:
    """``sigmas`` [n + 1] (ending in 0) and ``timesteps`` [n] = 1000 * sigmas[:-1], fp32."""

    sigmas: torch.Tensor
    timesteps: torch.Tensor

    def __len__(self) -> int:
        return len(self.timesteps)


@dataclass(frozen=True)
class FlowMatchEulerScheduler:
    num_train_timesteps: int = 1000
    shift: float = 3.0
    use_dynamic_shifting: bool = True
    mu: float = 1.0

    @classmethod
    def from_config_dict(cls, raw: dict[str, Any], source: str | None = None) -> "FlowMatchEulerScheduler":
        """Read ``scheduler/scheduler_config.json``; a non-flow scheduler is refused."""
        name = raw.get("_class_name", "FlowMatchEulerDiscreteScheduler")
        where = f" in {source}" if source else ""
        if name != "FlowMatchEulerDiscreteScheduler":
            raise ValueError(f"scheduler _class_name = {name!r}{where}: the exact flow Euler reads EasyAnimate V5.1's "
                             f"'FlowMatchEulerDiscreteScheduler' only (samplers.SchedulerConfig reads V5's "
                             f"DDPM-family configs).")
        values = {
            "num_train_timesteps": raw.get("num_train_timesteps", 1000),
            "shift": raw.get("shift", 3.0),
            "use_dynamic_shifting": raw.get("use_dynamic_shifting", True),
        }
        steps, shift, dynamic = values["num_train_timesteps"], values["shift"], values["use_dynamic_shifting"]
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
            raise ValueError(f"scheduler num_train_timesteps = {steps!r}{where}: expected an integer >= 2.")
        if isinstance(shift, bool) or not isinstance(shift, (int, float)) or not math.isfinite(shift) or shift <= 0:
            raise ValueError(f"scheduler shift = {shift!r}{where}: expected a positive finite number.")
        if not isinstance(dynamic, bool):
            raise ValueError(f"scheduler use_dynamic_shifting = {dynamic!r}{where}: expected true or false (a JSON "
                             f"boolean, without quotes).")
        return cls(**values)

    @property
    def effective_shift(self) -> float:
        """The constant shift s of ``s * sigma / (1 + (s - 1) * sigma)`` this schedule applies (e with mu = 1)."""
        return math.exp(self.mu) if self.use_dynamic_shifting else float(self.shift)

    def _shift(self, sigmas: torch.Tensor) -> torch.Tensor:
        if self.use_dynamic_shifting:
            return math.exp(self.mu) / (math.exp(self.mu) + (1.0 / sigmas - 1.0))
        return self.shift * sigmas / (1.0 + (self.shift - 1.0) * sigmas)

    def schedule(self, steps: int, strength: float = 1.0, device: torch.device | None = None) -> FlowSchedule:
        """The schedule of ``steps`` steps; with ``strength`` < 1 only its last ``int(steps * strength)`` steps."""
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps = {steps!r}: expected an integer >= 1.")
        if not 0.0 < strength <= 1.0:
            raise ValueError(f"strength = {strength!r}: expected a value in (0, 1].")
        n = self.num_train_timesteps
        base = torch.linspace(1.0, 1.0 / n, steps, dtype=torch.float64)
        sigmas = self._shift(base).to(torch.float32)
        sigmas = torch.cat([sigmas, sigmas.new_zeros(1)])
        start = steps - min(int(steps * strength), steps)
        if start >= steps:
            raise ValueError(f"strength = {strength} with {steps} steps leaves no step to run: "
                             f"use a strength of at least {1.0 / steps:.3f} or more steps.")
        sigmas = sigmas[start:].to(device)
        return FlowSchedule(sigmas=sigmas, timesteps=sigmas[:-1] * n)

    @staticmethod
    def step(velocity: torch.Tensor, schedule: FlowSchedule, index: int, sample: torch.Tensor) -> torch.Tensor:
        """One Euler step from ``schedule.sigmas[index]`` to ``[index + 1]``, in fp32, returned in velocity's dtype."""
        dt = schedule.sigmas[index + 1] - schedule.sigmas[index]
        return (sample.float() + dt * velocity.float()).to(velocity.dtype)

    @staticmethod
    def add_noise(clean: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        """x_sigma = (1 - sigma) * x0 + sigma * noise (the video-to-video start point)."""
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=clean.device)
        return ((1.0 - sigma) * clean.float() + sigma * noise.float()).to(clean.dtype)
