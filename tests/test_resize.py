"""Inputs keep their aspect ratio: crop, pad and stretch on several aspect ratios, the trained sizes
(``bucket_size``), the conditioning builders and the command line's --resize and --size-from-image."""

from __future__ import annotations

import logging
import re

import pytest
import torch
import torch.nn.functional as F

from easyanimate_core.resize import ASPECT_RATIO_512, BASE_RESOLUTIONS, bucket_size, closest_ratio, fit_note
from easyanimate_core.video import frames_to_model, read_video, write_png

MODES = ("crop", "pad", "stretch")


def _disc(width: int, height: int, radius: float, frames: int = 1) -> torch.Tensor:
    """IMAGE [F, height, width, 3]: a white disc of ``radius`` pixels in the centre of a black frame."""
    y = torch.arange(height).float() + 0.5 - height / 2
    x = torch.arange(width).float() + 0.5 - width / 2
    inside = (x[None, :] ** 2 + y[:, None] ** 2 <= radius ** 2).float()  # [H, W]
    return inside[None, :, :, None].expand(frames, height, width, 3).clone()


def _extent(video: torch.Tensor) -> tuple[int, int]:
    """(width, height) in pixels of the bright part of frame 0 of a model tensor [1, 3, F, H, W] in [-1, 1]."""
    bright = video[0, 0, 0] > 0  # [H, W]
    return int(bright.any(0).sum()), int(bright.any(1).sum())


def _old_stretch(frames: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """frames_to_model as it was before the resize modes: a bicubic stretch."""
    x = frames[..., :3].float().permute(0, 3, 1, 2)
    if x.shape[-2:] != (height, width):
        x = F.interpolate(x, size=(height, width), mode="bicubic", antialias=True, align_corners=False)
    return (x.clamp(0, 1) * 2 - 1).permute(1, 0, 2, 3).unsqueeze(0)


@pytest.mark.parametrize("mode", MODES)
def test_an_input_of_the_output_size_is_unchanged_in_every_mode(mode):
    frames = torch.rand(3, 32, 48, 3, generator=torch.Generator().manual_seed(0))
    out = frames_to_model(frames, 48, 32, mode)
    assert out.shape == (1, 3, 3, 32, 48)
    assert torch.equal(out, frames.permute(3, 0, 1, 2).unsqueeze(0) * 2 - 1)


@pytest.mark.parametrize("size", [(128, 128), (64, 128), (160, 48), (48, 32), (33, 71)])
@pytest.mark.parametrize("out", [(96, 48), (48, 96), (64, 64)])
def test_stretch_is_the_former_behaviour_bit_for_bit(size, out):
    frames = torch.rand(2, size[1], size[0], 3, generator=torch.Generator().manual_seed(1))
    assert torch.equal(frames_to_model(frames, *out, "stretch"), _old_stretch(frames, *out))


# Radii small enough for the disc to lie inside the centred crop window of both outputs.
@pytest.mark.parametrize("source, radius", [((128, 128), 20), ((64, 128), 12), ((200, 60), 14), ((60, 200), 14)])
@pytest.mark.parametrize("out", [(96, 48), (48, 96)])
def test_crop_and_pad_keep_a_circle_round_and_stretch_does_not(source, radius, out):
    disc = _disc(*source, radius)
    for mode in ("crop", "pad"):
        width, height = _extent(frames_to_model(disc, *out, mode))
        assert width > 4 and abs(width - height) <= 2, (mode, width, height)
    width, height = _extent(frames_to_model(disc, *out, "stretch"))
    expected = (out[0] / source[0]) / (out[1] / source[1])  # how much wider than tall the stretch makes it
    assert width / height == pytest.approx(expected, rel=0.2)


@pytest.mark.parametrize("source", [(128, 128), (64, 128), (200, 60)])
def test_crop_keeps_the_centre_at_the_scale_that_covers_the_output(source):
    out_w, out_h = 96, 48
    scale = max(out_w / source[0], out_h / source[1])
    width, _ = _extent(frames_to_model(_disc(*source, 10), out_w, out_h, "crop"))
    assert width == pytest.approx(20 * scale, abs=2)  # the disc is centred and scaled, never moved off


def test_crop_cuts_the_sides_of_a_wide_input_and_keeps_its_middle():
    frames = torch.zeros(1, 32, 96, 3)
    frames[:, :, :24] = 1.0  # a bright band on the left quarter, outside the centred 48x32 window
    frames[:, :, 40:56, 0] = 1.0  # red in the middle
    out = frames_to_model(frames, 48, 32, "crop")
    assert torch.equal(out, frames_to_model(frames[:, :, 24:72], 48, 32, "stretch"))
    assert out[0, 1].max() == -1  # no green: the band is gone
    assert (out[0, 0, 0, :, 16:32] == 1).all()


@pytest.mark.parametrize("source, out, bands", [
    ((128, 128), (96, 48), "sides"),  # square into landscape
    ((64, 128), (96, 48), "sides"),  # portrait into landscape
    ((192, 48), (64, 64), "top and bottom"),  # very wide into square
    ((96, 48), (48, 96), "top and bottom"),  # landscape into portrait
])
def test_pad_leaves_black_borders_and_scales_the_whole_input_inside(source, out, bands):
    frames = torch.full((2, source[1], source[0], 3), 0.75)
    video = frames_to_model(frames, *out, "pad")
    assert video.shape == (1, 3, 2, out[1], out[0])
    content = video[0, 0, 0] > 0  # [H, W]
    cols, rows = content.any(0).nonzero().flatten(), content.any(1).nonzero().flatten()
    fitted = min(out[0] / source[0], out[1] / source[1])
    assert int(cols.numel()) == round(source[0] * fitted) and int(rows.numel()) == round(source[1] * fitted)
    if bands == "sides":
        assert rows.numel() == out[1] and cols[0] > 0 and cols[-1] < out[0] - 1
        border = torch.cat([video[..., : int(cols[0])], video[..., int(cols[-1]) + 1:]], dim=-1)
    else:
        assert cols.numel() == out[0] and rows[0] > 0 and rows[-1] < out[1] - 1
        border = torch.cat([video[..., : int(rows[0]), :], video[..., int(rows[-1]) + 1:, :]], dim=-2)
    assert border.numel() and (border == -1).all()  # black (0 in IMAGE values)
    assert abs(int(cols[0]) - (out[0] - 1 - int(cols[-1]))) <= 1  # centred
    assert torch.allclose(video[0, :, 0, int(rows[1]), int(cols[1])], torch.tensor(0.5), atol=1e-3)


@pytest.mark.parametrize("mode, said", [
    ("crop", "its centre 1024x585 is kept (resize crop)"),
    ("pad", "it is scaled to 384x384 with black borders (resize pad)"),
    ("stretch", "it is stretched, which distorts it (resize stretch)"),
])
def test_the_log_says_what_fitting_does_and_only_when_the_aspect_differs(mode, said):
    assert fit_note("The start image", 1024, 1024, 672, 384, mode) == (
        f"The start image 1024x1024 has another aspect ratio than the 672x384 output: {said}. A size with its "
        f"aspect ratio: EasyAnimate Size From Image, or --size-from-image.")
    assert fit_note("The start image", 1344, 768, 672, 384, mode) is None
    assert fit_note("The start image", 1920, 1080, 672, 384, mode) is not None  # 16:9 is not quite 7:4
    assert fit_note("The start image", 673, 384, 672, 384, mode) is None  # a pixel of rounding


def test_an_unknown_mode_is_refused_by_name():
    with pytest.raises(ValueError, match="resize mode 'fill': expected one of crop, pad, stretch"):
        frames_to_model(torch.rand(1, 8, 8, 3), 16, 16, "fill")


@pytest.mark.parametrize("image, at_512", [
    ((1920, 1080), (672, 384)),  # 16:9
    ((1080, 1920), (384, 672)),  # 9:16
    ((1000, 1000), (512, 512)),
    ((640, 480), (576, 416)),  # 4:3 lies halfway between 0.72 and 0.78: the first wins, as in the official min()
    ((480, 640), (448, 576)),  # 3:4 -> the 1.29 bucket
    ((5000, 100), (1024, 256)),  # beyond the table: its widest entry
    ((100, 5000), (256, 1024)),
])
@pytest.mark.parametrize("base", BASE_RESOLUTIONS)
def test_bucket_size_is_the_trained_size_nearest_the_aspect_ratio(image, at_512, base):
    width, height = bucket_size(*image, base)
    assert width % 16 == 0 and height % 16 == 0
    assert (width, height) == (int(at_512[0] * base / 512) // 16 * 16, int(at_512[1] * base / 512) // 16 * 16)
    aspect = image[1] / image[0]
    nearest = min(ASPECT_RATIO_512, key=lambda r: abs(r - aspect))
    assert ASPECT_RATIO_512[nearest] == (at_512[1], at_512[0]) and closest_ratio(*image) == nearest
    assert 0.8 < width * height / base ** 2 < 1.05  # about base x base pixels


def test_bucket_size_at_768_and_1024_matches_the_official_scaling():
    assert bucket_size(1920, 1080, 768) == (1008, 576)
    assert bucket_size(1920, 1080, 1024) == (1344, 768)
    assert bucket_size(1920, 1080, 960) == (1248, 720)
    for ratio, (height, width) in ASPECT_RATIO_512.items():  # every bucket maps back to itself
        assert bucket_size(width, height, 512) == (width, height), ratio


@pytest.mark.parametrize("args, message", [
    ((1920, 1080, 600), "base resolution 600: expected one of 512, 768, 960, 1024"),
    ((0, 1080, 512), "image width = 0"),
    ((1920, 1.5, 512), "image height = 1.5"),
])
def test_bucket_size_refuses_bad_values_by_name(args, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        bucket_size(*args)


def test_training_buckets_use_the_same_table():
    from easyanimate_core import resize
    from easyanimate_core.training import buckets

    assert buckets.closest_ratio is resize.closest_ratio


@pytest.fixture(scope="module")
def demo_vae(tmp_path_factory):
    from easyanimate_core.demo import write_demo_model
    from easyanimate_core.loading import load_vae

    return load_vae(write_demo_model(tmp_path_factory.mktemp("demo") / "m", variant="control"), dtype=torch.float32)


def test_every_conditioning_builder_passes_the_mode_on(demo_vae):
    from easyanimate_core.conditioning import (
        camera_conditioning,
        control_conditioning,
        image_to_video_inputs,
        video_latents,
    )

    size = dict(frames=5, width=48, height=32)
    square = torch.rand(5, 48, 48, 3, generator=torch.Generator().manual_seed(2))
    exact = torch.rand(5, 32, 48, 3, generator=torch.Generator().manual_seed(3))
    plucker = torch.zeros(5, 32, 48, 6)
    builders = {
        "i2v": lambda frames, mode: image_to_video_inputs(frames[:1], frames[:1], **size, resize=mode)[0],
        "v2v": lambda frames, mode: video_latents(demo_vae, frames, **size, resize=mode),
        "control": lambda frames, mode: control_conditioning(demo_vae, frames, None, **size,
                                                             resize=mode).control_latents,
        "reference": lambda frames, mode: control_conditioning(demo_vae, None, frames, **size,
                                                               resize=mode).control_latents,
        "camera": lambda frames, mode: camera_conditioning(demo_vae, plucker, frames, **size,
                                                           resize=mode).control_latents,
    }
    with torch.inference_mode():
        for name, build in builders.items():
            got = {mode: build(square, mode) for mode in MODES}
            assert torch.equal(got["crop"], build(square, "crop")), name  # deterministic
            assert not torch.equal(got["crop"], got["pad"]) and not torch.equal(got["crop"], got["stretch"]), name
            assert not torch.equal(got["pad"], got["stretch"]), name
            same = [build(exact, mode) for mode in MODES]
            assert torch.equal(same[0], same[1]) and torch.equal(same[0], same[2]), name


@pytest.fixture(scope="module")
def inp_model(tmp_path_factory):
    from easyanimate_core.demo import write_demo_model

    return write_demo_model(tmp_path_factory.mktemp("models") / "demo-inp", variant="inp")


SMALL = ["--frames", "5", "--steps", "1", "--guidance", "1", "--prompt", "a red ball"]


def test_cli_resize_modes_reach_the_conditioning(tmp_path, inp_model, capsys, caplog):
    from easyanimate_core.__main__ import main

    caplog.set_level(logging.INFO, logger="easyanimate_core")
    square = write_png(tmp_path / "square.png", _disc(64, 64, 20)[0])
    exact = write_png(tmp_path / "exact.png", _disc(48, 32, 10)[0])
    videos = {}
    fits = {"crop": "its centre 64x43 is kept (resize crop)",
            "pad": "it is scaled to 32x32 with black borders (resize pad)",
            "stretch": "it is stretched, which distorts it (resize stretch)"}
    for name, image in (("square", square), ("exact", exact)):
        for mode, fit in fits.items():
            output = tmp_path / f"{name}-{mode}.mp4"
            assert main(["generate", *SMALL, "--width", "48", "--height", "32", "--model", str(inp_model),
                         "--start-image", str(image), "--resize", mode, "--output", str(output)]) == 0
            videos[name, mode] = read_video(output)
            said = [r.getMessage() for r in caplog.records if "another aspect ratio" in r.getMessage()]
            assert said == ([f"The start image 64x64 has another aspect ratio than the 48x32 output: {fit}. A size "
                             f"with its aspect ratio: EasyAnimate Size From Image, or --size-from-image."]
                            if name == "square" else []), said
            caplog.clear()
    assert not torch.equal(videos["square", "crop"], videos["square", "pad"])
    assert not torch.equal(videos["square", "crop"], videos["square", "stretch"])
    assert torch.equal(videos["exact", "crop"], videos["exact", "pad"])
    assert torch.equal(videos["exact", "crop"], videos["exact", "stretch"])
    with pytest.raises(SystemExit):
        main(["generate", *SMALL, "--resize", "fill"])
    assert "invalid choice: 'fill'" in capsys.readouterr().err


def test_cli_size_from_image_takes_the_trained_size_of_the_start_image(tmp_path, inp_model, capsys, caplog):
    from easyanimate_core.__main__ import main

    caplog.set_level(logging.INFO, logger="easyanimate_core")
    portrait = write_png(tmp_path / "portrait.png", torch.rand(960, 540, 3))
    output = tmp_path / "sized.mp4"
    assert main(["generate", *SMALL, "--model", str(inp_model), "--start-image", str(portrait),
                 "--size-from-image", "512", "--output", str(output)]) == 0
    assert "i2v: 5 frames 384x672" in capsys.readouterr().out
    assert "--size-from-image 512: 384x672, the trained size nearest the 540x960 of --start-image" in caplog.text
    assert read_video(output).shape == (5, 672, 384, 3)


def test_cli_size_from_image_without_an_image_is_refused(tmp_path, inp_model, caplog):
    from easyanimate_core.__main__ import main

    code = main(["generate", *SMALL, "--model", str(inp_model), "--size-from-image", "768",
                 "--output", str(tmp_path / "x.mp4")])
    assert code == 2
    assert "--size-from-image 768 reads the size of an input image or video, and none was given" in caplog.text
    assert not (tmp_path / "x.mp4").exists()
