"""Attention kernels the transformer can be built with: PyTorch's SDPA (default), flash-attn and SageAttention.

:func:`select_attention` returns the function for the layer namespace (``ops.LayerOps.attention``): the asked
backend when its package imports and the device can run it, else SDPA with the reason logged, never an import
error. A chosen kernel that fails on a call (a head size or dtype it does not take) falls back to SDPA for the
rest of the run, once logged. Inside ComfyUI its own optimized attention decides instead (``nodes/_native.py``:
the ``--use-sage-attention`` / ``--use-flash-attention`` flags).
"""

from __future__ import annotations

import importlib
import logging

import torch

from .ops import Attention, sdpa_attention

logger = logging.getLogger(__name__)

ATTENTION_BACKENDS = ("sdpa", "flash", "sage", "auto")
_PACKAGES = {"flash": "flash_attn", "sage": "sageattention"}
_MIN_CAPABILITY = (8, 0)  # flash-attn 2 and SageAttention: Ampere and newer


def _flash(module) -> Attention:
    def attention(q, k, v):
        # [B, heads, N, hd] -> flash-attn's [B, N, heads, hd], which is also our output layout
        return module.flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=False)

    return attention


def _sage(module) -> Attention:
    def attention(q, k, v):
        return module.sageattn(q, k, v, tensor_layout="HND", is_causal=False).transpose(1, 2)

    return attention


_BUILDERS = {"flash": _flash, "sage": _sage}


def unavailable_reason(name: str, device: torch.device, dtype: torch.dtype) -> str | None:
    """Why ``name`` cannot run here, or None when it can."""
    if device.type != "cuda":
        return f"it needs a CUDA GPU (the model computes on {device})"
    if dtype not in (torch.float16, torch.bfloat16):
        return f"it computes in fp16 or bf16 only (the model computes in {dtype})"
    capability = torch.cuda.get_device_capability(device)
    if capability < _MIN_CAPABILITY:
        return f"it needs compute capability 8.0 or newer (this GPU has {capability[0]}.{capability[1]})"
    try:
        importlib.import_module(_PACKAGES[name])
    except ImportError as exc:
        return f"the package {_PACKAGES[name]} does not import ({exc}); pip install {_PACKAGES[name]}"
    return None


def _with_fallback(name: str, kernel: Attention) -> Attention:
    failed = []

    def attention(q, k, v):
        if not failed:
            try:
                return kernel(q, k, v)
            except (RuntimeError, ValueError, TypeError, AssertionError) as exc:
                failed.append(exc)
                logger.warning("%s attention failed (%s): using PyTorch's SDPA from here on.", name, exc)
        return sdpa_attention(q, k, v)

    return attention


def select_attention(name: str, device: torch.device | str, dtype: torch.dtype) -> tuple[Attention, str]:
    """(attention function, backend used) for ``name`` in :data:`ATTENTION_BACKENDS` on ``device`` in ``dtype``."""
    if name not in ATTENTION_BACKENDS:
        raise ValueError(f"attention backend {name!r}: expected one of {ATTENTION_BACKENDS}.")
    device = torch.device(device)
    wanted = ("sage", "flash") if name == "auto" else (() if name == "sdpa" else (name,))
    reasons = []
    for backend in wanted:
        reason = unavailable_reason(backend, device, dtype)
        if reason is None:
            module = importlib.import_module(_PACKAGES[backend])
            logger.info("Attention: %s (%s).", backend, _PACKAGES[backend])
            return _with_fallback(backend, _BUILDERS[backend](module)), backend
        reasons.append(f"{backend}: {reason}")
    if name != "sdpa":
        log = logger.info if name == "auto" else logger.warning
        log("Attention: PyTorch SDPA instead of %s; %s.", name, "; ".join(reasons))
    return sdpa_attention, "sdpa"
