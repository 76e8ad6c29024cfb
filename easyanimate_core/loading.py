"""Checkpoint folders in either published layout -> ready modules.

A model folder is either the original EasyAnimate layout or the diffusers port; both have ``transformer/``,
``vae/``, ``text_encoder/``, ``tokenizer/`` and ``scheduler/`` subfolders. The loaders accept the model folder or a
component subfolder, detect the layout from the tensor names (falling back to the config fields), build the module
on the meta device and read each tensor once, straight into the target dtype and device.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from pathlib import Path
from typing import Iterable

import torch
from torch import nn

from .attention import RopeFormula
from .config import (Layout, TransformerConfig, VAEConfig, read_config_json, transformer_config_from_dict,
                     vae_config_from_dict)
from .fp8_matmul import ScaledFp8Linear
from .memory import FP8_DTYPES, check_fp8_kind, store_in_fp8
from .ops import DEFAULT_OPS, LayerOps
from .safetensors_io import TensorEntry, read_header, read_tensors
from .samplers import SchedulerConfig
from .scheduler import FlowMatchEulerScheduler
from .transformer import EasyAnimateTransformer
from .vae import MagvitVAE

logger = logging.getLogger(__name__)

TRANSFORMER_CLASS_NAMES = ("EasyAnimateTransformer3DModel",)
VAE_CLASS_NAMES = ("AutoencoderKLMagvit",)
_ORIGINAL_ONLY_FIELDS = ("ref_channels", "clip_channels", "swa_layers", "enable_clip_in_inpaint",
                         "add_ref_latent_in_control_model")


class ModelFormatError(ValueError):
    """A model folder or file that does not hold what the loader needs; the message says what to do."""


# diffusers key suffix <-> original key suffix, inside ``transformer_blocks.{i}.`` (reference 15.1).
_KEY_PAIRS = (
    ("attn1.add_q_proj.", "attn2.to_q."),
    ("attn1.add_k_proj.", "attn2.to_k."),
    ("attn1.add_v_proj.", "attn2.to_v."),
    ("attn1.norm_added_q.", "attn2.norm_q."),
    ("attn1.norm_added_k.", "attn2.norm_k."),
    ("attn1.to_add_out.", "attn2.to_out.0."),
)
_BLOCK_KEY = re.compile(r"^(transformer_blocks\.\d+\.)(.*)$")
_GROUP = re.compile(r"^(.*?\.\d+)\.")


def convert_transformer_key(key: str, source: Layout, target: Layout) -> str:
    """Rename one transformer tensor from the ``source`` layout to the ``target`` layout."""
    if source == target:
        return key
    match = _BLOCK_KEY.match(key)
    if match is None:
        return key
    prefix, rest = match.groups()
    pairs = _KEY_PAIRS if source == "diffusers" else [(b, a) for a, b in _KEY_PAIRS]
    for old, new in pairs:
        if rest.startswith(old):
            return prefix + new + rest[len(old):]
    return key


def convert_transformer_state_dict(state_dict: dict[str, torch.Tensor], source: Layout, target: Layout):
    """A new dict with every key renamed from ``source`` to ``target`` layout (tensors are shared, not copied)."""
    return {convert_transformer_key(k, source, target): v for k, v in state_dict.items()}


def detect_transformer_layout(keys: Iterable[str], raw_config: dict) -> Layout:
    """The layout of a transformer checkpoint: from its tensor names, else from config fields only one layout has."""
    diffusers_marks = tuple(old for old, _ in _KEY_PAIRS)
    for key in keys:
        rest = _BLOCK_KEY.match(key)
        if rest is None:
            continue
        if rest.group(2).startswith(diffusers_marks):
            return "diffusers"
        if rest.group(2).startswith("attn2."):
            return "original"
    return "original" if any(f in raw_config for f in _ORIGINAL_ONLY_FIELDS) else "diffusers"


def resolve_component(path: str | Path, component: str) -> Path:
    """``path`` itself if it holds a config.json, else ``path/component``; a clear error otherwise."""
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"Model path {path} does not exist. Point at an EasyAnimate model folder "
                                f"(with transformer/ and vae/ subfolders) or at its {component}/ subfolder.")
    for candidate in (path / component, path):
        if (candidate / "config.json").is_file():
            return candidate
    raise ModelFormatError(
        f"No config.json in {path} or {path / component}. Point at an EasyAnimate model folder (with "
        f"{component}/config.json inside) or at its {component}/ subfolder; if the folder is incomplete, "
        f"download the model again."
    )


def _check_family(raw: dict, accepted: tuple[str, ...], config_path: Path, what: str) -> None:
    name = raw.get("_class_name")
    if name is not None and name not in accepted:
        raise ModelFormatError(
            f"{config_path} describes a {name!r}, not an EasyAnimate {what} ({' or '.join(accepted)}). "
            f"This folder belongs to another model family: pick an EasyAnimate V5 or V5.1 model folder."
        )


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files of one component: single file, index-listed shards, or every *.safetensors."""
    index = folder / "diffusion_pytorch_model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            names = sorted(set(weight_map.values()))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ModelFormatError(f"{index} is not a valid shard index ({exc}); download it again.") from exc
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise ModelFormatError(f"{index} lists shards that are not in {folder}: {missing[:5]}. "
                                   f"Download the missing files.")
        return [folder / n for n in names]
    single = folder / "diffusion_pytorch_model.safetensors"
    if single.is_file():
        return [single]
    files = sorted(folder.glob("*.safetensors"))
    if files:
        return files
    others = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt", ".gguf"))
    hint = f" Found {others[:3]}: only .safetensors weights are read; convert them first." if others else ""
    raise ModelFormatError(f"No .safetensors weights in {folder}.{hint} Download the model's weight files.")


def _headers(files: list[Path]) -> list[TensorEntry]:
    entries = [e for f in files for e in read_header(f)]
    seen: dict[str, Path] = {}
    for e in entries:
        if e.name in seen:
            raise ModelFormatError(f"Tensor '{e.name}' appears in both {seen[e.name]} and {e.file}: the folder "
                                   f"mixes two checkpoints. Keep one set of weight files.")
        seen[e.name] = e.file
    return entries


def _load_into(model: nn.Module, entries: dict[str, TensorEntry], folder: Path, dtype, device,
               fp8: str | None = None, keep: tuple[str, ...] = ()) -> None:
    """Check names and shapes against ``model`` (on meta), then read every tensor into place (:func:`read_into`)."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(entries))
    unexpected = sorted(set(entries) - set(expected))
    wrong = [f"{k}: file {entries[k].shape}, model {expected[k]}" for k in sorted(set(expected) & set(entries))
             if entries[k].shape != expected[k]]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing tensors (first: {missing[:5]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensors (first: {unexpected[:5]})")
    if wrong:
        problems.append(f"{len(wrong)} shape mismatches (first: {wrong[:3]})")
    if problems:
        raise ModelFormatError(
            f"The weights in {folder} do not fit the model its config.json describes: " + "; ".join(problems)
            + ". The weight files and config.json come from different models, or a download is incomplete: "
            "download the folder again."
        )
    read_into(model, entries, dtype=dtype, device=device, fp8=fp8, keep=keep)


def _group(key: str) -> str:
    """The numbered block a tensor belongs to ("transformer_blocks.3", "layers.12"), or "" for the rest."""
    match = _GROUP.match(key)
    return match.group(1) if match else ""


def assign_tensor(model: nn.Module, key: str, tensor: torch.Tensor) -> None:
    """Put ``tensor`` in place of the meta tensor ``key``, in the dtype that tensor was built with when that is a
    storage dtype of its own (fp8 weights chosen at build time)."""
    owner_name, _, attr = key.rpartition(".")
    owner = model.get_submodule(owner_name)
    if attr in owner._parameters:
        built = owner._parameters[attr]
        if built is not None and built.dtype in FP8_DTYPES:
            if attr == "weight" and hasattr(owner, "store_weight"):  # scaled fp8 (fp8_matmul): it quantizes itself
                owner.store_weight(tensor)
                return
            tensor = tensor.to(built.dtype)
        owner._parameters[attr] = nn.Parameter(tensor, requires_grad=False)
    else:
        owner._buffers[attr] = tensor


def read_into(model: nn.Module, entries: dict[str, TensorEntry], *, dtype, device, fp8: str | None = None,
              keep: tuple[str, ...] = ()) -> None:
    """Read every tensor of ``entries`` (model key -> file entry) into ``model``, built on meta, replacing its meta
    tensors; weights built in fp8 are stored in fp8 as they are read.

    Tensors are read block by block (every numbered block, then the rest). With ``fp8="qfloat8"`` (see
    :func:`.memory.store_in_fp8`; ``keep`` names the layers that stay in ``dtype``) each group is quantized as
    soon as it is in place, so only one block is ever held in ``dtype``.
    """
    groups: dict[str, list[str]] = {}
    for key in entries:
        groups.setdefault(_group(key), []).append(key)
    for name in sorted(groups, key=lambda g: g == ""):  # the rest last: it converts whatever is left
        key_of = {id(entries[k]): k for k in groups[name]}  # read_tensors yields the very entries it is given
        for entry, tensor in read_tensors([entries[k] for k in groups[name]], dtype=dtype, device=device):
            assign_tensor(model, key_of[id(entry)], tensor)
        if fp8 == "qfloat8":
            store_in_fp8(model, fp8, keep, within=name)


def _inspect_transformer(path: str | Path):
    """(folder, weight files, tensor entries, layout, config) of a transformer; reads headers, no tensor data.

    A config without ``text_embed_dim_t5`` takes it from the weights: the width of ``text_proj_t5.weight``, or
    null when there is none. The original class would default it to 4096 and build a T5 projection that a V5.1
    checkpoint has no weights for and its pipeline never calls; V5 checkpoints carry the projection."""
    folder = resolve_component(path, "transformer")
    config_path = folder / "config.json"
    raw = read_config_json(config_path)
    _check_family(raw, TRANSFORMER_CLASS_NAMES, config_path, "transformer")
    files = weight_files(folder)
    headers = _headers(files)
    layout = detect_transformer_layout((e.name for e in headers), raw)
    if "text_embed_dim_t5" not in raw:
        t5_proj = next((e for e in headers if e.name == "text_proj_t5.weight" and len(e.shape) == 2), None)
        raw = {**raw, "text_embed_dim_t5": None if t5_proj is None else t5_proj.shape[1]}
    return folder, files, headers, layout, transformer_config_from_dict(raw, layout, source=str(config_path))


def inspect_transformer(path: str | Path) -> TransformerConfig:
    """The config of a model folder's (or a ``transformer/`` folder's) transformer, with its variant and size,
    from ``config.json`` and the safetensors headers: no weight is read, so callers check a request first."""
    return _inspect_transformer(path)[4]


def inspect_model(path: str | Path) -> TransformerConfig:
    """Check every config of a model folder (transformer, VAE, scheduler, text encoders) and the transformer's
    safetensors headers without reading a weight; the transformer config (its ``family``, ``variant`` and
    ``size_name`` describe the model), for checking a request against it. A folder whose transformer and text
    encoders belong to different families (V5: Bert + mT5, V5.1: Qwen2-VL) is refused naming both."""
    from .text_encoder import check_text_encoder  # it builds on this module

    config = inspect_transformer(path)
    check_model_family(path, config)
    _vae_config(resolve_component(path, "vae"))
    scheduler = _scheduler_file(path)
    if scheduler is not None:
        SchedulerConfig.from_config_dict(read_config_json(scheduler), source=str(scheduler))
    check_text_encoder(path, config)
    return config


# text_encoder/config.json model_type -> the family that text encoder belongs to (reference sections 4.1 and 4.2).
TEXT_ENCODER_FAMILIES = {"qwen2_vl": "V5.1", "bert": "V5"}
T5_MODEL_TYPES = ("t5", "mt5")  # text_encoder_2/ of a V5 folder
_ENCODERS_OF = {"V5.1": "a Qwen2-VL text encoder (EasyAnimate V5.1)",
                "V5": "Bert + mT5 text encoders (EasyAnimate V5)"}


def model_root(path: str | Path, component: str) -> Path:
    """The model folder around ``component``: ``path`` itself, or its parent when ``path`` is that component."""
    folder = resolve_component(path, component)
    return folder.parent if folder.name == component else folder


def text_encoder_family(path: str | Path) -> str:
    """"V5.1" (``text_encoder/`` is Qwen2-VL) or "V5" (``text_encoder/`` is Bert, ``text_encoder_2/`` the mT5
    encoder and ``tokenizer_2/`` its tokenizer), from the config files alone; a folder with the parts of both, or
    a V5 folder missing its second encoder, is refused by name."""
    folder = resolve_component(path, "text_encoder")
    root = model_root(path, "text_encoder")
    config_path = folder / "config.json"
    model_type = read_config_json(config_path).get("model_type")
    family = TEXT_ENCODER_FAMILIES.get(model_type)
    if family is None:
        raise ModelFormatError(
            f"{config_path} describes a {model_type!r} model: an EasyAnimate text_encoder/ is Qwen2-VL (V5.1) or "
            f"Bert with an mT5 encoder in text_encoder_2/ (V5). Download the text_encoder/ folder of the model again.")
    second, second_tokenizer = root / "text_encoder_2", root / "tokenizer_2"
    if family == "V5.1":
        if second.exists():
            raise ModelFormatError(
                f"{root} mixes two EasyAnimate families: text_encoder/ is Qwen2-VL (V5.1) but {second} (V5's "
                f"mT5 encoder) is there too. Keep the text encoders of one release: remove text_encoder_2/ and "
                f"tokenizer_2/ from a V5.1 folder.")
        return family
    second_config = second / "config.json"
    if not second_config.is_file() or not second_tokenizer.is_dir():
        missing = second_config if not second_config.is_file() else second_tokenizer
        raise ModelFormatError(
            f"{config_path} is V5's Bert text encoder, which needs the mT5 encoder beside it: {missing} is "
            f"missing. Download text_encoder_2/ and tokenizer_2/ of the EasyAnimate V5 model.")
    t5_type = read_config_json(second_config).get("model_type")
    if t5_type not in T5_MODEL_TYPES:
        raise ModelFormatError(
            f"{second_config} describes a {t5_type!r} model, not the mT5 encoder EasyAnimate V5 uses beside its "
            f"Bert ({' or '.join(T5_MODEL_TYPES)}). Download the text_encoder_2/ folder of the model again.")
    return family


def check_model_family(path: str | Path, config: TransformerConfig) -> None:
    """Refuse a model folder whose transformer and text encoders belong to different families, naming both."""
    family = text_encoder_family(path)
    if family == config.family:
        return
    transformer_config = resolve_component(path, "transformer") / "config.json"
    why = (f"text_embed_dim_t5 = {config.text_embed_dim_t5}: it takes Bert + mT5 states" if config.family == "V5"
           else "text_embed_dim_t5 = null: it takes Qwen2-VL states")
    raise ModelFormatError(
        f"{model_root(path, 'transformer')} mixes two EasyAnimate families: the transformer ({transformer_config}, "
        f"{why}) is the {config.variant_description}, but {resolve_component(path, 'text_encoder')} holds "
        f"{_ENCODERS_OF[family]}. Use the text encoders of the transformer's own release (download the complete "
        f"model folder).")


def load_transformer(
    path: str | Path,
    *,
    dtype: torch.dtype = torch.bfloat16,
    device: torch.device | str = "cpu",
    rope_formula: RopeFormula = "original",
    fp8: str | None = None,
    weight_dtype: torch.dtype | None = None,
    ops: LayerOps = DEFAULT_OPS,
    model_class: type[EasyAnimateTransformer] = EasyAnimateTransformer,
) -> EasyAnimateTransformer:
    """Load the MMDiT of a model folder (or its ``transformer/`` folder) in either layout.

    ``fp8`` ("qfloat8" or "fp8_cast", see :mod:`.memory`, or "fp8_scaled", see :mod:`.fp8_matmul`) stores the
    linear weights in fp8: fp8_cast builds them in float8_e4m3fn, fp8_scaled in float8_e4m3fn with a scale per
    row that they compute with in fp8, qfloat8 quantizes each block as soon as it is read. Either way the host peak is the fp8 model
    plus one block, not the whole model in ``dtype``. ``weight_dtype`` names the storage dtype of those linears
    directly (fp8_cast is ``torch.float8_e4m3fn``). ``ops`` and ``model_class`` build it from another layer
    namespace (ComfyUI's, in the nodes)."""
    if fp8 == "fp8_scaled":
        ops, weight_dtype = dataclasses.replace(ops, Linear=ScaledFp8Linear), torch.float8_e4m3fn
    else:
        check_fp8_kind(fp8)
    folder, files, headers, layout, config = _inspect_transformer(path)
    entries = {convert_transformer_key(e.name, layout, "original"): e for e in headers}
    with torch.device("meta"):
        model = model_class(config, dtype=dtype, rope_formula=rope_formula, ops=ops,
                            weight_dtype=torch.float8_e4m3fn if fp8 == "fp8_cast" else weight_dtype)
    _load_into(model, entries, folder, dtype, device, fp8=fp8, keep=model.HIGH_PRECISION)
    logger.info("Loaded %s from %s (%s layout, %d files) as %s%s on %s", config.variant_description, folder,
                layout, len(files), dtype, f" with {fp8} linears" if fp8 else "", device)
    return model.eval().requires_grad_(False)


def _vae_config(folder: Path) -> VAEConfig:
    config_path = folder / "config.json"
    raw = read_config_json(config_path)
    _check_family(raw, VAE_CLASS_NAMES, config_path, "VAE")
    return vae_config_from_dict(raw, source=str(config_path))


def load_vae(
    path: str | Path, *, dtype: torch.dtype = torch.bfloat16, device: torch.device | str = "cpu"
) -> MagvitVAE:
    """Load the MagViT VAE of a model folder (or its ``vae/`` folder); both layouts share the VAE keys."""
    folder = resolve_component(path, "vae")
    config = _vae_config(folder)
    entries = {e.name: e for e in _headers(weight_files(folder))}
    with torch.device("meta"):
        model = MagvitVAE(config, dtype=dtype)
    _load_into(model, entries, folder, dtype, device)
    logger.info("Loaded the MagViT VAE from %s as %s on %s", folder, dtype, device)
    return model.eval().requires_grad_(False)


def load_scheduler(path: str | Path) -> SchedulerConfig:
    """The scheduler config of a model folder (``scheduler/scheduler_config.json``) and the samplers it allows;
    V5.1 flow defaults if absent."""
    candidate = _scheduler_file(path)
    if candidate is not None:
        return SchedulerConfig.from_config_dict(read_config_json(candidate), source=str(candidate))
    logger.warning("No scheduler/scheduler_config.json in %s: using the EasyAnimate V5.1 flow defaults.", path)
    return SchedulerConfig.of(FlowMatchEulerScheduler())


def _scheduler_file(path: str | Path) -> Path | None:
    path = Path(path).expanduser()
    for candidate in (path / "scheduler" / "scheduler_config.json", path / "scheduler_config.json"):
        if candidate.is_file():
            return candidate
    return None
