"""Helpers shared by the bench scripts: repo import path, random weights, diffusers configs, timing, tables, and
the peak-memory tracker that counts the tensors a call creates."""

from __future__ import annotations

import dataclasses
import inspect
import statistics
import sys
import time
import weakref
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from easyanimate_core import TransformerConfig


def random_fill_(module: torch.nn.Module, seed: int, std: float = 0.02) -> torch.nn.Module:
    """Seeded normal weights (norm weights around 1) in place, so no layer is an identity or zero by default.

    Works on modules made with ``to_empty``: every parameter and floating buffer is written, on its own device.
    """
    tensors = [(n, t) for n, t in [*module.named_parameters(), *module.named_buffers()] if t.is_floating_point()]
    device = tensors[0][1].device
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, tensor in tensors:
            noise = torch.randn(tensor.shape, generator=gen, dtype=torch.float32, device=device) * std
            is_norm_weight = "norm" in name and name.endswith("weight") and ".linear." not in name
            tensor.copy_(noise + 1.0 if is_norm_weight else noise)
    return module


def diffusers_transformer_kwargs(config: TransformerConfig) -> dict:
    """Constructor arguments of diffusers' EasyAnimateTransformer3DModel for ``config``."""
    from diffusers import EasyAnimateTransformer3DModel

    accepted = inspect.signature(EasyAnimateTransformer3DModel.__init__).parameters
    return {k: v for k, v in dataclasses.asdict(config).items() if k in accepted}


def interleaved_times(fns: dict[str, Callable[[], object]], runs: int, warmup: int,
                      sync: Callable[[], None] = lambda: None) -> dict[str, list[float]]:
    """Seconds of each call; the functions take turns (order flipped every round) so background load hits all alike.

    ``sync`` waits for queued device work (``torch.cuda.synchronize`` on a GPU) before each clock reading.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for run in range(runs):
        for name, fn in (reversed(fns.items()) if run % 2 else fns.items()):
            sync()
            start = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - start)
    return times


def paired_ratio(times: dict[str, list[float]], a: str, b: str) -> float:
    """Median over runs of ``a``'s time over ``b``'s time in the same round: robust to load that comes and goes."""
    return statistics.median(x / y for x, y in zip(times[a], times[b]))


def markdown_table(headers: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def machine_description() -> str:
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else ["?"]
    return (f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
            f"load average {' '.join(load)}")


class PeakTracker(TorchDispatchMode):
    """Peak bytes of the tensor storages created while the mode is active and still alive.

    Storages of ``existing`` tensors (the weights, the input) are never counted, even when an op returns a view
    of them.
    """

    def __init__(self, existing: tuple[torch.Tensor, ...] = ()):
        super().__init__()
        self._live: set[int] = {t.untyped_storage().data_ptr() for t in existing}
        self.now = self.peak = 0

    def _free(self, key: int, size: int) -> None:
        self._live.discard(key)
        self.now -= size

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            key = storage.data_ptr()
            if key and key not in self._live:
                self._live.add(key)
                self.now += storage.nbytes()
                weakref.finalize(storage, self._free, key, storage.nbytes())
        self.peak = max(self.peak, self.now)
        return out
