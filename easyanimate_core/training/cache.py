"""Encoding training items to what the transformer consumes, kept on disk so each is encoded once per dataset.

An item becomes the VAE posterior of its frames (scaled mean and std, so every step can draw a fresh latent sample
as the reference does) and, for InP models and videos, the inpaint channels with its first frame known; a caption
becomes its Qwen2-VL hidden states. Cache files are named by a hash of everything that changes their content (the
file's path, size and modification time, the bucket, the frame window, the encoder's weight files), so several
runs and datasets can share one cache folder, and a changed file or model is encoded again. Files are written to
a temporary name, checked and renamed (``atomic_files``), so an interrupted run never leaves a broken entry; what a
killed run left half-written is removed when the next run prepares the cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..atomic_files import remove_stale
from ..conditioning import inpaint_conditioning
from ..safetensors_io import write_safetensors
from ..text_encoder import QwenTextEncoder
from ..vae import MagvitVAE
from .buckets import Bucket
from .dataset import Entry, read_pixels

logger = logging.getLogger(__name__)

INPAINT_CHANNELS = 17  # mask + masked-video latents


def component_id(folder: str | Path) -> str:
    """A short fingerprint of one model component folder (config and weight file names, sizes, times)."""
    folder = Path(folder).resolve()
    parts = [str(folder)]
    for path in sorted(folder.glob("*.json")) + sorted(folder.glob("*.safetensors")):
        stat = path.stat()
        parts.append(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, ensure_ascii=False).encode()).hexdigest()[:32]


def item_key(vae_id: str, entry: Entry, bucket: Bucket, indices: Sequence[int], inpaint: bool) -> str:
    stat = entry.path.stat()
    return _key(vae_id, str(entry.path.resolve()), stat.st_size, stat.st_mtime_ns, str(bucket), list(indices),
                inpaint)


def text_key(encoder_id: str, text: str) -> str:
    return _key(encoder_id, text)


def encode_item(vae: MagvitVAE, entry: Entry, bucket: Bucket, indices: Sequence[int], *, inpaint: bool,
                generator: torch.Generator) -> dict[str, torch.Tensor]:
    """``mean``/``std`` [16, T, h, w] of the scaled posterior; ``inpaint`` [17, T, h, w] for InP videos."""
    pixels = read_pixels(entry, indices, bucket.width, bucket.height)  # [1, 3, F, H, W]
    param = next(vae.parameters())
    with torch.inference_mode():
        posterior = vae.encode(pixels.to(device=param.device, dtype=param.dtype))
        scale = vae.scaling_factor
        out = {"mean": (posterior.mean[0].float() * scale).cpu(),
               "std": (torch.exp(0.5 * posterior.logvar[0].float()) * scale).cpu()}
        if inpaint and bucket.frames > 1:
            keep = torch.zeros(bucket.frames, dtype=torch.bool)
            keep[0] = True  # image-to-video: the first frame is known
            conditioning = inpaint_conditioning(vae, pixels, keep, frames=bucket.frames, width=bucket.width,
                                                height=bucket.height, add_noise=True, generator=generator)
            out["inpaint"] = conditioning.inpaint_latents[0].float().cpu()
    return out


def encode_texts(encoder: QwenTextEncoder, texts: Sequence[str], batch: int = 8) -> list[torch.Tensor]:
    """Hidden states [L, D] per text, on the CPU in the encoder's dtype."""
    out = []
    for i in range(0, len(texts), batch):
        states = encoder.encode(list(texts[i:i + batch])).states
        out += [s.cpu() for s in states]
    return out


@dataclass(frozen=True)
class DiskCache:
    """``folder/latents/<key>.safetensors`` and ``folder/text/<key>.safetensors``."""

    folder: Path
    KINDS = ("latents", "text")

    def _path(self, kind: str, key: str) -> Path:
        return self.folder / kind / f"{key}.safetensors"

    def has(self, kind: str, key: str) -> bool:
        return self._path(kind, key).is_file()

    def load(self, kind: str, key: str) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        path = self._path(kind, key)
        try:
            return load_file(str(path))
        except (OSError, ValueError, RuntimeError) as exc:
            raise ValueError(f"Cache file {path} is unreadable ({exc}); delete it (or the cache folder "
                             f"{self.folder}) and run again.") from exc

    def save(self, kind: str, key: str, tensors: dict[str, torch.Tensor]) -> None:
        write_safetensors(self._path(kind, key), tensors)

    def remove_stale(self) -> list[Path]:
        """Delete the temporary files of killed runs (never those of a run still encoding into this cache)."""
        return [path for kind in self.KINDS for path in remove_stale(self.folder / kind)]


def assemble_batch(
    items: Sequence[dict[str, torch.Tensor]],
    texts: Sequence[torch.Tensor],
    empty_text: torch.Tensor,
    *,
    generator: torch.Generator,
    caption_dropout: float,
    inpaint_model: bool,
    i2v_ratio: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Latent samples [B, 16, T, h, w], text states [B, L, D] and InP channels [B, 17, T, h, w] (or None).

    Each item draws its posterior sample, whether its caption is dropped (the prompt becomes "") and whether it
    trains image-to-video (first frame known) or text-to-video (zero InP channels), always in this order, so the
    draws of a step never depend on earlier outcomes.
    """
    latents, states, inpaint = [], [], []
    for item, text in zip(items, texts):
        noise = torch.randn(item["mean"].shape, generator=generator)
        latents.append(item["mean"] + item["std"] * noise)
        drop, i2v = torch.rand(2, generator=generator).tolist()
        states.append(empty_text if drop < caption_dropout else text)
        if inpaint_model:
            use = "inpaint" in item and i2v < i2v_ratio
            inpaint.append(item["inpaint"] if use else torch.zeros(INPAINT_CHANNELS, *item["mean"].shape[1:]))
    return torch.stack(latents), torch.stack([s.float() for s in states]), \
        torch.stack(inpaint) if inpaint_model else None
