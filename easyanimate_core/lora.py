"""LoRA files for the MMDiT: reading every format in use, and applying them without changing a weight.

Formats (reference 9.1): the official EasyAnimate / kohya format (``lora_unet__transformer_blocks_0_attn1_to_q``
with ``.lora_down.weight`` [r, in], ``.lora_up.weight`` [out, r] and an optional ``.alpha``), the diffusers/PEFT
format (``transformer.transformer_blocks.0.attn1.to_q.lora_A.weight`` / ``lora_B``, also with ``diffusion_model.``
or no prefix, and the diffusers-layout names of the text-stream projections), and our own training output (the
official format, so the official loader reads it too).

LoRAs are applied as unmerged low-rank branches (forward hooks) inside :func:`applied`: the base weights are never
touched, so an interrupt or an error can not leave a LoRA merged into a cached model, several LoRAs stack with
their own strengths, and fp8 base weights need no lossy re-quantisation.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .loading import ModelFormatError, convert_transformer_key
from .memory import execution_device
from .safetensors_io import read_header, read_tensors

OFFICIAL_PREFIX = "lora_unet__"
_PEFT_PREFIXES = ("transformer.", "diffusion_model.", "model.", "base_model.model.")
_PEFT_SUFFIX = re.compile(r"^(.*)\.(lora_A|lora_B)(?:\.default)?\.weight$")
_OFFICIAL_SUFFIX = re.compile(r"^(lora_unet_.*)\.(lora_down\.weight|lora_up\.weight|alpha)$")
_FAMILY_HINTS = (
    ("double_blocks", "Flux or HunyuanVideo"), ("single_blocks", "Flux or HunyuanVideo"),
    ("self_attn.q", "Wan"), ("input_blocks", "Stable Diffusion 1.x/2.x"), ("down_blocks", "SDXL (diffusers)"),
    ("lora_te", "a text encoder"), ("joint_blocks", "Stable Diffusion 3"), ("adaln_single", "PixArt"),
)


@dataclass(frozen=True)
class LoraLayer:
    down: torch.Tensor  # [r, in]
    up: torch.Tensor  # [out, r]
    alpha: float | None

    @property
    def scale(self) -> float:
        return 1.0 if self.alpha is None else self.alpha / self.down.shape[0]


@dataclass(frozen=True)
class LoraFile:
    """One LoRA file: module path in our (original-layout) transformer -> low-rank layer."""

    path: Path
    layers: dict[str, LoraLayer]


def _module_name(key: str) -> tuple[str, str] | None:
    """(module path or official name, part) for one tensor key; None when it is no LoRA tensor."""
    match = _OFFICIAL_SUFFIX.match(key)
    if match:
        return match.group(1), {"lora_down.weight": "down", "lora_up.weight": "up", "alpha": "alpha"}[match.group(2)]
    match = _PEFT_SUFFIX.match(key)
    if match:
        name = match.group(1)
        for prefix in _PEFT_PREFIXES:
            if name.startswith(prefix):
                name = name[len(prefix):]
                break
        return convert_transformer_key(name + ".weight", "diffusers", "original")[: -len(".weight")], (
            "down" if match.group(2) == "lora_A" else "up")
    return None


def _family_hint(keys: Sequence[str]) -> str:
    for needle, family in _FAMILY_HINTS:
        if any(needle in k for k in keys):
            return f" They look like a LoRA for {family}."
    return ""


def read_lora(path: str | Path, transformer: nn.Module) -> LoraFile:
    """Read a LoRA file for ``transformer``; keys that fit no Linear of it raise an error listing a few."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"LoRA file {path} does not exist: put LoRA files in ComfyUI/models/loras (or pass "
                                f"the full path of a .safetensors file).")
    linears = {name for name, m in transformer.named_modules() if isinstance(m, nn.Linear)}
    official = {OFFICIAL_PREFIX + name.replace(".", "_"): name for name in linears}
    entries = read_header(path)
    parts: dict[str, dict[str, torch.Tensor]] = {}
    unmatched = []
    for entry, tensor in read_tensors(entries, dtype=torch.float32):
        named = _module_name(entry.name)
        if named is None:
            unmatched.append(entry.name)
            continue
        name, part = named
        name = official.get(name, name)
        if name not in linears:
            unmatched.append(entry.name)
            continue
        parts.setdefault(name, {})[part] = tensor
    if unmatched:
        raise ModelFormatError(
            f"{path}: {len(unmatched)} of {len(entries)} tensors fit no layer of this EasyAnimate transformer "
            f"(first: {sorted(unmatched)[:4]}).{_family_hint(unmatched)} Pick a LoRA trained for EasyAnimate V5.1."
        )
    layers = {}
    modules = dict(transformer.named_modules())
    for name, p in parts.items():
        if "down" not in p or "up" not in p:
            raise ModelFormatError(f"{path}: layer '{name}' has only {sorted(p)}; a LoRA layer needs both halves.")
        linear = modules[name]
        down, up = p["down"], p["up"]
        if down.shape[1] != linear.in_features or up.shape[0] != linear.out_features or up.shape[1] != down.shape[0]:
            raise ModelFormatError(
                f"{path}: layer '{name}' has down {tuple(down.shape)} and up {tuple(up.shape)}, but the layer is "
                f"{linear.in_features} -> {linear.out_features}: the LoRA was trained for another model size "
                f"(7B vs 12B, or another family)."
            )
        alpha = float(p["alpha"]) if "alpha" in p else None
        layers[name] = LoraLayer(down=down, up=up, alpha=alpha)
    if not layers:
        raise ModelFormatError(f"{path} holds no LoRA layers.")
    return LoraFile(path=path, layers=layers)


@contextmanager
def applied(transformer: nn.Module, loras: Sequence[tuple[LoraFile, float]]) -> Iterator[nn.Module]:
    """Add the LoRAs' low-rank branches for the duration of the block; nothing of the model is changed."""
    modules = dict(transformer.named_modules())
    # The device the layers compute on, not where their weights rest (meta or host under offload hooks).
    device = execution_device(transformer)
    handles = []
    try:
        for lora, strength in loras:
            if strength == 0:
                continue
            for name, layer in lora.layers.items():
                linear = modules[name]
                param = linear.weight
                # fp8-stored weights compute in bf16; every other dtype computes in its own.
                compute_dtype = torch.bfloat16 if param.element_size() == 1 else param.dtype
                down = layer.down.to(device=device, dtype=compute_dtype)
                up = (layer.up * (strength * layer.scale)).to(device=device, dtype=compute_dtype)
                handles.append(linear.register_forward_hook(_branch(down, up)))
        yield transformer
    finally:
        for handle in handles:
            handle.remove()


def _branch(down: torch.Tensor, up: torch.Tensor):
    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
        x = inputs[0]
        d, u = down, up
        if d.device != x.device:  # the model moved (offload) after the LoRA was attached
            d, u = d.to(x.device), u.to(x.device)
        return output + F.linear(F.linear(x.to(d.dtype), d), u).to(output.dtype)

    return hook


def save_lora(path: str | Path, layers: dict[str, LoraLayer], metadata: dict[str, str] | None = None) -> Path:
    """Write layers in the official EasyAnimate format (atomically: a temporary file, then a rename)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {}
    for name, layer in layers.items():
        key = OFFICIAL_PREFIX + name.replace(".", "_")
        state[f"{key}.lora_down.weight"] = layer.down.contiguous()
        state[f"{key}.lora_up.weight"] = layer.up.contiguous()
        state[f"{key}.alpha"] = torch.tensor(float(layer.alpha if layer.alpha is not None else layer.down.shape[0]))
    tmp = path.with_name(path.name + ".partial")
    save_file(state, str(tmp), metadata=metadata)
    tmp.replace(path)
    return path
