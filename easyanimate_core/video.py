"""Frame layouts, frame-count and size rules, and reading/writing images and videos.

ComfyUI's IMAGE is ``[F, H, W, C]`` float in 0..1; the models take ``[B, C, F, H, W]`` in [-1, 1]. The VAE needs
4k+1 frames and the transformer a size that is a multiple of 16; the helpers here round only when asked to and
otherwise say which values would work.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .atomic_files import write_bytes, write_file
from .resize import DEFAULT_RESIZE, SIZE_MULTIPLE, resize_frames

LATENT_CHANNELS = 16
_FFMPEG_PREFIX = re.compile(r"\[[^\]]*@ 0x[0-9a-f]+\]\s*")  # "[libx264 @ 0x55ba45f76300] "


def check_frames(frames: int, *, allow_round: bool = False) -> int:
    """A valid frame count (4k+1); rounds down to one when allowed."""
    if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1:
        raise ValueError(f"frames = {frames!r}: expected a positive integer of the form 4k+1 (1, 5, 9, ..., 49).")
    if (frames - 1) % 4:
        if not allow_round:
            lower, upper = (frames - 1) // 4 * 4 + 1, (frames - 1) // 4 * 4 + 5
            raise ValueError(f"frames = {frames}: the VAE needs 4k+1 frames; use {lower} or {upper}.")
        frames = (frames - 1) // 4 * 4 + 1
    return frames


def check_size(width: int, height: int, *, allow_round: bool = False) -> tuple[int, int]:
    """A valid (width, height), multiples of 16; rounds down when allowed."""
    for name, value in (("width", width), ("height", height)):
        if isinstance(value, bool) or not isinstance(value, int) or value < SIZE_MULTIPLE:
            raise ValueError(f"{name} = {value!r}: expected an integer of at least {SIZE_MULTIPLE}.")
    if not allow_round and (width % SIZE_MULTIPLE or height % SIZE_MULTIPLE):
        raise ValueError(f"size {width}x{height}: width and height must be multiples of {SIZE_MULTIPLE}; "
                         f"use {width // SIZE_MULTIPLE * SIZE_MULTIPLE}x{height // SIZE_MULTIPLE * SIZE_MULTIPLE}.")
    return width // SIZE_MULTIPLE * SIZE_MULTIPLE, height // SIZE_MULTIPLE * SIZE_MULTIPLE


def latent_frames(frames: int) -> int:
    return (frames - 1) // 4 + 1


def latent_shape(frames: int, width: int, height: int) -> tuple[int, int, int, int, int]:
    return 1, LATENT_CHANNELS, latent_frames(frames), height // 8, width // 8


def frames_to_model(frames: torch.Tensor, width: int, height: int, resize: str = DEFAULT_RESIZE) -> torch.Tensor:
    """IMAGE ``[F, H, W, C]`` in 0..1 -> ``[1, 3, F, height, width]`` in [-1, 1]; ``resize`` = crop (the default),
    pad or stretch when the aspect ratios differ (``resize.py``; bicubic with antialiasing)."""
    if frames.ndim != 4 or frames.shape[-1] not in (1, 3, 4):
        raise ValueError(f"frames have shape {tuple(frames.shape)}: expected [F, H, W, C] with C = 1, 3 or 4.")
    frames = frames.detach().cpu()  # IMAGE may live on the GPU (ComfyUI --gpu-only); the encoders move it
    x = frames[..., :3].float() if frames.shape[-1] != 1 else frames.float().expand(-1, -1, -1, 3)
    x = resize_frames(x.permute(0, 3, 1, 2), width, height, resize)  # [F, H, W, 3] -> [F, 3, height, width]
    x = x.clamp(0, 1) * 2 - 1
    return x.permute(1, 0, 2, 3).unsqueeze(0)  # [F, 3, H, W] -> [1, 3, F, H, W]


def model_to_frames(video: torch.Tensor) -> torch.Tensor:
    """``[B, 3, F, H, W]`` in [-1, 1] -> IMAGE ``[B*F, H, W, 3]`` float32 in 0..1."""
    x = (video.float().clamp(-1, 1) + 1) / 2
    return x.permute(0, 2, 3, 4, 1).flatten(0, 1).contiguous()  # [B, 3, F, H, W] -> [B*F, H, W, 3]


def read_image(path: str | Path) -> torch.Tensor:
    """An image file -> IMAGE ``[1, H, W, 3]``."""
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise FileNotFoundError(f"Cannot read an image from {path}: check the path and that it is a PNG/JPEG/WebP.")
    return torch.from_numpy(image[..., ::-1].copy()).float().div(255).unsqueeze(0)


def read_video(path: str | Path, max_frames: int | None = None, *, indices: Sequence[int] | None = None
               ) -> torch.Tensor:
    """A video file -> IMAGE ``[F, H, W, 3]``: the first ``max_frames`` frames, or only the frames at ``indices``
    (sorted, duplicates once; decoding stops after the last one, and no other frame is kept)."""
    import imageio_ffmpeg

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Video file {path} does not exist.")
    wanted = None if indices is None else set(indices)
    last = max_frames if wanted is None else max(wanted, default=-1) + 1
    try:
        reader = imageio_ffmpeg.read_frames(str(path))
        meta = next(reader)
        width, height = meta["size"]
        frames = []
        for index, raw in enumerate(reader):
            if last is not None and index >= last:
                break
            if wanted is None or index in wanted:
                frames.append(torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(height, width, 3))
        reader.close()
    except (RuntimeError, OSError, StopIteration) as exc:
        raise ValueError(f"Cannot decode {path} as a video ({exc}).") from exc
    if not frames:
        raise ValueError(f"{path} holds no video frames" + ("" if wanted is None else f" at {sorted(wanted)[:5]}")
                         + ".")
    return torch.stack(frames).float().div(255)


def _to_uint8(frames: torch.Tensor) -> np.ndarray:
    return (frames.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


def write_png(path: str | Path, frame: torch.Tensor) -> Path:
    """One IMAGE frame ``[H, W, 3]`` -> PNG, written whole or not at all (``atomic_files.write_bytes``: the file
    must read back as the encoded bytes before it takes the name)."""
    import cv2

    data = _to_uint8(frame)[..., ::-1]
    encoded, buffer = cv2.imencode(".png", data)
    if not encoded:
        raise OSError(f"Cannot write {path}: OpenCV could not encode a {data.shape[1]}x{data.shape[0]} PNG.")
    return write_bytes(path, buffer.tobytes())


def check_fps(fps: float) -> float:
    """Frames per second of a written video: a finite number above 0."""
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not math.isfinite(fps) or fps <= 0:
        raise ValueError(f"fps = {fps!r}: expected a finite number of frames per second above 0 (the models were "
                         f"trained at 8).")
    return fps


def write_mp4(path: str | Path, frames: torch.Tensor, fps: float = 8) -> Path:
    """IMAGE ``[F, H, W, 3]`` -> H.264 mp4 (yuv420p, playable everywhere), written whole or not at all
    (``atomic_files``): ffmpeg must exit 0 and the file must decode to every frame at the size written."""
    fps = check_fps(fps)
    data = _to_uint8(frames)
    count, height, width = data.shape[:3]

    def check(tmp: Path) -> None:
        decoded = _decoded_frames(tmp)
        if decoded != (count, width, height):
            raise OSError(f"the written video decodes to {decoded[0]} frames of {decoded[1]}x{decoded[2]}, not "
                          f"{count} of {width}x{height}")

    return write_file(path, lambda tmp: _encode_h264(tmp, data, fps), check)


def _encode_h264(path: Path, data: np.ndarray, fps: float) -> None:
    """Run ffmpeg on raw RGB frames ``[F, H, W, 3]`` uint8; raises OSError with its status and last messages."""
    import contextlib
    import signal
    import subprocess
    import tempfile
    from fractions import Fraction

    import imageio_ffmpeg

    height, width = data.shape[1:3]
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-v", "error", "-f", "rawvideo", "-pix_fmt", "rgb24",
               "-s", f"{width}x{height}", "-r", str(Fraction(fps).limit_denominator()), "-i", "-", "-an",
               "-vcodec", "libx264", "-pix_fmt", "yuv420p", "-crf", "18", "-f", "mp4", str(path)]
    with tempfile.TemporaryFile() as log:  # a file, not a pipe: ffmpeg can never block on its own messages
        process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=log)
        try:
            for frame in data:
                process.stdin.write(np.ascontiguousarray(frame).data)
        except OSError:
            pass  # ffmpeg ended early (a broken pipe): its status and messages below say why
        except BaseException:
            process.kill()
            raise
        finally:
            with contextlib.suppress(OSError):
                process.stdin.close()
            status = process.wait()
        if status != 0:
            log.seek(0)
            text = log.read().decode("utf-8", "replace")
            lines = [_FFMPEG_PREFIX.sub("", line).strip() for line in text.splitlines()]
            messages = "; ".join([line for line in lines if line][:2])  # the first says why; the rest follow from it
            ended = f"status {status}" if status > 0 else f"signal {-status}: {signal.strsignal(-status)}"
            raise OSError(f"ffmpeg ended with {ended}" + (f" ({messages})" if messages else ""))


def _decoded_frames(path: Path) -> tuple[int, int, int]:
    """(frames, width, height) of a video, every frame decoded."""
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path))
    try:
        width, height = next(reader)["size"]
        return sum(1 for _ in reader), width, height
    except (RuntimeError, OSError, StopIteration) as exc:
        raise OSError(f"the written video does not decode ({exc})") from exc
    finally:
        reader.close()
