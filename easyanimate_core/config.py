"""Frozen model configurations read from a checkpoint's ``config.json``.

Both published layouts are understood: the original EasyAnimate folder (the code the V5.1 weights were trained
with) and the diffusers port. The two implementations use different constructor defaults, so a field missing from
the file falls back to the defaults of the layout the file came from, never to one shared set.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

logger = logging.getLogger(__name__)

Layout = Literal["original", "diffusers"]
LAYOUTS: tuple[str, ...] = ("original", "diffusers")

# Fields that the published configs carry but that change nothing for the V5.1 models we run.
_IGNORED_TRANSFORMER_FIELDS = frozenset(
    {
        "_class_name",
        "_diffusers_version",
        "_name_or_path",
        "transformer_type",
        "enable_clip_in_inpaint",
        "enable_text_attention_mask",
        "resize_inpaint_mask_directly",
    }
)


def _fail(kind: str, field: str, value: Any, expected: str, source: str | None) -> ValueError:
    where = f" in {source}" if source else ""
    return ValueError(f"{kind} config field '{field}' = {value!r}{where}: expected {expected}.")


def _require_int(kind: str, name: str, value: Any, minimum: int, source: str | None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _fail(kind, name, value, f"an integer >= {minimum}", source)


def _require_bool(kind: str, name: str, value: Any, source: str | None) -> None:
    if not isinstance(value, bool):
        raise _fail(kind, name, value, "true or false" + (" (a JSON boolean, without quotes)" if isinstance(value, str)
                                                         else ""), source)


def _positive_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def _split_known(kind: str, cls: type, raw: dict[str, Any], ignored: frozenset[str], source: str | None):
    names = {f.name for f in dataclasses.fields(cls)}
    known = {k: v for k, v in raw.items() if k in names}
    unknown = sorted(k for k in raw if k not in names and k not in ignored)
    if unknown:
        logger.info("%s config%s: ignoring unknown fields %s", kind, f" ({source})" if source else "", unknown)
    return known


# The published transformer sizes: (blocks, MMDiT blocks with their own text-stream layers, width). Both are 3072
# wide, so a layer of one fits the other: only the block counts tell them apart. V5 and V5.1 share them.
PUBLISHED_SIZES: dict[str, tuple[int, int, int]] = {"12B": (48, 48, 3072), "7B": (36, 18, 3072)}


@dataclass(frozen=True)
class TransformerConfig:
    """The MMDiT hyper-parameters. Field names are those of ``transformer/config.json``.

    One class serves both families: V5 sets ``text_embed_dim_t5`` (Bert width in ``text_embed_dim``, mT5 width
    here), V5.1 leaves it null (Qwen2-VL width in ``text_embed_dim``)."""

    in_channels: int = 16
    out_channels: int = 16
    patch_size: int = 2
    num_attention_heads: int = 48
    attention_head_dim: int = 64
    num_layers: int = 48
    mmdit_layers: int = 48
    time_embed_dim: int = 512
    text_embed_dim: int = 3584
    text_embed_dim_t5: int | None = None
    add_norm_text_encoder: bool = True
    norm_eps: float = 1e-5
    norm_elementwise_affine: bool = True
    flip_sin_to_cos: bool = True
    freq_shift: int = 0
    sample_width: int = 90
    sample_height: int = 60
    activation_fn: str = "gelu-approximate"
    timestep_activation_fn: str = "silu"
    time_position_encoding_type: str = "3d_rope"
    after_norm: bool = False
    dropout: float = 0.0
    add_noise_in_inpaint_model: bool = True
    add_ref_latent_in_control_model: bool = True
    clip_channels: int | None = None
    ref_channels: int | None = None
    swa_layers: Any = None

    @property
    def family(self) -> str:
        """"V5" (Bert + mT5 text encoders: the transformer has ``text_proj_t5``) or "V5.1" (Qwen2-VL)."""
        return "V5" if self.text_embed_dim_t5 is not None else "V5.1"

    @property
    def variant(self) -> str:
        """Which conditioning the model takes, from its input channels: t2v, inp, control, control_camera."""
        return _VARIANTS[self.family].get(self.in_channels, ("custom", "", ""))[0]

    @property
    def size_name(self) -> str:
        sizes = {shape: name for name, shape in PUBLISHED_SIZES.items()}
        return sizes.get((self.num_layers, self.mmdit_layers, self.inner_dim), f"{self.num_layers}-layer")

    @property
    def variant_description(self) -> str:
        label = _VARIANTS[self.family].get(self.in_channels, ("", f"{self.in_channels}-channel", ""))[1]
        return f"EasyAnimate {self.family} {self.size_name} {label} model"

    @property
    def expected_inputs(self) -> str:
        """What a caller must pass besides the noisy latents, in words."""
        unknown = ("", "", "The channel count matches no published variant.")
        return _VARIANTS[self.family].get(self.in_channels, unknown)[2]

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @property
    def is_mmdit(self) -> tuple[bool, ...]:
        return tuple(i < self.mmdit_layers for i in range(self.num_layers))

    def validate(self, source: str | None = None) -> "TransformerConfig":
        kind = "Transformer"
        for name in ("in_channels", "out_channels", "patch_size", "num_attention_heads", "attention_head_dim",
                     "num_layers", "time_embed_dim", "text_embed_dim", "sample_width", "sample_height"):
            _require_int(kind, name, getattr(self, name), 1, source)
        _require_int(kind, "mmdit_layers", self.mmdit_layers, 0, source)
        _require_int(kind, "freq_shift", self.freq_shift, 0, source)
        for name in ("add_norm_text_encoder", "norm_elementwise_affine", "flip_sin_to_cos", "after_norm",
                     "add_noise_in_inpaint_model", "add_ref_latent_in_control_model"):
            _require_bool(kind, name, getattr(self, name), source)
        if not _positive_number(self.norm_eps):
            raise _fail(kind, "norm_eps", self.norm_eps, "a positive finite number", source)
        if self.attention_head_dim % 8:
            raise _fail(kind, "attention_head_dim", self.attention_head_dim,
                        "a multiple of 8 (the 3D rotary embedding splits it 2:3:3)", source)
        if self.out_channels != 16:
            raise _fail(kind, "out_channels", self.out_channels, "16 (the MagViT latent channels)", source)
        if self.in_channels < self.out_channels:
            raise _fail(kind, "in_channels", self.in_channels, f">= out_channels ({self.out_channels})", source)
        fixed = {
            "activation_fn": "gelu-approximate",
            "timestep_activation_fn": "silu",
            "time_position_encoding_type": "3d_rope",
            "after_norm": False,
            "clip_channels": None,
            "ref_channels": None,
            "swa_layers": None,
        }
        for name, expected in fixed.items():
            if getattr(self, name) != expected:
                raise _fail(kind, name, getattr(self, name),
                            f"{expected!r}: this value belongs to a model family other than EasyAnimate V5/V5.1",
                            source)
        if self.text_embed_dim_t5 is not None:
            _require_int(kind, "text_embed_dim_t5", self.text_embed_dim_t5, 1, source)
            if self.add_norm_text_encoder:
                # The original builds RMSNorm(text_embed_dim) in front of the T5 projection, which only fits when
                # both widths agree: no published model has it (V5 configs leave add_norm_text_encoder false).
                raise _fail(kind, "text_embed_dim_t5", self.text_embed_dim_t5,
                            "null when add_norm_text_encoder is true (V5.1, Qwen2-VL), or add_norm_text_encoder "
                            "false with it (V5, Bert + mT5): no published EasyAnimate model mixes the two", source)
        return self


_T2V = ("t2v", "text-to-video", "A text-to-video model takes no inpaint or control latents.")
_INP = ("inp", "InP (image-to-video)",
        "An InP model takes inpaint_latents [B, 17, T, h, w]: 1 mask channel + 16 masked-video channels.")
# in_channels -> (variant, label, what the model takes besides the latents), per family (reference section 2.6).
_VARIANTS: dict[str, dict[int, tuple[str, str, str]]] = {
    "V5.1": {
        16: _T2V,
        33: _INP,
        48: ("control", "Control",
             "A Control model takes control_latents [B, 32, T, h, w]: 16 control-video + 16 reference-image "
             "channels."),
        38: ("control_camera", "Control-Camera",
             "A Control-Camera model takes control_latents [B, 22, T, h, w]: 6 Plucker camera + 16 reference "
             "channels."),
    },
    "V5": {
        16: _T2V,
        33: _INP,
        32: ("control", "Control",
             "A V5 Control model takes control_latents [B, 16, T, h, w]: 16 control-video channels (V5 has no "
             "reference-image slot)."),
    },
}

# Constructor defaults of the two implementations (reference section 15.1): a field absent from config.json
# takes the value the implementation that wrote the file would have used.
_TRANSFORMER_LAYOUT_DEFAULTS: dict[str, dict[str, Any]] = {
    "original": dict(
        num_attention_heads=30, attention_head_dim=64, num_layers=30, mmdit_layers=10000, text_embed_dim=4096,
        text_embed_dim_t5=4096, add_norm_text_encoder=False, add_noise_in_inpaint_model=False,
        add_ref_latent_in_control_model=True, in_channels=16, out_channels=16, patch_size=2,
    ),
    "diffusers": dict(
        num_attention_heads=48, attention_head_dim=64, num_layers=48, mmdit_layers=48, text_embed_dim=3584,
        text_embed_dim_t5=None, add_norm_text_encoder=False, add_noise_in_inpaint_model=True,
        add_ref_latent_in_control_model=True, in_channels=16, out_channels=16, patch_size=2,
    ),
}


def transformer_config_from_dict(raw: dict[str, Any], layout: Layout, source: str | None = None) -> TransformerConfig:
    """Build a validated :class:`TransformerConfig` from the parsed ``config.json`` of ``layout``."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout = {layout!r}: expected one of {LAYOUTS}")
    values = dict(_TRANSFORMER_LAYOUT_DEFAULTS[layout])
    values.update(_split_known("Transformer", TransformerConfig, raw, _IGNORED_TRANSFORMER_FIELDS, source))
    for name in ("in_channels", "out_channels", "patch_size"):
        if values[name] is None:
            values[name] = _TRANSFORMER_LAYOUT_DEFAULTS[layout][name]
    # The original code builds min(num_layers, mmdit_layers) MMDiT blocks; keep the field meaningful.
    if isinstance(values["mmdit_layers"], int) and isinstance(values["num_layers"], int):
        values["mmdit_layers"] = min(values["mmdit_layers"], values["num_layers"])
    return TransformerConfig(**values).validate(source)


@dataclass(frozen=True)
class VAEConfig:
    """The MagViT causal VAE hyper-parameters (``vae/config.json``)."""

    in_channels: int = 3
    out_channels: int = 3
    latent_channels: int = 16
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    down_block_types: tuple[str, ...] = (
        "SpatialDownBlock3D", "SpatialTemporalDownBlock3D", "SpatialTemporalDownBlock3D", "SpatialTemporalDownBlock3D"
    )
    up_block_types: tuple[str, ...] = (
        "SpatialUpBlock3D", "SpatialTemporalUpBlock3D", "SpatialTemporalUpBlock3D", "SpatialTemporalUpBlock3D"
    )
    layers_per_block: int = 2
    act_fn: str = "silu"
    norm_num_groups: int = 32
    scaling_factor: float = 0.7125
    spatial_group_norm: bool = True
    mini_batch_encoder: int = 4
    mini_batch_decoder: int = 1

    @property
    def spatial_compression(self) -> int:
        return 2 ** sum(1 for t in self.down_block_types[:-1] if t.startswith("Spatial"))

    @property
    def temporal_compression(self) -> int:
        return 2 ** sum(1 for t in self.down_block_types[:-1] if t == "SpatialTemporalDownBlock3D")

    def validate(self, source: str | None = None) -> "VAEConfig":
        kind = "VAE"
        for name in ("in_channels", "out_channels", "latent_channels", "layers_per_block", "norm_num_groups",
                     "mini_batch_encoder", "mini_batch_decoder"):
            _require_int(kind, name, getattr(self, name), 1, source)
        _require_bool(kind, "spatial_group_norm", self.spatial_group_norm, source)
        if not self.block_out_channels or any(
            isinstance(c, bool) or not isinstance(c, int) or c < 1 or c % self.norm_num_groups
            for c in self.block_out_channels
        ):
            raise _fail(kind, "block_out_channels", list(self.block_out_channels),
                        f"positive integers divisible by norm_num_groups ({self.norm_num_groups})", source)
        n = len(self.block_out_channels)
        down_ok = {"SpatialDownBlock3D", "SpatialTemporalDownBlock3D"}
        up_ok = {"SpatialUpBlock3D", "SpatialTemporalUpBlock3D"}
        if len(self.down_block_types) != n or not set(self.down_block_types) <= down_ok:
            raise _fail(kind, "down_block_types", list(self.down_block_types),
                        f"{n} entries from {sorted(down_ok)} (one per block_out_channels entry)", source)
        if len(self.up_block_types) != n or not set(self.up_block_types) <= up_ok:
            raise _fail(kind, "up_block_types", list(self.up_block_types),
                        f"{n} entries from {sorted(up_ok)} (one per block_out_channels entry)", source)
        if self.act_fn != "silu":
            raise _fail(kind, "act_fn", self.act_fn, "'silu'", source)
        if not _positive_number(self.scaling_factor):
            raise _fail(kind, "scaling_factor", self.scaling_factor, "a positive finite number", source)
        if self.mini_batch_encoder != self.temporal_compression:
            raise _fail(kind, "mini_batch_encoder", self.mini_batch_encoder,
                        f"the temporal compression of down_block_types ({self.temporal_compression})", source)
        if self.mini_batch_decoder != 1:
            raise _fail(kind, "mini_batch_decoder", self.mini_batch_decoder, "1 (one latent frame per chunk)", source)
        return self


_IGNORED_VAE_FIELDS = frozenset(
    {
        "_class_name", "_diffusers_version", "_name_or_path", "force_upcast", "upcast_vae", "ch", "ch_mult",
        "use_gc_blocks", "mid_block_type", "mid_block_use_attention", "mid_block_attention_type",
        "mid_block_num_attention_heads", "use_tiling", "use_tiling_encoder", "use_tiling_decoder",
        "tile_sample_min_size", "tile_overlap_factor", "slice_mag_vae", "slice_compression_vae",
        "cache_compression_vae", "cache_mag_vae", "vae_type", "sample_size",
    }
)


def vae_config_from_dict(raw: dict[str, Any], source: str | None = None) -> VAEConfig:
    """Build a validated :class:`VAEConfig`; both layouts store the same VAE fields."""
    values = _split_known("VAE", VAEConfig, raw, _IGNORED_VAE_FIELDS, source)
    for name in ("block_out_channels", "down_block_types", "up_block_types"):
        if name in values:
            if not isinstance(values[name], (list, tuple)):
                raise _fail("VAE", name, values[name], "a list", source)
            values[name] = tuple(values[name])
    for flag in ("cache_mag_vae",):
        if raw.get(flag) is False:
            raise _fail("VAE", flag, raw[flag],
                        "true: only the cached causal chunking of EasyAnimate V5/V5.1 is implemented", source)
    if raw.get("mid_block_use_attention"):
        raise _fail("VAE", "mid_block_use_attention", raw["mid_block_use_attention"],
                    "false (as in every V5/V5.1 VAE)", source)
    return VAEConfig(**values).validate(source)


def read_config_json(path: Path) -> dict[str, Any]:
    """Parse a ``config.json``; errors name the file and say what to do."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist. Every EasyAnimate model component folder needs its config.json; "
            f"download the complete model folder again."
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}). Replace it with the file from the model's release.") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds a JSON {type(data).__name__}, expected an object of config fields.")
    return data
