"""The options of a LoRA training run, checked, and the ones that shape its loss curve."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from ..checks import check_seed, finite_number
from .buckets import BucketOptions

MIXED_PRECISIONS = ("no", "fp16", "bf16")
LR_SCHEDULES = ("constant", "linear", "cosine")
SAVE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
BASE_DTYPE = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# Options that shape the loss curve: a resumed run must use the same values.
_CURVE_FIELDS = ("data", "data_root", "default_caption", "model", "rank", "alpha", "target_modules", "learning_rate",
                 "lr_schedule", "lr_warmup_steps", "batch_size", "gradient_accumulation", "weight_decay",
                 "adam_epsilon", "max_grad_norm", "mixed_precision", "fp8_base", "seed", "buckets", "caption_dropout",
                 "i2v_ratio", "cache")


@dataclass(frozen=True)
class TrainingConfig:
    data: Path  # metadata JSON or a folder of captioned images/videos
    model: str  # model folder, or "demo"
    output: Path
    name: str | None = None  # final file <output>/<name>.safetensors; default: the output folder's name
    data_root: Path | None = None
    default_caption: str = ""  # for files of a dataset folder without a .txt caption
    steps: int = 1000
    rank: int = 128
    alpha: float = 64.0
    target_modules: tuple[str, ...] = ()  # regular expressions; empty: every linear (the reference)
    learning_rate: float = 1e-4
    lr_schedule: str = "constant"
    lr_warmup_steps: int = 0
    batch_size: int = 1
    gradient_accumulation: int = 1
    weight_decay: float = 5e-2
    adam_epsilon: float = 1e-10
    max_grad_norm: float = 0.05  # 0 turns clipping off
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    fp8_base: bool = False
    seed: int = 42
    buckets: BucketOptions = field(default_factory=BucketOptions)
    caption_dropout: float = 0.1
    i2v_ratio: float = 0.5  # InP models: share of video samples trained with the first frame known
    cache: bool = True
    cache_dir: Path | None = None  # default <output>/cache
    checkpoint_every: int = 100
    checkpoints_keep: int = 3  # 0 keeps all
    resume: bool = False
    validation_prompts: tuple[str, ...] = ()
    validation_every: int = 0  # 0: only after the last step
    validation_steps: int = 25
    validation_size: tuple[int, int, int] = (672, 384, 49)  # width, height, frames
    validation_guidance: float = 6.0
    save_dtype: str = "bfloat16"

    def checked(self) -> "TrainingConfig":
        for name in ("steps", "batch_size", "gradient_accumulation", "checkpoint_every", "validation_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} = {value!r}: expected an integer >= 1.")
        if self.mixed_precision not in MIXED_PRECISIONS:
            raise ValueError(f"mixed_precision = {self.mixed_precision!r}: expected one of {MIXED_PRECISIONS}.")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule = {self.lr_schedule!r}: expected one of {LR_SCHEDULES}.")
        if self.save_dtype not in SAVE_DTYPES:
            raise ValueError(f"save_dtype = {self.save_dtype!r}: expected one of {sorted(SAVE_DTYPES)}.")
        finite_number("learning_rate", self.learning_rate, low=0.0, low_open=True, hint="1e-4 is the reference's.")
        finite_number("alpha", self.alpha, low=0.0, low_open=True, hint="Half the rank is usual.")
        finite_number("validation_guidance", self.validation_guidance, low=0.0)
        check_seed(self.seed)
        for name in ("weight_decay", "adam_epsilon", "max_grad_norm"):
            finite_number(name, getattr(self, name), low=0.0)
        for name in ("caption_dropout", "i2v_ratio"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} = {getattr(self, name)!r}: expected a value in [0, 1].")
        if self.fp8_base and self.mixed_precision != "bf16":
            raise ValueError("fp8 base weights compute in bf16: use mixed precision bf16 with them.")
        self.buckets.checked()

        def absolute(path: Path | None) -> Path | None:  # a resumed run may start from another directory
            return None if path is None else Path(path).expanduser().resolve()

        return replace(self, data=absolute(self.data), data_root=absolute(self.data_root),
                       output=absolute(self.output), cache_dir=absolute(self.cache_dir),
                       model=self.model if self.model == "demo" else str(absolute(Path(self.model))))

    @property
    def lora_path(self) -> Path:
        return self.output / f"{self.name or self.output.resolve().name}.safetensors"

    def curve_fingerprint(self) -> dict:
        values = {name: getattr(self, name) for name in _CURVE_FIELDS}
        values["buckets"] = asdict(self.buckets)
        if self.lr_schedule != "constant":  # the schedule's shape depends on the total
            values["steps"] = self.steps
        return json.loads(json.dumps(values, default=str))


def lr_factor(schedule: str, warmup: int, total: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total - warmup)
        if schedule == "linear":
            return max(0.0, 1.0 - progress)
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return 1.0

    return factor
