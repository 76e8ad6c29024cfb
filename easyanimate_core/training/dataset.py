"""Training data: the EasyAnimate metadata JSON or a folder of captioned files -> checked entries and a report.

Metadata (the EasyAnimate README format, reference 9.2): a JSON list of ``{"file_path": ..., "text": ...,
"type": "image" | "video"}``, optionally with ``"width"``/``"height"``. Relative paths resolve against the
metadata file's folder, or against ``data_root`` when one is given. A folder of images and videos with a caption
in a ``.txt`` file of the same name works too. Every entry is opened once while the dataset is read; entries that
are malformed, missing or unreadable are skipped and listed in the report, never silently.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..video import frames_to_model, read_image, read_video

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
VIDEO_SUFFIXES = (".mp4", ".mov", ".webm", ".mkv", ".avi", ".gif")
KINDS = ("image", "video")


@dataclass(frozen=True)
class Entry:
    """One usable training item; ``frames`` is 1 for images."""

    index: int  # position in the metadata list
    path: Path
    text: str
    kind: str
    width: int
    height: int
    frames: int


@dataclass(frozen=True)
class Skipped:
    index: int
    file_path: str
    reason: str


@dataclass(frozen=True)
class DatasetReport:
    source: str
    total: int
    images: int
    videos: int
    skipped: tuple[Skipped, ...]

    def summary(self) -> str:
        text = (f"{self.source}: {self.images + self.videos} of {self.total} entries usable ({self.images} images, "
                f"{self.videos} videos), {len(self.skipped)} skipped")
        if self.skipped:
            text += ": " + "; ".join(f"#{s.index} {s.file_path}: {s.reason}" for s in self.skipped[:5])
            if len(self.skipped) > 5:
                text += f"; ... ({len(self.skipped) - 5} more in the report file)"
        return text

    def to_json(self) -> dict:
        return {"source": self.source, "total": self.total, "images": self.images, "videos": self.videos,
                "skipped": [asdict(s) for s in self.skipped]}


def metadata_from_folder(folder: str | Path, default_caption: str = "") -> list[dict]:
    """Every image and video directly in ``folder`` with the caption in ``<name>.txt`` (else ``default_caption``)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"Dataset folder {folder} does not exist.")
    entries = []
    for path in sorted(folder.iterdir()):
        suffix = path.suffix.lower()
        if not path.is_file() or suffix not in IMAGE_SUFFIXES + VIDEO_SUFFIXES:
            continue
        caption = path.with_suffix(".txt")
        text = caption.read_text(encoding="utf-8").strip() if caption.is_file() else default_caption
        entries.append({"file_path": str(path.resolve()), "text": text,
                        "type": "image" if suffix in IMAGE_SUFFIXES else "video"})
    if not entries:
        raise ValueError(f"Dataset folder {folder} holds no image ({', '.join(IMAGE_SUFFIXES)}) or video "
                         f"({', '.join(VIDEO_SUFFIXES)}) files.")
    return entries


def read_metadata(path: str | Path) -> list:
    """The raw entry list of a metadata JSON file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Dataset metadata {path} does not exist.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}). Expected a list of "
                         f'{{"file_path": ..., "text": ..., "type": "image" or "video"}}.') from exc
    if not isinstance(data, list):
        raise ValueError(f"{path} holds a JSON {type(data).__name__}; expected a list of "
                         f'{{"file_path": ..., "text": ..., "type": "image" or "video"}}.')
    return data


def probe(path: Path, kind: str) -> tuple[int, int, int]:
    """(width, height, frames) of an image or video file; ValueError/OSError when it cannot be decoded.

    A video's frame count comes from its header (duration x fps), so large datasets are checked without decoding
    every clip; :func:`read_pixels` copes with a clip that turns out shorter.
    """
    if kind == "image":
        image = read_image(path)
        return image.shape[2], image.shape[1], 1
    import imageio_ffmpeg

    try:
        reader = imageio_ffmpeg.read_frames(str(path))
        meta = next(reader)
        next(reader)  # the first frame decodes
        reader.close()
        width, height = meta["size"]
        frames = int(meta["duration"] * meta["fps"] + 0.5) if meta.get("duration") and meta.get("fps") else 0
        if frames < 1:
            frames, _ = imageio_ffmpeg.count_frames_and_secs(str(path))
    except (RuntimeError, OSError, StopIteration, KeyError, TypeError) as exc:
        raise ValueError(f"cannot decode the video ({str(exc).splitlines()[0] if str(exc) else exc})") from exc
    if frames < 1:
        raise ValueError("the video holds no frames")
    return width, height, frames


def _entry(index: int, raw, base: Path) -> Entry:
    """One raw metadata item -> Entry; ValueError/OSError/FileNotFoundError with the reason otherwise."""
    if not isinstance(raw, dict):
        raise ValueError(f"expected an object with file_path, text and type, got {type(raw).__name__}")
    file_path, text = raw.get("file_path"), raw.get("text")
    if not isinstance(file_path, str) or not file_path:
        raise ValueError("no file_path")
    if not isinstance(text, str):
        raise ValueError("no text (use an empty string for no caption)")
    path = Path(file_path).expanduser()
    path = path if path.is_absolute() else base / path
    suffix = path.suffix.lower()
    kind = raw.get("type", "video" if suffix in VIDEO_SUFFIXES else "image")
    if kind not in KINDS:
        raise ValueError(f"type {kind!r}; expected 'image' or 'video'")
    if not path.is_file():
        raise FileNotFoundError(f"file not found ({path})")
    width, height, frames = probe(path, kind)
    return Entry(index=index, path=path, text=text.strip(), kind=kind, width=width, height=height, frames=frames)


def load_dataset(data: str | Path, data_root: str | Path | None = None,
                 default_caption: str = "") -> tuple[list[Entry], DatasetReport]:
    """Read a metadata JSON file or a folder of captioned files; every entry is checked by opening its file."""
    data = Path(data).expanduser()
    if data.is_dir():
        raw_entries, base = metadata_from_folder(data, default_caption), data
    else:
        raw_entries, base = read_metadata(data), data.resolve().parent
    if data_root is not None:
        base = Path(data_root).expanduser()
    entries, skipped = [], []
    for index, raw in enumerate(raw_entries):
        try:
            entries.append(_entry(index, raw, base))
        except (ValueError, OSError) as exc:
            name = raw.get("file_path") if isinstance(raw, dict) else None
            skipped.append(Skipped(index=index, file_path=str(name), reason=str(exc)))
    report = DatasetReport(source=str(data), total=len(raw_entries),
                           images=sum(e.kind == "image" for e in entries),
                           videos=sum(e.kind == "video" for e in entries), skipped=tuple(skipped))
    if skipped:
        logger.warning("%s", report.summary())
    if not entries:
        raise ValueError(f"{report.summary()}. No usable entry: check file_path values (relative paths resolve "
                         f"against {base}; --data-root changes that).")
    return entries, report


def read_pixels(entry: Entry, frame_indices: Sequence[int], width: int, height: int) -> torch.Tensor:
    """The chosen frames, center-cropped to the bucket's aspect ratio and resized: [1, 3, F, height, width]."""
    if entry.kind == "image":
        frames = read_image(entry.path)[[0] * len(frame_indices)]  # [F, H0, W0, 3]
    else:
        wanted = sorted(set(frame_indices))
        found = read_video(entry.path, indices=wanted)  # only the frames used, never the whole clip
        if found.shape[0] < len(wanted):
            logger.warning("%s has fewer frames than its header says (%d): the last frame is repeated.",
                           entry.path, entry.frames)
        slot = {index: min(k, found.shape[0] - 1) for k, index in enumerate(wanted)}
        frames = found[[slot[i] for i in frame_indices]]  # [F, H0, W0, 3]
    return frames_to_model(frames, width, height, resize="crop")  # centred, so the resize never distorts
