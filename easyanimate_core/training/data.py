"""What the loop draws its batches from: captions and clips from the disk cache, or encoded live.

With the cache (the default), captions are encoded first with the text encoder alone, which is then freed, and
clips with the VAE after it; every process encodes its own share. Without it, both encoders stay loaded and encode
each batch, with a fresh frame window per epoch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..loading import load_vae, resolve_component
from ..text_encoder import load_text_encoder
from .buckets import frame_indices, seeded_generator
from .cache import DiskCache, assemble_batch, component_id, encode_item, encode_texts, item_key, text_key
from .config import TrainingConfig

logger = logging.getLogger(__name__)


@dataclass
class TrainingData:
    """Everything the loop draws batches from, either from the disk cache or encoded live."""

    config: TrainingConfig
    entries: list
    buckets: list
    inpaint_model: bool
    cache: DiskCache | None
    vae_id: str
    text_id: str
    vae: object = None
    encoder: object = None
    prompts: dict = field(default_factory=dict)  # "", validation prompts and the negative -> states [L, D]

    def _window(self, i: int, epoch: int | None) -> list[int]:
        """Cached clips use the centered window; live encoding draws a window per epoch."""
        entry, bucket = self.entries[i], self.buckets[i]
        generator = None if epoch is None else seeded_generator(self.config.seed, epoch, entry.index)
        return frame_indices(entry, bucket.frames, self.config.buckets.stride, generator)

    def _encode(self, i: int, window: list[int]) -> dict:
        return encode_item(self.vae, self.entries[i], self.buckets[i], window, inpaint=self.inpaint_model,
                           generator=seeded_generator(self.config.seed, self.entries[i].index))

    def _item_key(self, i: int) -> str:
        return item_key(self.vae_id, self.entries[i], self.buckets[i], self._window(i, None), self.inpaint_model)

    def uncached_texts(self, texts: list[str]) -> list[str]:
        return [t for t in texts if not self.cache.has("text", text_key(self.text_id, t))]

    def uncached_items(self) -> list[int]:
        return [i for i in range(len(self.entries)) if not self.cache.has("latents", self._item_key(i))]

    def cache_texts(self, encoder, texts: list[str]) -> None:
        for text, states in zip(texts, encode_texts(encoder, texts)):
            self.cache.save("text", text_key(self.text_id, text), {"states": states})

    def cache_items(self, todo: list[int]) -> None:
        for n, i in enumerate(todo, 1):
            self.cache.save("latents", self._item_key(i), self._encode(i, self._window(i, None)))
            if n % 50 == 0 or n == len(todo):
                logger.info("encoded %d of %d clips into %s", n, len(todo), self.cache.folder)

    def cached_text(self, text: str) -> torch.Tensor:
        return self.cache.load("text", text_key(self.text_id, text))["states"]

    def batch(self, indices: list[int], epoch: int, generator: torch.Generator):
        if self.cache is not None:
            items = [self.cache.load("latents", self._item_key(i)) for i in indices]
            texts = [self.cached_text(self.entries[i].text) for i in indices]
        else:
            items = [self._encode(i, self._window(i, epoch)) for i in indices]
            texts = encode_texts(self.encoder, [self.entries[i].text for i in indices])
        return assemble_batch(items, texts, self.prompts[""], generator=generator,
                              caption_dropout=self.config.caption_dropout, inpaint_model=self.inpaint_model,
                              i2v_ratio=self.config.i2v_ratio)


def _free(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def prepare_data(config: TrainingConfig, accelerator, model_dir: Path, entries, buckets, inpaint_model: bool,
                 dtype: torch.dtype) -> TrainingData:
    """Encode what is not cached yet, text encoder and VAE one after the other; in live mode keep both."""
    from ..generation import DEFAULT_NEGATIVE_PROMPT

    device, rank, world = accelerator.device, accelerator.process_index, accelerator.num_processes
    encoder_dir = resolve_component(model_dir, "text_encoder")
    tokenizer_dir = model_dir / "tokenizer" if (model_dir / "tokenizer").is_dir() else encoder_dir
    precision = str(dtype).removeprefix("torch.")  # encodings differ by the encoders' dtype
    data = TrainingData(config, entries, buckets, inpaint_model,
                        DiskCache(config.cache_dir or config.output / "cache") if config.cache else None,
                        f"{component_id(resolve_component(model_dir, 'vae'))}-{precision}",
                        f"{component_id(encoder_dir)}{component_id(tokenizer_dir)}-{precision}")
    prompts = ["", *config.validation_prompts] + ([DEFAULT_NEGATIVE_PROMPT] if config.validation_prompts else [])
    if data.cache is not None and accelerator.is_main_process:
        data.cache.remove_stale()
    if not config.cache:
        data.encoder = load_text_encoder(model_dir, dtype=dtype, device=device)
        data.prompts = dict(zip(prompts, encode_texts(data.encoder, prompts)))
        data.vae = load_vae(model_dir, dtype=dtype, device=device)
        return data

    texts = data.uncached_texts(sorted({e.text for e in entries} | set(prompts)))
    if texts:
        encoder = load_text_encoder(model_dir, dtype=dtype, device=device)
        data.cache_texts(encoder, texts[rank::world])
        del encoder
        _free(device)
    accelerator.wait_for_everyone()
    data.prompts = {p: data.cached_text(p) for p in prompts}
    todo = data.uncached_items()
    if todo or config.validation_prompts:
        data.vae = load_vae(model_dir, dtype=dtype, device=device)
        data.cache_items(todo[rank::world])
        # The transformer trains alone: the VAE waits on the CPU for the validation videos, or goes.
        data.vae = data.vae.to("cpu") if config.validation_prompts else None
        _free(device)
    accelerator.wait_for_everyone()
    return data
