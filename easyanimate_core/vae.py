"""The MagViT causal video VAE of EasyAnimate V5/V5.1 (``AutoencoderKLMagvit`` in diffusers).

Video ``[B, 3, F, H, W]`` in [-1, 1] with F = 1 + 4k encodes to latents ``[B, 16, 1 + k, H/8, W/8]`` and back.
Time is processed in chunks: frame 0 alone, then 4 frames per latent frame (decode: latent frame 0, then one
latent frame per chunk). Every causal convolution carries its last two input frames from one chunk to the next in
a :class:`CausalCache` that each ``encode``/``decode`` call creates for itself and passes down the forwards; nothing
is stored on the modules, so calls and batch items never see each other's frames. Group norms run per frame, which
makes the chunked result equal to processing the whole clip causally.

Attribute names equal the checkpoint keys; both published layouts share them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import VAEConfig
from .ops import DEFAULT_OPS, LayerOps
from .vae_tiling import (
    ProgressCallback,
    TileRunner,
    TileSize,
    frame_size,
    plan_tile,
    progress_reporter,
    retry_smaller_tiles,
    run_tiled,
)

_NORM_EPS = 1e-6
_LOGVAR_MIN, _LOGVAR_MAX = -30.0, 20.0
_CAUSAL_KERNEL = 3  # temporal kernel of every causal conv; it carries kernel - 1 = 2 frames


class CausalCache:
    """Frames each causal conv carries into the next temporal chunk of one encode/decode call."""

    def __init__(self) -> None:
        self._frames: dict[nn.Module, torch.Tensor] = {}

    def carried(self, conv: nn.Module) -> torch.Tensor | None:
        return self._frames.get(conv)

    def carry(self, conv: nn.Module, frames: torch.Tensor) -> None:
        self._frames[conv] = frames


def causal_conv(conv: nn.Module, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
    """Run a temporally unpadded 3x3x3 conv causally on one chunk ``[B, C, T, H, W]``.

    The first chunk repeats its first frame twice in front; later chunks start with the frames carried from the
    chunk before (only the last one for temporal stride 2, so the windows keep their phase). One conv call
    evaluates every 3-frame window at the conv's temporal stride.
    """
    t_stride = conv.stride[0]
    carried = cache.carried(conv)
    if carried is None:
        front = x[:, :, :1].expand(-1, -1, _CAUSAL_KERNEL - 1, -1, -1)
    else:
        front = carried[:, :, t_stride - 1:]
    x = torch.cat([front, x], dim=2)  # [B, C, T, H, W] -> [B, C, T + 2 (or + 1), H, W]
    cache.carry(conv, x[:, :, -(_CAUSAL_KERNEL - 1):].clone())
    return conv(x)


def frame_norm(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Group norm over each frame on its own."""
    b = x.shape[0]
    x = x.permute(0, 2, 1, 3, 4).flatten(0, 1)  # [B, C, T, H, W] -> [B*T, C, H, W]
    x = norm(x)
    return x.unflatten(0, (b, -1)).permute(0, 2, 1, 3, 4)  # [B*T, C, H, W] -> [B, C, T, H, W]


@dataclass(frozen=True, eq=False)
class Posterior:
    """Diagonal Gaussian over unscaled latents ``[B, 16, T, h, w]``."""

    mean: torch.Tensor
    logvar: torch.Tensor

    @classmethod
    def from_moments(cls, moments: torch.Tensor) -> Posterior:
        mean, logvar = moments.chunk(2, dim=1)  # [B, 32, T, h, w] -> 2 x [B, 16, T, h, w]
        return cls(mean, logvar.clamp(_LOGVAR_MIN, _LOGVAR_MAX))

    def mode(self) -> torch.Tensor:
        return self.mean

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        device = generator.device if generator is not None else self.mean.device
        noise = torch.randn(self.mean.shape, generator=generator, device=device, dtype=self.mean.dtype)
        return self.mean + torch.exp(0.5 * self.logvar) * noise.to(self.mean.device)


class ResidualBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, groups: int, *, dtype, device, ops: LayerOps):
        super().__init__()
        kw = {"dtype": dtype, "device": device}
        self.norm1 = ops.GroupNorm(groups, in_ch, eps=_NORM_EPS, **kw)
        self.conv1 = ops.Conv3d(in_ch, out_ch, 3, padding=(0, 1, 1), **kw)
        self.norm2 = ops.GroupNorm(groups, out_ch, eps=_NORM_EPS, **kw)
        self.conv2 = ops.Conv3d(out_ch, out_ch, 3, padding=(0, 1, 1), **kw)
        self.shortcut = ops.Conv3d(in_ch, out_ch, 1, **kw) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        h = causal_conv(self.conv1, F.silu(frame_norm(self.norm1, x)), cache)
        h = causal_conv(self.conv2, F.silu(frame_norm(self.norm2, h)), cache)
        return h + self.shortcut(x)


class Downsampler(nn.Module):
    """Halves H and W (and T when ``temporal``): pad right/bottom by one, then a stride-2 conv."""

    def __init__(self, ch: int, temporal: bool, *, dtype, device, ops: LayerOps):
        super().__init__()
        stride = (2 if temporal else 1, 2, 2)
        self.conv = ops.Conv3d(ch, ch, 3, stride=stride, padding=0, dtype=dtype, device=device)

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        return causal_conv(self.conv, F.pad(x, (0, 1, 0, 1)), cache)


class Upsampler(nn.Module):
    """Doubles H and W; when ``temporal``, also doubles every frame of all chunks but the first."""

    def __init__(self, ch: int, temporal: bool, *, dtype, device, ops: LayerOps):
        super().__init__()
        self.temporal = temporal
        self.conv = ops.Conv3d(ch, ch, 3, padding=(0, 1, 1), dtype=dtype, device=device)

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        first_chunk = cache.carried(self.conv) is None
        x = F.interpolate(x, scale_factor=(1, 2, 2), mode="nearest")  # [B, C, T, H, W] -> [B, C, T, 2H, 2W]
        x = causal_conv(self.conv, x, cache)
        if self.temporal and not first_chunk:
            x = x.repeat_interleave(2, dim=2)  # [B, C, T, 2H, 2W] -> [B, C, 2T, 2H, 2W]
        return x


class ResidualStack(nn.Module):
    """``layers`` residual blocks; the mid block, and the body of the down and up blocks."""

    def __init__(self, in_ch: int, out_ch: int, layers: int, groups: int, *, dtype, device, ops: LayerOps):
        super().__init__()
        self.convs = nn.ModuleList(
            ResidualBlock(in_ch if i == 0 else out_ch, out_ch, groups, dtype=dtype, device=device, ops=ops)
            for i in range(layers)
        )

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        for block in self.convs:
            x = block(x, cache)
        return x


class DownBlock(ResidualStack):
    def __init__(self, in_ch: int, out_ch: int, layers: int, groups: int, downsample: str | None, *, dtype, device,
                 ops: LayerOps):
        super().__init__(in_ch, out_ch, layers, groups, dtype=dtype, device=device, ops=ops)
        self.downsampler = None if downsample is None else Downsampler(
            out_ch, downsample == "SpatialTemporalDownBlock3D", dtype=dtype, device=device, ops=ops)

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        x = super().forward(x, cache)
        return x if self.downsampler is None else self.downsampler(x, cache)


class UpBlock(ResidualStack):
    def __init__(self, in_ch: int, out_ch: int, layers: int, groups: int, upsample: str | None, *, dtype, device,
                 ops: LayerOps):
        super().__init__(in_ch, out_ch, layers, groups, dtype=dtype, device=device, ops=ops)
        self.upsampler = None if upsample is None else Upsampler(
            out_ch, upsample == "SpatialTemporalUpBlock3D", dtype=dtype, device=device, ops=ops)

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        x = super().forward(x, cache)
        return x if self.upsampler is None else self.upsampler(x, cache)


class Encoder(nn.Module):
    def __init__(self, cfg: VAEConfig, *, dtype, device, ops: LayerOps):
        super().__init__()
        kw = {"dtype": dtype, "device": device}
        chs, groups = cfg.block_out_channels, cfg.norm_num_groups
        self.conv_in = ops.Conv3d(cfg.in_channels, chs[0], 3, padding=(0, 1, 1), **kw)
        self.down_blocks = nn.ModuleList()
        for i, kind in enumerate(cfg.down_block_types):
            last = i == len(chs) - 1  # the deepest block keeps its resolution
            self.down_blocks.append(DownBlock(chs[max(i - 1, 0)], chs[i], cfg.layers_per_block, groups,
                                              None if last else kind, ops=ops, **kw))
        self.mid_block = ResidualStack(chs[-1], chs[-1], cfg.layers_per_block, groups, ops=ops, **kw)
        self.conv_norm_out = ops.GroupNorm(groups, chs[-1], eps=_NORM_EPS, **kw)
        self.conv_out = ops.Conv3d(chs[-1], 2 * cfg.latent_channels, 3, padding=(0, 1, 1), **kw)

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        # 1. [B, 3, T, H, W] -> [B, C0, T, H, W]
        x = causal_conv(self.conv_in, x, cache)
        # 2. down to [B, C_last, T', H/8, W/8]; T' = 1 for the first chunk (T = 1) and T/4 after it
        for block in self.down_blocks:
            x = block(x, cache)
        # 3. mid block, then norm -> SiLU -> conv to the moments [B, 2 * latent, T', H/8, W/8]
        x = self.mid_block(x, cache)
        return causal_conv(self.conv_out, F.silu(frame_norm(self.conv_norm_out, x)), cache)


class Decoder(nn.Module):
    def __init__(self, cfg: VAEConfig, *, dtype, device, ops: LayerOps):
        super().__init__()
        kw = {"dtype": dtype, "device": device}
        chs, groups = tuple(reversed(cfg.block_out_channels)), cfg.norm_num_groups
        self.conv_in = ops.Conv3d(cfg.latent_channels, chs[0], 3, padding=(0, 1, 1), **kw)
        self.mid_block = ResidualStack(chs[0], chs[0], cfg.layers_per_block, groups, ops=ops, **kw)
        self.up_blocks = nn.ModuleList()
        for i, kind in enumerate(cfg.up_block_types):
            last = i == len(chs) - 1  # the output block keeps its resolution
            self.up_blocks.append(UpBlock(chs[max(i - 1, 0)], chs[i], cfg.layers_per_block + 1, groups,
                                          None if last else kind, ops=ops, **kw))
        self.conv_norm_out = ops.GroupNorm(groups, chs[-1], eps=_NORM_EPS, **kw)
        self.conv_out = ops.Conv3d(chs[-1], cfg.out_channels, 3, padding=(0, 1, 1), **kw)

    def forward(self, z: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        # 1. [B, latent, T, h, w] -> [B, C_last, T, h, w]
        x = causal_conv(self.conv_in, z, cache)
        # 2. mid block, then up to [B, C0, T', 8h, 8w]; T' = 1 for the first chunk (T = 1) and 4T after it
        x = self.mid_block(x, cache)
        for block in self.up_blocks:
            x = block(x, cache)
        # 3. norm -> SiLU -> conv to pixels [B, 3, T', 8h, 8w]
        return causal_conv(self.conv_out, F.silu(frame_norm(self.conv_norm_out, x)), cache)


def _chunks(frames: int, step: int) -> list[slice]:
    """Temporal chunks: frame 0 alone, then ``step`` frames at a time."""
    return [slice(0, 1), *(slice(s, s + step) for s in range(1, frames, step))]


class MagvitVAE(nn.Module):
    """EasyAnimate's causal video VAE; ``encode``/``decode`` work on unscaled latents."""

    def __init__(self, config: VAEConfig, *, dtype: torch.dtype | None = None, device=None,
                 ops: LayerOps = DEFAULT_OPS):
        super().__init__()
        if not config.spatial_group_norm:
            raise ValueError("VAE config field 'spatial_group_norm' = False: only the per-frame group norm of the "
                             "EasyAnimate V5/V5.1 VAEs is implemented; use a V5/V5.1 vae/config.json.")
        self.config = config
        kw = {"dtype": dtype, "device": device, "ops": ops}
        latent = config.latent_channels
        self.encoder = Encoder(config, **kw)
        self.decoder = Decoder(config, **kw)
        self.quant_conv = ops.Conv3d(2 * latent, 2 * latent, 1, dtype=dtype, device=device)
        self.post_quant_conv = ops.Conv3d(latent, latent, 1, dtype=dtype, device=device)

    @property
    def dtype(self) -> torch.dtype:
        return self.post_quant_conv.weight.dtype

    @property
    def scaling_factor(self) -> float:
        return self.config.scaling_factor

    def residual_blocks(self) -> list[nn.Module]:
        """Every residual block of the encoder and the decoder, in order: the VAE's units of work (what a
        caller checks for cancellation between)."""
        return [m for m in self.modules() if isinstance(m, ResidualBlock)]

    def encode(self, video: torch.Tensor, *, callback: ProgressCallback | None = None, tile_size: TileSize = None,
               tile_overlap: float = 0.25) -> Posterior:
        """``[B, 3, 1 + 4k, H, W]`` in [-1, 1] -> posterior over ``[B, 16, 1 + k, H/8, W/8]``.

        ``callback(done, total)`` runs after every temporal chunk (of every tile) and may raise to cancel.
        ``tile_size`` (pixels) encodes overlapping spatial tiles separately to save memory; ``"auto"`` picks whole
        frames or a tile size from the free memory (:mod:`.vae_tiling`).
        """
        step, channels = self.config.mini_batch_encoder, self.config.in_channels
        if video.ndim != 5 or video.shape[1] != channels:
            raise ValueError(f"encode expects a video [B, {channels}, F, H, W]; got shape {tuple(video.shape)}.")
        frames = video.shape[2]
        if frames < 1 or (frames - 1) % step:
            raise ValueError(
                f"The VAE encodes 1 + {step}k frames (1, {1 + step}, {1 + 2 * step}, ...); got {frames} frames "
                f"(shape {tuple(video.shape)}). Trim or pad the video to a valid count."
            )

        chunks = _chunks(frames, step)

        def run(tile: torch.Tensor, report: Callable[[], None]) -> torch.Tensor:
            cache = CausalCache()
            out = []
            for chunk in chunks:
                out.append(self.encoder(tile[:, :, chunk], cache))  # [B, 3, 1 or 4, H, W] -> [B, 32, 1, h, w]
                report()
            return self.quant_conv(torch.cat(out, dim=2))  # -> [B, 32, 1 + k, h, w]

        moments = self._tiled(run, video, True, len(chunks), callback, tile_size, tile_overlap)
        return Posterior.from_moments(moments)

    def decode(self, latents: torch.Tensor, *, callback: ProgressCallback | None = None,
               tile_size: TileSize = None, tile_overlap: float = 0.25) -> torch.Tensor:
        """Unscaled ``[B, 16, T, h, w]`` -> video ``[B, 3, 1 + 4(T - 1), 8h, 8w]`` clamped to [-1, 1].

        ``callback(done, total)`` runs after every latent frame (of every tile) and may raise to cancel.
        ``tile_size`` (pixels) decodes overlapping spatial tiles separately and cross-fades them; ``"auto"`` picks
        whole frames or a tile size from the free memory (:mod:`.vae_tiling`).
        """
        channels = self.config.latent_channels
        if latents.ndim != 5 or latents.shape[1] != channels or latents.shape[2] < 1:
            raise ValueError(f"decode expects latents [B, {channels}, T, h, w] with T >= 1; "
                             f"got shape {tuple(latents.shape)}.")

        chunks = _chunks(latents.shape[2], self.config.mini_batch_decoder)

        def run(tile: torch.Tensor, report: Callable[[], None]) -> torch.Tensor:
            cache = CausalCache()
            tile = self.post_quant_conv(tile)
            out = []
            for chunk in chunks:
                out.append(self.decoder(tile[:, :, chunk], cache))  # [B, 16, 1, h, w] -> [B, 3, 1 or 4, 8h, 8w]
                report()
            return torch.cat(out, dim=2)  # -> [B, 3, 1 + 4(T - 1), 8h, 8w]

        video = self._tiled(run, latents, False, len(chunks), callback, tile_size, tile_overlap)
        return video.clamp(-1.0, 1.0)

    def _tiled(self, run: TileRunner, x: torch.Tensor, encode: bool, chunks: int,
               callback: ProgressCallback | None, tile_size: TileSize, tile_overlap: float) -> torch.Tensor:
        """``run`` on the whole frame, or on tiles of ``tile_size`` pixels when the frame is larger than one."""
        c = self.config.spatial_compression
        if tile_size == "auto":
            planned = plan_tile(self.config, x.shape, encode=encode, dtype=x.dtype, device=x.device)
            return retry_smaller_tiles(
                lambda tile: self._tiled(run, x, encode, chunks, callback, tile, tile_overlap), planned,
                frame_size(self.config, x.shape, encode=encode), what="encode" if encode else "decode",
                device=x.device)
        if tile_size is not None and (isinstance(tile_size, str) or tile_size < c or not 0.0 <= tile_overlap < 1.0):
            raise ValueError(f"tile_size = {tile_size!r}, tile_overlap = {tile_overlap}: expected None, 'auto' or a "
                             f"tile of at least {c} pixels, and an overlap fraction in [0, 1).")
        in_scale, out_scale = (c, 1) if encode else (1, c)
        h, w = x.shape[-2] // in_scale, x.shape[-1] // in_scale
        if tile_size is None or (h <= tile_size // c and w <= tile_size // c):
            return run(x, progress_reporter(callback, chunks))
        tile = tile_size // c
        return run_tiled(run, x, in_scale=in_scale, out_scale=out_scale, tile=tile,
                         overlap=min(tile - 1, round(tile * tile_overlap)), chunks=chunks, callback=callback)
