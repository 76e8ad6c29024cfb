"""The layer classes models are built from, injected as one namespace.

Model constructors take an ``ops`` argument instead of naming ``torch.nn`` directly, so that a memory mode can
swap in layers that store weights in one dtype (fp8, say) and compute in another without touching model code.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class LayerOps:
    Linear: type[nn.Module] = nn.Linear
    Conv2d: type[nn.Module] = nn.Conv2d
    Conv3d: type[nn.Module] = nn.Conv3d
    LayerNorm: type[nn.Module] = nn.LayerNorm
    GroupNorm: type[nn.Module] = nn.GroupNorm


DEFAULT_OPS = LayerOps()
