"""Aspect-ratio buckets by token length, frame windows, and the order batches are drawn in.

Reference 9.2 (``--training_with_video_token_length``): every batch holds about the same number of tokens. A clip
of the full frame count trains at ``video_size`` squared pixels; shorter clips and images get a larger area, up to
``image_size`` squared, so that latent frames x area stays constant. A bucket never upscales the source beyond 1.25x
its short side. The size is fitted to the closest of the official aspect ratios (height / width; the table lives in
``resize.py``) and rounded to multiples of 16. Videos are sampled with a stride, inside the 10 %..90 % part of the
clip when it is long enough, to 4k+1 frames.

Batches hold items of one bucket. The order is a pure function of (seed, epoch), so a resumed run draws exactly
the batches the interrupted one would have drawn.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..resize import closest_ratio
from ..video import SIZE_MULTIPLE, latent_frames
from .dataset import Entry

MAX_UPSCALE = 1.25
CLIP_KEEP = (0.1, 0.9)  # video_length_drop_start / _end


@dataclass(frozen=True)
class BucketOptions:
    video_size: int = 512  # side of the area a clip of ``frames`` frames trains at
    image_size: int = 1024  # largest side of that area for images and short clips
    frames: int = 49  # most frames per clip, 4k+1
    stride: int = 3  # source frames between two sampled frames

    def checked(self) -> "BucketOptions":
        for name in ("video_size", "image_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < SIZE_MULTIPLE:
                raise ValueError(f"{name} = {value!r}: expected an integer of at least {SIZE_MULTIPLE}.")
        if isinstance(self.frames, bool) or not isinstance(self.frames, int) or self.frames < 1 or \
                (self.frames - 1) % 4:
            raise ValueError(f"frames = {self.frames!r}: expected 4k+1 (1, 5, 9, ..., 49).")
        if isinstance(self.stride, bool) or not isinstance(self.stride, int) or self.stride < 1:
            raise ValueError(f"stride = {self.stride!r}: expected an integer >= 1.")
        return self


@dataclass(frozen=True, order=True)
class Bucket:
    frames: int
    height: int
    width: int

    def __str__(self) -> str:
        return f"{self.width}x{self.height}x{self.frames}"


def _round16(x: float) -> int:
    return max(SIZE_MULTIPLE, int(x / SIZE_MULTIPLE + 0.5) * SIZE_MULTIPLE)  # half up, not to even


def clip_frames(available: int, options: BucketOptions) -> int:
    """Frames a clip of ``available`` frames trains with: the largest 4k+1 <= both limits."""
    return (min(options.frames, available) - 1) // 4 * 4 + 1


def bucket_for(entry: Entry, options: BucketOptions) -> Bucket:
    frames = 1 if entry.kind == "image" else clip_frames(entry.frames, options)
    budget = latent_frames(options.frames) * options.video_size ** 2
    area = min(budget / latent_frames(frames), options.image_size ** 2)
    ratio = closest_ratio(entry.width, entry.height)
    short = min(math.sqrt(area * ratio), math.sqrt(area / ratio))
    limit = MAX_UPSCALE * min(entry.width, entry.height)
    if short > limit:
        area *= (limit / short) ** 2
    return Bucket(frames=frames, height=_round16(math.sqrt(area * ratio)), width=_round16(math.sqrt(area / ratio)))


def frame_indices(entry: Entry, frames: int, stride: int, generator: torch.Generator | None) -> list[int]:
    """Source frame indices of one clip window: random start with a generator, the centered window without."""
    if entry.kind == "image" or frames == 1:
        return [0]
    stride = max(1, min(stride, (entry.frames - 1) // (frames - 1)))
    span = (frames - 1) * stride + 1
    lo, hi = int(entry.frames * CLIP_KEEP[0]), int(entry.frames * CLIP_KEEP[1])
    if hi - lo < span:
        lo, hi = 0, entry.frames
    slack = hi - lo - span
    offset = slack // 2 if generator is None else int(torch.randint(0, slack + 1, (1,), generator=generator))
    start = lo + offset
    return list(range(start, start + span, stride))


def seeded_generator(*parts: int) -> torch.Generator:
    """A CPU generator seeded by a tuple of integers (seed, epoch, step, process...)."""
    seed = 0
    for part in parts:
        seed = (seed * 1_000_003 + part) % (2 ** 63)
    return torch.Generator().manual_seed(seed)


def epoch_batches(buckets: Sequence[Bucket], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Indices into ``buckets`` grouped into batches of one bucket each, in a shuffled order fixed by seed/epoch."""
    groups: dict[Bucket, list[int]] = {}
    for i, bucket in enumerate(buckets):
        groups.setdefault(bucket, []).append(i)
    generator = seeded_generator(seed, epoch)
    batches = []
    for bucket in sorted(groups):
        members = groups[bucket]
        order = torch.randperm(len(members), generator=generator).tolist()
        shuffled = [members[i] for i in order]
        batches += [shuffled[i:i + batch_size] for i in range(0, len(shuffled), batch_size)]
    order = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in order]


@dataclass(frozen=True)
class BatchSchedule:
    """The micro-batches of one process: every process takes its own share of each epoch's batches."""

    buckets: tuple[Bucket, ...]
    batch_size: int
    seed: int
    process_index: int = 0
    num_processes: int = 1

    @property
    def per_epoch(self) -> int:
        n = len(epoch_batches(self.buckets, self.batch_size, self.seed, 0))
        return max(1, n // self.num_processes)

    def micro_batch(self, micro_step: int) -> tuple[int, list[int]]:
        """(epoch, item indices) of this process's ``micro_step``-th micro-batch (0-based)."""
        per_epoch = self.per_epoch
        epoch, position = divmod(micro_step, per_epoch)
        batches = epoch_batches(self.buckets, self.batch_size, self.seed, epoch)
        while len(batches) < self.num_processes:  # fewer batches than processes: share them round-robin
            batches = batches + batches
        return epoch, batches[self.process_index::self.num_processes][position]
