"""The samplers a model folder's ``scheduler/scheduler_config.json`` allows, as diffusers scheduler objects.

Two families (reference section 5.1). V5.1 ships a flow-matching config: "Flow" is our exact flow Euler (the
released schedule, the default), "Flow UniPC" and "Flow DPM++" are diffusers' multistep solvers on flow sigmas with
the same shift (e, the released dynamic shift at mu = 1) and the model's flow prediction (v = noise - x0). V5 ships a
DDPM-family config: "Euler", "Euler A", "DPM++", "PNDM" and "DDIM" are the diffusers classes the official nodes
offer, each built ``from_config`` of that file, so the beta schedule and the prediction type (epsilon or v) are the
file's. Every sampler is a fresh, stateful scheduler object per run; :class:`ExactFlowEuler` gives our exact flow
Euler the same interface, so the denoise loop has one shape for all of them.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from .scheduler import FlowMatchEulerScheduler

FLOW_SAMPLERS = ("Flow", "Flow UniPC", "Flow DPM++")
DDPM_SAMPLERS = {
    "Euler": "EulerDiscreteScheduler",
    "Euler A": "EulerAncestralDiscreteScheduler",
    "DPM++": "DPMSolverMultistepScheduler",
    "PNDM": "PNDMScheduler",
    "DDIM": "DDIMScheduler",
}
SAMPLER_NAMES = (*FLOW_SAMPLERS, *DDPM_SAMPLERS)
FLOW_CLASSES = ("FlowMatchEulerDiscreteScheduler",)
DDPM_CLASSES = ("DDPMScheduler", *DDPM_SAMPLERS.values())
PREDICTION_TYPES = ("epsilon", "v_prediction")
# The official V5 workflows sample with DDIM; V5.1's nodes default to Flow.
DEFAULT_SAMPLER = {"flow": "Flow", "ddpm": "DDIM"}
_FLOW_SOLVERS = {"Flow UniPC": "UniPCMultistepScheduler", "Flow DPM++": "DPMSolverMultistepScheduler"}
_DDPM_BOOLEANS = ("clip_sample", "set_alpha_to_one", "skip_prk_steps", "thresholding", "rescale_betas_zero_snr",
                  "use_karras_sigmas")
_DDPM_NUMBERS = ("beta_start", "beta_end")


def known_sampler(name: str) -> str:
    """``name`` when it is one of :data:`SAMPLER_NAMES`; else a ValueError naming them."""
    if name not in SAMPLER_NAMES:
        raise ValueError(f"sampler {name!r} is not one of {', '.join(SAMPLER_NAMES)}.")
    return name


def sampler_name(text: str) -> str:
    """The sampler named ``text`` in any case, with '_' or '-' for spaces ("ddim", "euler_a", "flow-unipc")."""
    wanted = " ".join(text.replace("_", " ").replace("-", " ").split()).lower()
    for name in SAMPLER_NAMES:
        if name.lower() == wanted:
            return name
    return known_sampler(text)


def _family_of(class_name: str, where: str) -> str:
    if class_name in FLOW_CLASSES:
        return "flow"
    if class_name in DDPM_CLASSES:
        return "ddpm"
    raise ValueError(f"scheduler _class_name = {class_name!r}{where} is not supported: EasyAnimate V5.1 folders name "
                     f"{', '.join(FLOW_CLASSES)} and V5 folders one of {', '.join(DDPM_CLASSES)}. Use the "
                     f"scheduler_config.json that came with the model.")


def _check_ddpm(raw: dict[str, Any], where: str) -> None:
    prediction = raw.get("prediction_type", "epsilon")
    if prediction not in PREDICTION_TYPES:
        raise ValueError(f"scheduler prediction_type = {prediction!r}{where}: EasyAnimate V5 models predict one of "
                         f"{', '.join(PREDICTION_TYPES)}.")
    steps = raw.get("num_train_timesteps", 1000)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
        raise ValueError(f"scheduler num_train_timesteps = {steps!r}{where}: expected an integer >= 2.")
    for key in _DDPM_BOOLEANS:
        if key in raw and not isinstance(raw[key], bool):
            raise ValueError(f"scheduler {key} = {raw[key]!r}{where}: expected true or false (a JSON boolean, "
                             f"without quotes).")
    for key in _DDPM_NUMBERS:
        value = raw.get(key, 0.001)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise ValueError(f"scheduler {key} = {value!r}{where}: expected a positive finite number.")


@dataclass(frozen=True)
class SchedulerConfig:
    """A model folder's scheduler config: its family ("flow" for V5.1, "ddpm" for V5) and the samplers it allows.

    ``flow`` is the exact flow Euler of a flow config; ``raw`` the file's contents (DDPM classes are built from it).
    """

    family: str
    flow: FlowMatchEulerScheduler | None = None
    raw: dict[str, Any] = field(default_factory=dict, compare=False)
    source: str | None = None

    @classmethod
    def from_config_dict(cls, raw: dict[str, Any], source: str | None = None) -> "SchedulerConfig":
        """Check ``scheduler_config.json``'s contents; an unsupported class is refused naming the supported ones."""
        where = f" in {source}" if source else ""
        class_name = raw.get("_class_name", FLOW_CLASSES[0])
        family = _family_of(class_name, where)
        if family == "flow":
            return cls("flow", FlowMatchEulerScheduler.from_config_dict(raw, source), dict(raw), source)
        _check_ddpm(raw, where)
        config = cls("ddpm", None, dict(raw), source)
        config.build(DEFAULT_SAMPLER["ddpm"])  # the values diffusers itself refuses, before any weight is read
        return config

    @classmethod
    def of(cls, scheduler: "SchedulerConfig | FlowMatchEulerScheduler") -> "SchedulerConfig":
        """``scheduler`` as a config (a bare exact flow Euler, as the core's callers pass it, is a flow config)."""
        return scheduler if isinstance(scheduler, SchedulerConfig) else cls("flow", scheduler)

    @property
    def samplers(self) -> tuple[str, ...]:
        return FLOW_SAMPLERS if self.family == "flow" else tuple(DDPM_SAMPLERS)

    @property
    def default_sampler(self) -> str:
        return DEFAULT_SAMPLER[self.family]

    @property
    def description(self) -> str:
        if self.family == "flow":
            return "a flow-matching scheduler config (EasyAnimate V5.1)"
        return (f"a DDPM-family scheduler config ({self.raw.get('_class_name')}, "
                f"{self.raw.get('prediction_type', 'epsilon')} prediction: EasyAnimate V5)")

    def check_sampler(self, name: str | None, steps: int | None = None) -> str:
        """The sampler ``name`` (None: this family's default), refused by name when it does not fit the family or,
        given ``steps``, cannot make a schedule of that many steps."""
        name = known_sampler(self.default_sampler if name is None else name)
        if name not in self.samplers:
            where = f" ({self.source})" if self.source else ""
            raise ValueError(f"sampler {name!r} does not fit {self.description}{where}: choose one of "
                             f"{', '.join(self.samplers)} (default {self.default_sampler}).")
        if steps is not None:
            set_timesteps(as_stepper(self.build(name)), steps)
        return name

    def build(self, name: str | None = None):
        """A fresh scheduler object for one run of sampler ``name`` (None: the family's default): our exact flow
        Euler for "Flow", otherwise a diffusers scheduler."""
        import diffusers

        name = self.check_sampler(name)
        if name == "Flow":
            return self.flow
        if name in _FLOW_SOLVERS:
            solver = getattr(diffusers, _FLOW_SOLVERS[name])
            if "use_flow_sigmas" not in inspect.signature(solver.__init__).parameters:
                raise ValueError(f"sampler {name!r} needs diffusers' flow sigmas in {solver.__name__} (diffusers "
                                 f"{diffusers.__version__} has none): update diffusers or use 'Flow'.")
            return solver(num_train_timesteps=self.flow.num_train_timesteps, prediction_type="flow_prediction",
                          use_flow_sigmas=True, flow_shift=self.flow.effective_shift)
        solver = getattr(diffusers, DDPM_SAMPLERS[name])
        accepted = inspect.signature(solver.__init__).parameters
        try:  # only the keys this class takes: the others are another class's options, not an error
            return solver.from_config({k: v for k, v in self.raw.items() if k in accepted})
        except (ValueError, TypeError, NotImplementedError) as exc:
            where = f" {self.source}" if self.source else " the scheduler config"
            raise ValueError(f"{solver.__name__} cannot be built from{where}: {exc}") from exc


class ExactFlowEuler:
    """Our exact flow Euler (:class:`FlowMatchEulerScheduler`, bit for bit) behind the part of diffusers' scheduler
    interface the denoise loop uses. One object per run: it counts its steps."""

    order = 1
    init_noise_sigma = 1.0

    def __init__(self, flow: FlowMatchEulerScheduler):
        self.flow = flow
        self.schedule = None
        self.timesteps = None
        self._index = 0

    def set_timesteps(self, num_inference_steps: int, device: torch.device | str | None = None) -> None:
        self.schedule = self.flow.schedule(num_inference_steps, device=device)
        self.timesteps = self.schedule.timesteps
        self._index = 0

    def set_begin_index(self, begin_index: int) -> None:
        self._index = begin_index

    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        return sample

    def add_noise(self, clean: torch.Tensor, noise: torch.Tensor, timesteps=None) -> torch.Tensor:
        # At the sigma where the run begins (set_begin_index), as diffusers' flow schedulers read it.
        return self.flow.add_noise(clean, noise, self.schedule.sigmas[self._index])

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, return_dict: bool = False):
        prev_sample = self.flow.step(model_output, self.schedule, self._index, sample)
        self._index += 1
        return (prev_sample,)


def as_stepper(scheduler):
    """The object the loop steps with: a diffusers scheduler as it is; our exact flow Euler (or a
    :class:`SchedulerConfig`, by its default sampler) in :class:`ExactFlowEuler`."""
    if isinstance(scheduler, SchedulerConfig):
        scheduler = scheduler.build()
    if isinstance(scheduler, FlowMatchEulerScheduler):
        return ExactFlowEuler(scheduler)
    return scheduler


def set_timesteps(scheduler, steps: int, device: torch.device | str | None = None) -> None:
    """``scheduler.set_timesteps(steps)``; a number of steps the scheduler cannot schedule is refused by name."""
    try:
        scheduler.set_timesteps(steps, device=device)
    except (ValueError, IndexError) as exc:
        if isinstance(scheduler, ExactFlowEuler):
            raise
        # PNDM without skip_prk_steps runs a Runge-Kutta warm-up of 3 steps and fails below 4 with a numpy error.
        raise ValueError(f"{type(scheduler).__name__} cannot make a schedule of {steps} steps "
                         f"({str(exc).strip()}): use more steps (PNDM needs 4 or more) or another sampler.") from exc


def step_kwargs(scheduler, generator: torch.Generator | None) -> dict[str, Any]:
    """The ``generator`` for the schedulers whose step draws noise (Euler A, DDIM with eta > 0, SDE solvers)."""
    takes = inspect.signature(scheduler.step).parameters
    return {"generator": generator} if generator is not None and "generator" in takes else {}
