"""The one lever models are built through: layer classes and the attention function, injected as one namespace.

Model constructors take an ``ops`` argument instead of naming ``torch.nn`` directly. Standalone (command line,
tests) that is :data:`DEFAULT_OPS`: layers that store their weights in any dtype (fp8 included) and compute in the
dtype of their input, casting per call when the two differ, and PyTorch's SDPA. Inside ComfyUI the nodes pass a
namespace of ``comfy.ops`` layers and ComfyUI's optimized attention instead (``nodes/_native.py``), so ComfyUI's
weight casting, LoRA patches, low-VRAM streaming and attention flags apply to our models without a line here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# (q, k, v) each [B, heads, N, head_dim] -> [B, N, heads, head_dim]
Attention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, k, v, dropout_p=0.0, is_causal=False).transpose(1, 2)


def _cast(tensor: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    return tensor if tensor is None or tensor.dtype == dtype else tensor.to(dtype)


class Linear(nn.Linear):
    """A Linear whose weight may be stored in another dtype (fp8, say) than it computes in: the input's."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, _cast(self.weight, x.dtype), _cast(self.bias, x.dtype))


class Conv2d(nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, _cast(self.weight, x.dtype), _cast(self.bias, x.dtype))


class Conv3d(nn.Conv3d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, _cast(self.weight, x.dtype), _cast(self.bias, x.dtype))


class LayerNorm(nn.LayerNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.normalized_shape, _cast(self.weight, x.dtype), _cast(self.bias, x.dtype), self.eps)


class GroupNorm(nn.GroupNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x, self.num_groups, _cast(self.weight, x.dtype), _cast(self.bias, x.dtype), self.eps)


def fp32_layer_norm(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``norm`` (a LayerNorm of the namespace, which computes in its input's dtype) computed in fp32 whatever the
    weight and input dtypes, returned in the input dtype."""
    return norm(x.float()).to(x.dtype)


class RMSNorm(nn.Module):
    """RMSNorm over LLM hidden states (values reach 1e4): fp32 statistics, weight applied in the input dtype.

    The weight is fetched through :meth:`cast_weight`, which ComfyUI's namespace overrides with its own cast (device,
    dtype and weight patches)."""

    def __init__(self, dim: int, eps: float = 1e-6, *, dtype=None, device=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, dtype=dtype, device=device))

    def cast_weight(self, x: torch.Tensor) -> torch.Tensor:
        return _cast(self.weight, x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.cast_weight(x) * xf.to(x.dtype)


@dataclass(frozen=True)
class LayerOps:
    Linear: type[nn.Module] = Linear
    Conv2d: type[nn.Module] = Conv2d
    Conv3d: type[nn.Module] = Conv3d
    LayerNorm: type[nn.Module] = LayerNorm
    GroupNorm: type[nn.Module] = GroupNorm
    RMSNorm: type[nn.Module] = RMSNorm
    attention: Attention = sdpa_attention


DEFAULT_OPS = LayerOps()


def adopt_linears(module: nn.Module, ops: LayerOps = DEFAULT_OPS) -> nn.Module:
    """Replace every plain ``nn.Linear`` of a model we do not build ourselves (transformers' Qwen2-VL) by the
    namespace's Linear with the same parameters, so it can store fp8 and compute high like our own layers.
    For models still on the meta device, before any weight is read."""
    for name, child in list(module.named_modules()):
        if type(child) is not nn.Linear:
            continue
        owner_name, _, attr = name.rpartition(".")
        replacement = ops.Linear(child.in_features, child.out_features, bias=child.bias is not None,
                                 dtype=child.weight.dtype, device=child.weight.device)
        replacement.weight, replacement.bias = child.weight, child.bias
        setattr(module.get_submodule(owner_name), attr, replacement)
    return module
