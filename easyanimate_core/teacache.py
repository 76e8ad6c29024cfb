"""TeaCache for EasyAnimate: skip the transformer blocks on steps whose input barely changed.

At every step the first block's modulated video input is compared with the previous step's (relative L1
distance), rescaled by the polynomial the official release fitted for its V5.1 models, and accumulated; while the
sum stays under the threshold the step reuses the residual the blocks and output norms added last time (output
projection excluded), and once it passes, the step is computed and the sum restarts. The first ``start_steps``
and the last ``end_steps`` steps are always computed. As in the reference, one decision covers the whole batch of
a step (the negative and positive halves of classifier-free guidance together).

One :class:`TeaCache` lives for one sampling run: the sampler makes it, passes it to every transformer call and
drops it in a ``finally``; it is never stored on the model. Residuals are kept per ``key`` (the batch layout: CFG
pairs, a lone conditional pass, ComfyUI's cond/uncond chunks), so a step whose layout differs from the last
computed one is computed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from .checks import finite_number
from .config import TransformerConfig

logger = logging.getLogger(__name__)

# aigc-apps/EasyAnimate, easyanimate/models/transformer3d.py, get_teacache_coefficients() at commit
# c2a70d17daa1549a22129d0cd0e02053ecccd75c: fitted on T2V CompBench videos of EasyAnimateV5.1-7b-zh-InP and
# -12b-zh-InP, "applied to both the T2V and the Control models" of each size. Highest power first (np.poly1d).
COEFFICIENTS = {
    "7b": (1.07862322, -4.19362456, 3.06725828, 0.33161686, 0.02374758),
    "12b": (-10.47857366, 8.33844143, -0.78477557, 0.68798618, 0.0136149),
}
DEFAULT_THRESHOLD = 0.10  # the official samplers' default (its V5.1 workflows use 0.08)


def coefficients_for(config: TransformerConfig) -> tuple[float, ...]:
    """The 7B models have fewer MMDiT blocks than blocks (18 of 36); the 12B models are MMDiT throughout."""
    return COEFFICIENTS["7b" if config.mmdit_layers < config.num_layers else "12b"]


def _rescale(coefficients: tuple[float, ...], x: float) -> float:
    value = 0.0
    for c in coefficients:
        value = value * x + c
    return value


@dataclass(frozen=True)
class TeaCacheOptions:
    """What the user chooses: ``threshold`` 0 is off; ``start_steps`` / ``end_steps`` are always computed (the
    reference computes the first and the last)."""

    threshold: float = DEFAULT_THRESHOLD
    start_steps: int = 1
    end_steps: int = 1

    def __post_init__(self) -> None:
        finite_number("TeaCache threshold", self.threshold, low=0.0,
                      hint=f"0 is off; {DEFAULT_THRESHOLD} is the official default.")
        for name in ("start_steps", "end_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"TeaCache {name} = {value!r}: expected 0 or more steps always computed.")

    def run(self, steps: int, config: TransformerConfig) -> TeaCache | None:
        """The cache of one run of ``steps`` steps, or None when off."""
        if self.threshold <= 0:
            return None
        if config.family == "V5":
            logger.warning("TeaCache on the %s uses the V5.1 coefficients of the same size: the official code "
                           "publishes none for V5, so which steps are reused may differ from a fitted cache; lower "
                           "the threshold if the video changes too much.", config.variant_description)
        return TeaCache(self, steps, coefficients_for(config))


@dataclass
class TeaCache:
    """The state of one run. ``steps`` is the number of steps the sampler will take."""

    options: TeaCacheOptions
    steps: int
    coefficients: tuple[float, ...]
    step: int = -1
    evaluations: int = 0  # transformer calls that ran the blocks
    skipped: list[int] = field(default_factory=list)  # steps that reused the residual
    _timestep: float | None = None
    _accumulated: float = 0.0
    _previous: torch.Tensor | None = None
    _reuse: bool = False
    _residuals: dict = field(default_factory=dict)

    def reuse(self, timestep: float, modulated: torch.Tensor, key) -> torch.Tensor | None:
        """The residual to add instead of running the blocks, or None to run them (then :meth:`store`).

        The first call at a new ``timestep`` decides for every call of that step."""
        if timestep != self._timestep:
            self._timestep = timestep
            self.step += 1
            self._reuse = False
            options = self.options
            if (self._previous is not None and options.start_steps <= self.step
                    and self.step < self.steps - options.end_steps):
                previous = self._previous
                distance = ((modulated - previous).abs().mean() / previous.abs().mean()).item()
                self._accumulated += _rescale(self.coefficients, distance)
                self._reuse = self._accumulated < options.threshold
            if self._reuse:
                self.skipped.append(self.step)
            else:
                self._accumulated = 0.0
            self._previous = modulated
        residual = self._residuals.get(key) if self._reuse else None
        if residual is None:
            self.evaluations += 1
        return residual

    def store(self, key, residual: torch.Tensor) -> None:
        self._residuals[key] = residual

    def summary(self) -> str:
        return (f"TeaCache (threshold {self.options.threshold}): {self.evaluations} transformer evaluations for "
                f"{self.steps} steps; reused steps {self.skipped or 'none'}")
