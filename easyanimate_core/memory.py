"""Where models live between uses, as context managers that always put a model back.

``full``: every model stays on the compute device. ``model_cpu_offload``: each model (text encoder, transformer,
VAE) waits on the offload device and moves to the compute device only while it is used. Moving back happens in a
``finally``, so an interrupt or an error never leaves a model on the wrong device.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

MEMORY_MODES: tuple[str, ...] = ("full", "model_cpu_offload")


def module_bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))


@dataclass(frozen=True)
class Placement:
    mode: str
    compute: torch.device
    offload: torch.device
    # Called with the bytes a model needs before it moves to the compute device (ComfyUI frees other models).
    make_room: Callable[[int], None] | None = None

    def __post_init__(self) -> None:
        if self.mode not in MEMORY_MODES:
            raise ValueError(f"memory mode {self.mode!r}: expected one of {MEMORY_MODES}.")

    @property
    def resting_device(self) -> torch.device:
        return self.compute if self.mode == "full" else self.offload

    @contextmanager
    def active(self, module: nn.Module) -> Iterator[nn.Module]:
        """``module`` on the compute device for the block, back where it rests afterwards."""
        if self.mode == "full" or self.compute == self.offload:
            yield module
            return
        if self.make_room is not None:
            self.make_room(module_bytes(module))
        try:
            module.to(self.compute)
            yield module
        finally:
            module.to(self.offload)
            if self.compute.type == "cuda":
                torch.cuda.empty_cache()
