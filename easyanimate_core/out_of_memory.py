"""Out-of-memory errors retold as a plan: where it happened, what was being allocated, and what to change, cheapest
change first.

Every heavy stage (text encoding, VAE encode, sampling, VAE decode) runs inside :func:`explain_out_of_memory`. A GPU
out-of-memory error, or a host allocation failure (``MemoryError``, PyTorch's "DefaultCPUAllocator: can't allocate
memory"), leaves it as one :class:`OutOfMemoryPlan`: a ``torch.OutOfMemoryError``, so ComfyUI still recognises it
as one (and frees its models), whose message is the plan. The original error's finished frames are cleared: they
hold the tensors that filled the memory, which must die with it. The memory contexts the stage ran in put every
model back where it was on the way out, as for any other error.
"""

from __future__ import annotations

import re
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

# torch.OutOfMemoryError exists from torch 2.5; ComfyUI installs may have older ones with only the CUDA one.
OutOfMemoryError = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)

# What host allocation failures say: PyTorch's CPU allocator, the C++ runtime, the OS (ENOMEM).
_HOST_FAILURES = ("can't allocate memory", "std::bad_alloc", "cannot allocate memory", "not enough memory")

# Each memory mode of the command line and the loader node, the next one down in VRAM, and what that costs.
_NEXT_MODE = {
    "full": ("model_cpu_offload", "each model moves to the GPU only while it runs: about as fast, more host RAM"),
    "model_cpu_offload": ("model_cpu_offload_and_qfloat8",
                          "fp8 weights for the transformer and the text encoder: about half their VRAM, about as "
                          "fast, a small change in the output"),
    "model_cpu_offload_and_qfloat8": ("block_swap",
                                      "bf16 blocks streamed from host RAM: a few GB of VRAM, slower by the copies"),
    "model_cpu_offload_and_fp8_cast": ("block_swap",
                                       "bf16 blocks streamed from host RAM: a few GB of VRAM, slower by the copies"),
    "block_swap": ("sequential_cpu_offload", "layer by layer: the least VRAM, several times slower"),
}


def is_host_failure(exc: BaseException) -> bool:
    """A failed allocation of host RAM (Python's, PyTorch's CPU allocator's, the C++ runtime's, the OS's)."""
    return isinstance(exc, MemoryError) or (isinstance(exc, RuntimeError)
                                            and any(s in str(exc).lower() for s in _HOST_FAILURES))


def is_out_of_memory(exc: BaseException) -> bool:
    """A device out-of-memory error or a host allocation failure."""
    return (isinstance(exc, OutOfMemoryError) or is_host_failure(exc)
            or (isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()))


def requested_allocation(exc: BaseException) -> str | None:
    """What the failed allocation asked for, as the error states it ("2.00 GiB"), or None."""
    text = str(exc)
    match = re.search(r"[Tt]ried to allocate ([\d.]+ ?[KMGT]i?B)", text)
    if match:
        return match.group(1)
    match = re.search(r"allocate (?:memory: you tried to allocate )?(\d+) bytes", text)
    if match:
        return f"{int(match.group(1)) / 2**30:.2f} GiB"
    return None


@dataclass(frozen=True)
class Workload:
    """The video a stage works on, for the "fewer frames or a smaller size" advice (None: not known there)."""

    width: int | None = None
    height: int | None = None
    frames: int | None = None


class OutOfMemoryPlan(OutOfMemoryError):
    """An out-of-memory error whose message says where it happened and what to change."""

    def __init__(self, stage: str, device: str, allocation: str | None, plan: list[str], reason: str):
        self.stage, self.device, self.allocation, self.plan = stage, device, allocation, plan
        lines = [f"Out of {'host RAM' if device == 'cpu' else f'memory on {device}'} during {stage}"
                 + (f" while allocating {allocation}" if allocation else "") + f" ({reason})."]
        lines.append("What to change, cheapest first:")
        lines += [f"  {i}. {step}" for i, step in enumerate(plan, 1)]
        super().__init__("\n".join(lines))


def _smaller(workload: Workload) -> str | None:
    if not (workload.width and workload.height and workload.frames):
        return None
    frames = max(1, (workload.frames - 1) // 2 // 4 * 4 + 1)  # half the frames, still 4k + 1
    width = max(16, workload.width * 3 // 4 // 16 * 16)  # three quarters of each side, multiples of 16
    height = max(16, workload.height * 3 // 4 // 16 * 16)
    return (f"Fewer frames or a smaller size: memory grows with frames x width x height; e.g. {frames} frames "
            f"instead of {workload.frames}, or {width}x{height} instead of {workload.width}x{workload.height}.")


def plan_for(stage: str, device: str, memory_mode: str | None, workload: Workload, *, vae_tiles: bool,
             comfyui: bool) -> list[str]:
    """The changes that lower this stage's peak, cheapest first."""
    plan = []
    on_host = device == "cpu"
    if on_host:
        plan.append("Free host RAM: close other programs; the offload modes keep every model in RAM between uses, "
                    "and model_cpu_offload_and_qfloat8 keeps them in fp8 (about 19 GiB instead of 35 for the 12B).")
    elif memory_mode in _NEXT_MODE:
        mode, cost = _NEXT_MODE[memory_mode]
        where = "the memory_mode of EasyAnimate Model Loader" if comfyui else "--memory-mode"
        plan.append(f"Memory mode: {memory_mode} -> {mode} ({where}): {cost}.")
    elif comfyui and memory_mode is None:
        plan.append("Memory mode (EasyAnimate Model Loader): model_cpu_offload_and_qfloat8 or weight_dtype "
                    "fp8_e4m3fn stores the transformer in fp8 (about half its VRAM, about as fast, a small change "
                    "in the output); block_swap with fewer blocks_on_gpu, or sequential_cpu_offload, streams the "
                    "weights (slower by the copies).")
    elif memory_mode == "sequential_cpu_offload":
        plan.append("Memory mode: sequential_cpu_offload already keeps the least on the GPU; only the steps below "
                    "lower the peak further.")
    smaller = _smaller(workload)
    if smaller:
        plan.append(smaller)
    if vae_tiles:
        where = "tile_size on EasyAnimate Decode / Encode (e.g. 256)" if comfyui else "--tile-size 256"
        plan.append(f"Tiled VAE: smaller spatial tiles ({where}) lower the VAE's peak at the cost of some speed.")
    if comfyui:
        plan.append("Free other models: ComfyUI's \"Unload models\" (or POST /free), or start ComfyUI with "
                    "--lowvram so it streams what does not fit.")
    elif not on_host:
        plan.append("Free the GPU: close other programs that use it (nvidia-smi lists them).")
    return plan


@contextmanager
def explain_out_of_memory(stage: str, device: torch.device | str, *, memory_mode: str | None = None,
                          workload: Workload = Workload(), vae_tiles: bool = False,
                          comfyui: bool = False) -> Iterator[None]:
    """Run a stage; an out-of-memory error inside leaves as an :class:`OutOfMemoryPlan` (already planned ones
    pass through unchanged)."""
    try:
        yield
    except OutOfMemoryPlan:
        raise
    except BaseException as exc:  # noqa: BLE001 - only out-of-memory errors are retold, the rest re-raised
        if not is_out_of_memory(exc):
            raise
        on_host = is_host_failure(exc) or (torch.device(device).type == "cpu"
                                           and not isinstance(exc, torch.cuda.OutOfMemoryError))
        where = "cpu" if on_host else str(device)
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0].rstrip(".")
        tiles = vae_tiles and not getattr(exc, "tiles_exhausted", False)  # the smallest tiles already failed
        plan = OutOfMemoryPlan(stage, where, requested_allocation(exc),
                               plan_for(stage, where, memory_mode, workload, vae_tiles=tiles, comfyui=comfyui),
                               reason[:300])
        # The failed call's finished frames hold the tensors that filled the memory: let them go now.
        traceback.clear_frames(exc.__traceback__)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        raise plan from None
