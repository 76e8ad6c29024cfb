"""fp8 matmul: the large linears stored in float8_e4m3fn with one scale per output row, multiplied in fp8.

The command line's ``--fp8-matmul`` (``load_transformer(fp8="fp8_scaled")``) builds the transformer with
:class:`ScaledFp8Linear` and an fp8 storage dtype for the linears its ``HIGH_PRECISION`` does not keep; the
loader hands each weight to :meth:`ScaledFp8Linear.store_weight` as it is read, which quantizes it with a per-row
scale (the row's absolute maximum maps to fp8's largest value, 448). A call quantizes its input per token the same
way and runs ``torch._scaled_mm`` (fp8 tensor cores on compute capability 8.9 and newer: Ada, Hopper, Blackwell;
PyTorch's own kernel on the CPU). Where that cannot run (an older GPU, an fp16 or fp32 model, a side not a
multiple of 16) the layer dequantizes its weight to the input dtype and computes there, as fp8 storage does.
Inside ComfyUI the loader's ``weight_dtype = fp8_e4m3fn_fast`` is ComfyUI's own fp8 matmul instead.
"""

from __future__ import annotations

import functools
import logging

import torch
import torch.nn.functional as F
from torch import nn

from .ops import Linear

logger = logging.getLogger(__name__)

FP8 = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8).max
_MIN_CAPABILITY = (8, 9)


def row_scales(x: torch.Tensor) -> torch.Tensor:
    """[rows, k] -> [rows, 1] fp32 scales mapping each row's absolute maximum to FP8_MAX (never 0)."""
    return x.detach().float().abs().amax(dim=-1, keepdim=True).clamp(min=1e-12) / FP8_MAX


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[rows, k] -> (fp8 [rows, k], fp32 scales [rows, 1]) with x ~= fp8 * scales."""
    scales = row_scales(x)
    return (x.float() / scales).clamp(-FP8_MAX, FP8_MAX).to(FP8), scales


def scaled_mm_runs(x: torch.Tensor, layer: nn.Linear) -> bool:
    """Whether ``torch._scaled_mm`` takes this input and layer on this device (bf16 output with row scales)."""
    if x.dtype != torch.bfloat16 or layer.in_features % 16 or layer.out_features % 16:
        return False
    if x.device.type == "cpu":
        return True
    return x.device.type == "cuda" and torch.cuda.get_device_capability(x.device) >= _MIN_CAPABILITY


def _quantize_input(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`quantize_rows` of the activations. On a GPU it runs as one fused kernel (compiled once, for any
    number of rows): in eager PyTorch its fp32 temporaries cost twice the fp8 matmul they feed (H200, 12B shapes:
    1.25 ms against 0.38 ms for 26208 x 3072 rows; fused 0.28 ms), which made eager fp8 slower than bf16."""
    if rows.device.type != "cuda":
        return quantize_rows(rows)
    return _gpu_quantizer()(rows)


@functools.cache
def _gpu_quantizer():
    """The fused quantizer where torch.compile can build GPU kernels (Triton), else the eager one, said once."""
    from torch.utils._triton import has_triton

    if has_triton():
        return torch.compile(quantize_rows, dynamic=True)
    logger.warning("fp8 matmul: Triton is not installed, so the activations are quantized in eager PyTorch, which "
                   "costs about as much as the fp8 matmul saves; install triton (triton-windows on Windows) for the "
                   "fused kernel.")
    return quantize_rows


class ScaledFp8Linear(Linear):
    """A Linear of the default namespace that, once given a weight through :meth:`store_weight`, keeps it as fp8
    ``weight`` [out, in] with ``weight_scale`` [out, 1] (fp32) and multiplies in fp8. Before that (the layers kept
    in high precision) it is the plain Linear. The scale is not part of the state dict: the checkpoint stays the
    one on disk, quantized as it is read."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.register_buffer("weight_scale", None, persistent=False)

    def store_weight(self, weight: torch.Tensor) -> None:
        fp8, scales = quantize_rows(weight)
        self.weight = nn.Parameter(fp8, requires_grad=False)
        self.weight_scale = scales

    def dequantized_weight(self, dtype: torch.dtype) -> torch.Tensor:
        return (self.weight.float() * self.weight_scale).to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight_scale is None:
            return super().forward(x)
        if not scaled_mm_runs(x, self):
            return F.linear(x, self.dequantized_weight(x.dtype), None if self.bias is None else self.bias.to(x.dtype))
        rows = x.reshape(-1, self.in_features)  # [..., in] -> [M, in]
        x_fp8, x_scales = _quantize_input(rows)
        # [M, in] fp8 @ [in, out] fp8 (the row-major weight, transposed: column-major as the kernel wants)
        out = torch._scaled_mm(x_fp8, self.weight.t(), scale_a=x_scales, scale_b=self.weight_scale.t(),
                               out_dtype=x.dtype)
        if self.bias is not None:
            out = out + self.bias.to(x.dtype)
        return out.reshape(*x.shape[:-1], self.out_features)
