"""Trainable LoRA branches on the transformer's linears, and gradient checkpointing.

A branch is the official LoRAModule (reference 9.1): ``y = W x + up(down(x)) * alpha / rank`` with ``down``
kaiming-uniform(a=sqrt(5)) and ``up`` zero, so training starts from the base model exactly. Branches are child
modules of the linears they extend (their parameters belong to the transformer, so ``accelerate`` and DDP see them)
and run from forward hooks; the base weights are never touched. Attaching is a context manager that removes
everything again in a ``finally``.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..lora import LoraFile, LoraLayer

BRANCH = "lora"  # child name of the branch inside its linear


class LoraBranch(nn.Module):
    """The trainable low-rank branch of one linear, in fp32: ``down`` [rank, in], ``up`` [out, rank]."""

    def __init__(self, in_features: int, out_features: int, rank: int, alpha: float, *, device=None,
                 generator: torch.Generator | None = None):
        super().__init__()
        self.rank, self.alpha = rank, float(alpha)
        self.down = nn.Parameter(torch.empty(rank, in_features, dtype=torch.float32))
        self.up = nn.Parameter(torch.zeros(out_features, rank, dtype=torch.float32))
        nn.init.kaiming_uniform_(self.down, a=math.sqrt(5), generator=generator)
        self.to(device)

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(x.to(self.down.dtype), self.down), self.up) * self.scale

    def layer(self, dtype: torch.dtype = torch.float32) -> LoraLayer:
        return LoraLayer(down=self.down.detach().to("cpu", dtype).clone(),
                         up=self.up.detach().to("cpu", dtype).clone(), alpha=self.alpha)


def _add_branch(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
    return output + getattr(module, BRANCH)(inputs[0]).to(output.dtype)


def target_linears(transformer: nn.Module, patterns: Sequence[str] | None = None) -> list[str]:
    """Names of the linears to train: every ``nn.Linear`` (the reference) or those matching any regex pattern."""
    linears = [name for name, m in transformer.named_modules() if isinstance(m, nn.Linear)]
    if not patterns:
        return linears
    chosen = [name for name in linears if any(re.search(p, name) for p in patterns)]
    if not chosen:
        raise ValueError(f"target modules {list(patterns)} match no linear of the transformer; names look like "
                         f"{linears[:3] + linears[-2:]}. Use 'all' or regular expressions such as 'attn1\\.to_q'.")
    return chosen


@contextmanager
def lora_branches(transformer: nn.Module, names: Sequence[str], rank: int, alpha: float,
                  seed: int = 0) -> Iterator[dict[str, LoraBranch]]:
    """Attach fresh trainable branches to the named linears for the block; ``{name: branch}``."""
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank = {rank!r}: expected an integer >= 1.")
    if not alpha > 0:
        raise ValueError(f"alpha = {alpha!r}: expected a positive number (the reference uses rank / 2).")
    modules = dict(transformer.named_modules())
    generator = torch.Generator().manual_seed(seed)
    branches: dict[str, LoraBranch] = {}
    handles = []
    try:
        for name in names:
            linear = modules[name]
            device = linear.weight.device if linear.weight.device.type != "meta" else None
            branch = LoraBranch(linear.in_features, linear.out_features, rank, alpha, device=device,
                                generator=generator)
            linear.add_module(BRANCH, branch)
            branches[name] = branch
            handles.append(linear.register_forward_hook(_add_branch))
        yield branches
    finally:
        for handle in handles:
            handle.remove()
        for name in branches:
            delattr(modules[name], BRANCH)


def export_layers(branches: dict[str, LoraBranch], dtype: torch.dtype = torch.float32) -> dict[str, LoraLayer]:
    """The branches as LoRA layers for :func:`easyanimate_core.lora.save_lora` (module path -> layer)."""
    return {name: branch.layer(dtype) for name, branch in branches.items()}


def load_layers(branches: dict[str, LoraBranch], lora: LoraFile) -> None:
    """Copy a saved LoRA (same targets and rank) into the branches, e.g. when resuming."""
    missing = sorted(set(branches) - set(lora.layers))
    extra = sorted(set(lora.layers) - set(branches))
    if missing or extra:
        raise ValueError(f"{lora.path} does not hold the layers being trained (missing {missing[:3]}, extra "
                         f"{extra[:3]}): it was trained with other target modules.")
    with torch.no_grad():
        for name, branch in branches.items():
            layer = lora.layers[name]
            if layer.down.shape != branch.down.shape:
                raise ValueError(f"{lora.path}: layer {name} has rank {layer.down.shape[0]}, training uses "
                                 f"{branch.rank}.")
            branch.down.copy_(layer.down)
            branch.up.copy_(layer.up)


def _checkpointed(forward, *args):
    if torch.is_grad_enabled():
        return checkpoint(forward, *args, use_reentrant=False)
    return forward(*args)


@contextmanager
def gradient_checkpointing(transformer: nn.Module) -> Iterator[nn.Module]:
    """Recompute each transformer block in the backward pass instead of keeping its activations."""
    blocks = list(transformer.transformer_blocks)
    try:
        for block in blocks:
            block.forward = functools.partial(_checkpointed, block.forward)
        yield transformer
    finally:
        for block in blocks:
            vars(block).pop("forward", None)
