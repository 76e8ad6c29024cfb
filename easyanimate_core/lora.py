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
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .checks import finite_number
from .config import PUBLISHED_SIZES
from .loading import ModelFormatError, convert_transformer_key
from .memory import execution_device
from .safetensors_io import read_header, read_tensors, write_safetensors

OFFICIAL_PREFIX = "lora_unet__"
_PEFT_PREFIXES = ("transformer.", "diffusion_model.", "model.", "base_model.model.")
_PEFT_SUFFIX = re.compile(r"^(.*)\.(lora_A|lora_B)(?:\.default)?\.weight$")
_OFFICIAL_SUFFIX = re.compile(r"^(lora_unet_.*)\.(lora_down\.weight|lora_up\.weight|alpha)$")
_BLOCK_INDEX = re.compile(r"transformer_blocks[._](\d+)[._]")
_TEXT_STREAM = re.compile(r"transformer_blocks[._](\d+)[._](?:attn2|txt_ff)[._]")
_BLOCK_LAYER = re.compile(r"transformer_blocks[._](\d+)[._](attn1|attn2|txt_ff|ff)[._](.+)$")
_TEXT_PARTNER = {"attn1": "attn2", "ff": "txt_ff"}
_VIDEO_PARTNER = {text: video for video, text in _TEXT_PARTNER.items()}
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
    entries = read_header(path)
    tensors = ((entry.name, tensor) for entry, tensor in read_tensors(entries, dtype=torch.float32))
    return LoraFile(path=path, layers=lora_layers(path, tensors, transformer))


def lora_layers(source: str | Path, tensors: Iterable[tuple[str, torch.Tensor]], transformer: nn.Module, *,
                strict: bool = True) -> dict[str, LoraLayer]:
    """The LoRA layers of ``tensors`` (key, tensor) for ``transformer``, checked: every tensor finite, the blocks
    those of this model's size, down and up of one rank fitting the layer. ``strict``: a key that fits no Linear,
    a layer with one half, or no layer at all is an error too (ComfyUI's own LoRA loaders skip such keys).
    ``source`` names the LoRA in messages."""
    linears = {name for name, m in transformer.named_modules() if isinstance(m, nn.Linear)}
    official = {OFFICIAL_PREFIX + name.replace(".", "_"): name for name in linears}
    parts: dict[str, dict[str, torch.Tensor]] = {}
    unmatched, names, count = [], [], 0
    for key, tensor in tensors:
        count += 1
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            bad = int((~torch.isfinite(tensor)).sum())
            raise ModelFormatError(f"{source}: tensor '{key}' holds {bad} NaN or infinite values of "
                                   f"{tensor.numel()}: the LoRA is damaged (often by a training run that diverged). "
                                   f"Retrain it with a lower learning rate, or use an earlier checkpoint.")
        named = _module_name(key)
        if named is None:
            unmatched.append(key)
            continue
        name, part = named
        name = official.get(name, name)
        names.append(name)
        if name not in linears:
            unmatched.append(key)
            continue
        parts.setdefault(name, {})[part] = tensor
    _check_family(source, names, transformer)
    _check_blocks(source, names, transformer)
    if unmatched and strict:
        raise ModelFormatError(
            f"{source}: {len(unmatched)} of {count} tensors fit no layer of this EasyAnimate transformer "
            f"(first: {sorted(unmatched)[:4]}).{_family_hint(unmatched)} Pick a LoRA trained for EasyAnimate V5.1."
        )
    layers = {}
    modules = dict(transformer.named_modules())
    for name, p in parts.items():
        if "down" not in p or "up" not in p:
            if not strict:
                continue
            raise ModelFormatError(f"{source}: layer '{name}' has only {sorted(p)}; a LoRA layer needs both halves.")
        linear = modules[name]
        down, up = p["down"], p["up"]
        if down.ndim != 2 or up.ndim != 2 or up.shape[1] != down.shape[0]:
            raise ModelFormatError(
                f"{source}: layer '{name}' has a down matrix {tuple(down.shape)} and an up matrix {tuple(up.shape)}: "
                f"their ranks do not match (down [rank, in], up [out, rank]). The halves come from different LoRAs "
                f"or the file is damaged: export or download it again."
            )
        if down.shape[1] != linear.in_features or up.shape[0] != linear.out_features:
            raise ModelFormatError(
                f"{source}: layer '{name}' has down {tuple(down.shape)} and up {tuple(up.shape)}, but the layer is "
                f"{linear.in_features} -> {linear.out_features}: the LoRA was trained for another model size "
                f"(7B vs 12B, or another family)."
            )
        if "alpha" in p and p["alpha"].numel() != 1:
            raise ModelFormatError(f"{source}: layer '{name}' has an alpha of shape {tuple(p['alpha'].shape)}: "
                                   f"expected one number.")
        alpha = float(p["alpha"]) if "alpha" in p else None
        layers[name] = LoraLayer(down=down, up=up, alpha=alpha)
    if not layers and strict:
        raise ModelFormatError(f"{source} holds no LoRA layers.")
    return layers


def _published(position: int, count: int) -> str:
    """The published sizes ("the 7B") whose shape in :data:`PUBLISHED_SIZES` has ``count`` at ``position``."""
    return " and ".join(f"the {name}" for name, shape in PUBLISHED_SIZES.items() if shape[position] == count)


def _published_like(count: int, text_count: int) -> str:
    """The published sizes ("the 7B") with ``count`` blocks that have text-stream layers in ``text_count`` or more."""
    return " and ".join(f"the {name}" for name, (blocks, mmdit, _) in PUBLISHED_SIZES.items()
                        if blocks == count and text_count <= mmdit)


def _also(position: int, count: int) -> str:
    names = _published(position, count)
    return f" ({names} {'has' if ' and ' not in names else 'have'} {count})" if names else ""


def _mmdit_blocks(names: list[str]) -> int | None:
    """How many MMDiT blocks the LoRA's model had, when its layers show it: some layer (``attn1.to_q``, say) has its
    text-stream partner (``attn2.to_q``) in exactly blocks 0..m-1 and appears alone in a later block."""
    video: dict[tuple[str, str], set[int]] = {}
    text: dict[tuple[str, str], set[int]] = {}
    for name in names:
        match = _BLOCK_LAYER.search(name)
        if match:
            block, kind, rest = int(match.group(1)), match.group(2), match.group(3)
            if kind in _TEXT_PARTNER:
                video.setdefault((kind, rest), set()).add(block)
            else:
                text.setdefault((_VIDEO_PARTNER[kind], rest), set()).add(block)
    for layer, with_text in text.items():
        m = max(with_text) + 1
        alone = video.get(layer, set())
        if with_text == set(range(m)) and with_text <= alone and max(alone) >= m:
            return m
    return None


def _check_family(source: str | Path, names: list[str], transformer: nn.Module) -> None:
    """Refuse a LoRA of the other EasyAnimate family, where its layers show it: V5 projects Bert through a plain
    ``text_proj`` and mT5 through ``text_proj_t5``, V5.1 projects Qwen2-VL through ``text_proj.1`` (after an
    RMSNorm). The blocks of the two 12B models have the same shapes, so a LoRA of block layers only cannot be told
    apart and applies to either."""
    config = getattr(transformer, "config", None)
    if config is None:
        return
    flat = {name.removeprefix(OFFICIAL_PREFIX).replace(".", "_") for name in names}  # either key format
    if "text_proj_t5" in flat or "text_proj" in flat:
        lora_family, layer = "V5", "text_proj_t5" if "text_proj_t5" in flat else "text_proj"
    elif "text_proj_1" in flat:
        lora_family, layer = "V5.1", "text_proj.1"
    else:
        return
    if lora_family != config.family:
        other = "EasyAnimate V5 (Bert + mT5)" if lora_family == "V5" else "EasyAnimate V5.1 (Qwen2-VL)"
        raise ModelFormatError(
            f"{source} is a LoRA for {other}: it trains that family's text projection ({layer}). This model is the "
            f"{config.variant_description}: load a {lora_family} model for this LoRA, or pick a LoRA trained for "
            f"{config.family}.")


def _check_blocks(source: str | Path, names: list[str], transformer: nn.Module) -> None:
    """Refuse a LoRA made for a transformer with other blocks. The 7B and 12B are both 3072 wide, so every layer of
    one fits the other: only the block indices, and which blocks have text-stream layers, tell them apart."""
    config = getattr(transformer, "config", None)
    blocks = {int(m.group(1)) for n in names if (m := _BLOCK_INDEX.search(n))}
    text_blocks = {int(m.group(1)) for n in names if (m := _TEXT_STREAM.search(n))}
    if config is None or not blocks:
        return
    count, text_count = max(blocks) + 1, max(text_blocks, default=-1) + 1
    cause = None
    if count > config.num_layers:
        cause = (f"it has layers for blocks up to {count - 1}, so it was trained for a transformer of at least "
                 f"{count} blocks{_also(0, count)}")
    elif text_count > config.mmdit_layers:
        cause = (f"it has text-stream layers (attn2, txt_ff) in block {text_count - 1}, and that block of this model "
                 f"has none")
    elif (mmdit := _mmdit_blocks(names)) is not None and mmdit < config.mmdit_layers:
        cause = (f"it has text-stream layers (attn2, txt_ff) in blocks 0-{mmdit - 1} only, and the same video-stream "
                 f"layers in later blocks without them: the layout of a transformer with {mmdit} MMDiT blocks"
                 f"{_also(1, mmdit)}")
    elif blocks == set(range(count)) and count < config.num_layers and (like := _published_like(count, text_count)):
        cause = f"it covers blocks 0-{count - 1}, every block of {like} ({count} blocks)"
    if cause:
        raise ModelFormatError(
            f"{source} was trained for another model size: {cause}. This model is the {config.variant_description} "
            f"with {config.num_layers} blocks ({config.mmdit_layers} with text-stream layers). The 7B and 12B "
            f"layers have the same width, so the LoRA would load but change the wrong blocks: pick a LoRA trained "
            f"for the {config.size_name} model."
        )


@contextmanager
def applied(transformer: nn.Module, loras: Sequence[tuple[LoraFile, float]]) -> Iterator[nn.Module]:
    """Add the LoRAs' low-rank branches for the duration of the block; nothing of the model is changed."""
    for lora, strength in loras:
        finite_number(f"strength of the LoRA {lora.path}", strength, hint="0 turns it off; 1 applies it as trained.")
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
    """Write layers in the official EasyAnimate format, whole or not at all (``safetensors_io.write_safetensors``)."""
    state = {}
    for name, layer in layers.items():
        key = OFFICIAL_PREFIX + name.replace(".", "_")
        state[f"{key}.lora_down.weight"] = layer.down
        state[f"{key}.lora_up.weight"] = layer.up
        state[f"{key}.alpha"] = torch.tensor(float(layer.alpha if layer.alpha is not None else layer.down.shape[0]))
    return write_safetensors(path, state, metadata=metadata)
