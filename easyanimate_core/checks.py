"""Checks of user-given numbers, shared by the command line and the nodes, run before any heavy work.

Each check names the setting and the value it refuses, and says what is accepted. NaN and infinities are refused
by name (a NaN compares false with every bound, so range checks alone let it through), and so is a bool where a
number is meant. :func:`check_workload` refuses a video size no machine here could hold, with the memory it needs.
"""

from __future__ import annotations

import math
import os
from numbers import Integral, Real

from .config import PUBLISHED_SIZES
from .video import latent_frames

SEED_MAX = 2**64 - 1  # torch.Generator.manual_seed takes 64 bits; ComfyUI's seed widgets go as far
MAX_SIDE = 16384  # ComfyUI's MAX_RESOLUTION: no widget offers more
PUBLISHED_INNER_DIM = max(width for _, _, width in PUBLISHED_SIZES.values())  # the token width of the 7B and 12B
_GIB = 1024**3


def finite_number(name: str, value, *, low: float | None = None, high: float | None = None,
                  low_open: bool = False, hint: str = "") -> float:
    """``value`` as a float when it is a finite number in [low, high] (``low_open``: (low, high]); else a
    ValueError naming ``name``, the value and the accepted range, then ``hint``."""
    bounds = []
    if low is not None:
        bounds.append(f"{'>' if low_open else '>='} {low:g}")
    if high is not None:
        bounds.append(f"<= {high:g}")
    expected = "a finite number" + (f" {' and '.join(bounds)}" if bounds else "")
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError(f"{name} = {value!r}: expected {expected}.{hint and ' ' + hint}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{name} = {value!r} is not a finite number: expected {expected}.{hint and ' ' + hint}")
    if (low is not None and (number <= low if low_open else number < low)) or (high is not None and number > high):
        raise ValueError(f"{name} = {value!r}: expected {expected}.{hint and ' ' + hint}")
    return number


def whole_number(name: str, value, *, low: int, high: int | None = None, hint: str = "") -> int:
    """``value`` when it is an integer (not a bool) in [low, high]; else a ValueError naming ``name``."""
    expected = f"an integer from {low}" + (f" to {high}" if high is not None else " up")
    if isinstance(value, bool) or not isinstance(value, Integral) or value < low or (high is not None and value > high):
        raise ValueError(f"{name} = {value!r}: expected {expected}.{hint and ' ' + hint}")
    return int(value)


def check_seed(seed) -> int:
    return whole_number("seed", seed, low=0, high=SEED_MAX, hint="Any seed in that range gives a reproducible video.")


def workload_bytes(width: int, height: int, frames: int, *, inner_dim: int = PUBLISHED_INNER_DIM,
                   batch: int = 2) -> tuple[int, int]:
    """(decoded video, transformer activations) in bytes, a deliberately simple lower bound: the decoded IMAGE
    ``[F, H, W, 3]`` in float32, and 5 activations of ``[batch, tokens, inner_dim]`` in bf16 (the least the
    transformer holds at once, see ``EasyAnimateTransformer.activation_bytes``), with tokens = latent frames x
    (H / 16) x (W / 16)."""
    tokens = latent_frames(frames) * max(height // 16, 1) * max(width // 16, 1)
    return frames * height * width * 3 * 4, 5 * batch * tokens * inner_dim * 2


def machine_bytes() -> int:
    """Host RAM plus the memory of the largest GPU: what one run could use at most."""
    try:
        host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # not POSIX: ask psutil, which ComfyUI installs
        import psutil

        host = psutil.virtual_memory().total
    import torch

    gpus = [torch.cuda.get_device_properties(i).total_memory for i in range(torch.cuda.device_count())]
    return host + max(gpus, default=0)


def check_workload(width: int, height: int, frames: int, *, inner_dim: int = PUBLISHED_INNER_DIM) -> None:
    """Refuse a size beyond ComfyUI's widgets (a side over :data:`MAX_SIDE`) or one whose video and activations
    alone exceed this machine's memory, saying how much it would need."""
    video, activations = workload_bytes(width, height, frames, inner_dim=inner_dim)
    need = video + activations
    have = machine_bytes()
    if max(width, height) <= MAX_SIDE and need <= have:
        return
    why = (f"a side over {MAX_SIDE} pixels" if max(width, height) > MAX_SIDE
           else f"more than this machine's {have / _GIB:.1f} GiB (RAM and GPU together)")
    raise ValueError(
        f"{width}x{height} with {frames} frames would need at least {need / _GIB:,.1f} GiB ({video / _GIB:,.1f} GiB "
        f"for the decoded video in float32 and {activations / _GIB:,.1f} GiB of transformer activations, a simple "
        f"lower bound): {why}. The models were trained at 512 to 1024 pixels on the long side and up to 49 frames; "
        f"pick a size and frame count in that range.")
