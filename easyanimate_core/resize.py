"""Fitting input images and videos to the output size, and the sizes the models were trained on.

Every start/end/reference image, control video and input video is brought to the output width x height by one of
three modes:

- ``crop`` (the default, as training does): scale to cover the output, keep the centre; nothing is distorted and the
  edges of the longer side are lost.
- ``pad``: scale to fit inside the output and fill the borders with black (0 in IMAGE values, -1 in the model's
  range: what the InP models see for "no content", and what a letterboxed video holds); nothing is lost or distorted.
- ``stretch``: resize to the output as is; the aspect ratio changes when the input's differs.

The official bucket table (``ASPECT_RATIO_512``: aspect ratio height / width -> (height, width) at base 512) is the
one source of truth for both training buckets and :func:`bucket_size`; the official predict scripts scale it by
``base_resolution / 512`` and round down to multiples of 16.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

RESIZE_MODES = ("crop", "pad", "stretch")
DEFAULT_RESIZE = "crop"
BASE_RESOLUTIONS = (512, 768, 960, 1024)
PAD_VALUE = 0.0  # black, in IMAGE values 0..1
SIZE_MULTIPLE = 16  # sides of the model's input (the patch size 2 of the 8x-downsampled latents)

# The official table: aspect ratio (height / width) -> (height, width) in pixels at base resolution 512.
ASPECT_RATIO_512 = {
    0.25: (256, 1024), 0.26: (256, 992), 0.27: (256, 960), 0.28: (256, 928), 0.32: (288, 896), 0.33: (288, 864),
    0.35: (288, 832), 0.4: (320, 800), 0.42: (320, 768), 0.48: (352, 736), 0.5: (352, 704), 0.52: (352, 672),
    0.57: (384, 672), 0.6: (384, 640), 0.68: (416, 608), 0.72: (416, 576), 0.78: (448, 576), 0.82: (448, 544),
    0.88: (480, 544), 0.94: (480, 512), 1.0: (512, 512), 1.07: (512, 480), 1.13: (544, 480), 1.21: (544, 448),
    1.29: (576, 448), 1.38: (576, 416), 1.46: (608, 416), 1.67: (640, 384), 1.75: (672, 384), 2.0: (704, 352),
    2.09: (736, 352), 2.4: (768, 320), 2.5: (800, 320), 2.89: (832, 288), 3.0: (864, 288), 3.11: (896, 288),
    3.62: (928, 256), 3.75: (960, 256), 3.88: (992, 256), 4.0: (1024, 256),
}
ASPECT_RATIOS = tuple(ASPECT_RATIO_512)


def check_resize(mode: str) -> str:
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode {mode!r}: expected one of {', '.join(RESIZE_MODES)} (crop keeps the centre, "
                         f"pad adds black borders, stretch changes the aspect ratio).")
    return mode


def closest_ratio(width: int, height: int) -> float:
    """The official aspect ratio (height / width) nearest to the image's; the first of two equally near."""
    aspect = height / width
    return min(ASPECT_RATIOS, key=lambda r: abs(r - aspect))


def bucket_size(image_width: int, image_height: int, base_resolution: int) -> tuple[int, int]:
    """(width, height) the models were trained on nearest to the image's aspect ratio, at ``base_resolution``
    (512, 768, 960 or 1024): the official table scaled by base / 512, rounded down to multiples of 16."""
    for name, value in (("image width", image_width), ("image height", image_height)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} = {value!r}: expected a positive number of pixels.")
    if base_resolution not in BASE_RESOLUTIONS:
        raise ValueError(f"base resolution {base_resolution!r}: expected one of "
                         f"{', '.join(map(str, BASE_RESOLUTIONS))}.")
    height, width = ASPECT_RATIO_512[closest_ratio(image_width, image_height)]
    scale = base_resolution / 512
    return int(width * scale) // SIZE_MULTIPLE * SIZE_MULTIPLE, int(height * scale) // SIZE_MULTIPLE * SIZE_MULTIPLE


def crop_box(width: int, height: int, out_width: int, out_height: int) -> tuple[int, int, int, int]:
    """(left, top, crop width, crop height): the centred part of a width x height image with the output's aspect
    ratio (the whole image when the ratios match)."""
    if width * out_height > height * out_width:  # wider than the output: cut the sides
        crop = max(1, round(height * out_width / out_height))
        return (width - crop) // 2, 0, crop, height
    crop = max(1, round(width * out_height / out_width))
    return 0, (height - crop) // 2, width, crop


def fit_box(width: int, height: int, out_width: int, out_height: int) -> tuple[int, int, int, int]:
    """(left, top, fitted width, fitted height): where a width x height image scaled to fit sits, centred, in the
    output; at least one pixel each way."""
    scale = min(out_width / width, out_height / height)
    fitted_w = min(out_width, max(1, round(width * scale)))
    fitted_h = min(out_height, max(1, round(height * scale)))
    return (out_width - fitted_w) // 2, (out_height - fitted_h) // 2, fitted_w, fitted_h


def fit_note(name: str, width: int, height: int, out_width: int, out_height: int, mode: str) -> str | None:
    """What fitting a ``width`` x ``height`` input into the output does, for the log; None when the aspect ratios
    match (to within a pixel of rounding)."""
    _, _, crop_w, crop_h = crop_box(width, height, out_width, out_height)
    if max(abs(crop_w - width), abs(crop_h - height)) <= 1:
        return None
    if mode == "crop":
        done = f"its centre {crop_w}x{crop_h} is kept (resize crop)"
    elif mode == "pad":
        _, _, fitted_w, fitted_h = fit_box(width, height, out_width, out_height)
        done = f"it is scaled to {fitted_w}x{fitted_h} with black borders (resize pad)"
    else:
        done = "it is stretched, which distorts it (resize stretch)"
    return (f"{name} {width}x{height} has another aspect ratio than the {out_width}x{out_height} output: {done}. "
            f"A size with its aspect ratio: EasyAnimate Size From Image, or --size-from-image.")


def _scale(x: torch.Tensor, width: int, height: int) -> torch.Tensor:
    if x.shape[-2:] == (height, width):
        return x
    return F.interpolate(x, size=(height, width), mode="bicubic", antialias=True, align_corners=False)


def resize_frames(x: torch.Tensor, width: int, height: int, mode: str = DEFAULT_RESIZE) -> torch.Tensor:
    """``[F, C, H, W]`` float in 0..1 -> ``[F, C, height, width]``, by ``mode`` (module docstring); bicubic with
    antialiasing. An input that already has the output size is returned unchanged in every mode."""
    check_resize(mode)
    h0, w0 = x.shape[-2:]
    if (h0, w0) == (height, width) or mode == "stretch":
        return _scale(x, width, height)
    if mode == "crop":
        left, top, crop_w, crop_h = crop_box(w0, h0, width, height)
        return _scale(x[..., top:top + crop_h, left:left + crop_w], width, height)
    left, top, fitted_w, fitted_h = fit_box(w0, h0, width, height)
    out = x.new_full((*x.shape[:-2], height, width), PAD_VALUE)  # [F, C, height, width]
    out[..., top:top + fitted_h, left:left + fitted_w] = _scale(x, fitted_w, fitted_h)
    return out
