"""Every input is checked at the boundary, before a weight is read or a prompt encoded (issue 12): each rule is
tried with several inputs of its class, through the command line and through the nodes."""

from __future__ import annotations

import pytest
import torch

import easyanimate_core.loading as loading
import easyanimate_core.text_encoder as text_encoder
from easyanimate_core.__main__ import main
from easyanimate_core.demo import write_demo_model
from easyanimate_core.video import write_mp4, write_png

SMALL = ["--frames", "5", "--width", "48", "--height", "32", "--steps", "2", "--prompt", "a red ball"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {variant: write_demo_model(root / f"demo-{variant}", variant=variant)
            for variant in ("t2v", "inp", "control", "camera")}


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    gen = torch.Generator().manual_seed(0)
    image = write_png(root / "start.png", torch.rand(32, 48, 3, generator=gen))
    video = write_mp4(root / "input.mp4", torch.rand(7, 32, 48, 3, generator=gen))
    return {"image": str(image), "video": str(video)}


@pytest.fixture()
def weight_reads(monkeypatch):
    """Counts every tensor read from a weight file and every text encoder load."""
    calls = []
    real_read, real_encoder = loading.read_tensors, text_encoder.load_text_encoder

    def read_tensors(entries, **kwargs):
        calls.append("read_tensors")
        return real_read(entries, **kwargs)

    def load_text_encoder(*args, **kwargs):
        calls.append("load_text_encoder")
        return real_encoder(*args, **kwargs)

    monkeypatch.setattr(loading, "read_tensors", read_tensors)
    monkeypatch.setattr(text_encoder, "load_text_encoder", load_text_encoder)
    return calls


def _generate(tmp_path, *extra: str) -> int:
    return main(["generate", *SMALL, "--output", str(tmp_path / "x.mp4"), *extra])


# ----------------------------------------------------------------------------------------------- mode vs variant
@pytest.mark.parametrize("variant, extra, message", [
    ("t2v", ["--start-image", "{image}"], "i2v needs an InP model"),
    ("t2v", ["--control-video", "{video}"], "control needs a Control model"),
    ("inp", ["--camera", "Pan Up"], "camera needs a Control-Camera model"),
    ("camera", ["--control-video", "{video}"], "control needs a Control model"),
    ("control", [], "t2v needs EasyAnimateV5.1"),
])
def test_the_mode_is_checked_against_the_variant_before_any_weight_is_read(tmp_path, models, media, caplog,
                                                                            weight_reads, variant, extra, message):
    code = _generate(tmp_path, "--model", str(models[variant]), *(a.format(**media) for a in extra))
    assert code == 2
    assert message in caplog.text
    assert "Load the right model folder" in caplog.text
    assert weight_reads == []
    assert not (tmp_path / "x.mp4").exists()


def test_a_matching_variant_still_loads_and_runs(tmp_path, models, media, weight_reads, capsys):
    assert _generate(tmp_path, "--model", str(models["inp"]), "--start-image", media["image"]) == 0
    assert "load_text_encoder" in weight_reads and "read_tensors" in weight_reads


# ----------------------------------------------------------------------------------------- numbers, by name
@pytest.mark.parametrize("extra, message", [
    (["--guidance", "nan"], "guidance = nan is not a finite number"),
    (["--guidance", "inf"], "guidance = inf is not a finite number"),
    (["--guidance=-inf"], "guidance = -inf is not a finite number"),
    (["--guidance", "-2"], "guidance = -2.0: expected a finite number >= 0"),
    (["--guidance-rescale", "nan"], "guidance_rescale = nan"),
    (["--guidance-rescale", "1.5"], "guidance_rescale = 1.5: expected a finite number >= 0 and <= 1"),
    (["--strength", "nan"], "strength = nan is not a finite number"),
    (["--strength", "inf"], "strength = inf is not a finite number"),
    (["--strength", "0"], "strength = 0.0: expected a finite number > 0 and <= 1"),
    (["--strength", "1.5"], "strength = 1.5: expected a finite number > 0 and <= 1"),
    (["--cfg-skip-ratio", "nan"], "cfg_skip_ratio = nan is not a finite number"),
    (["--seed", "-1"], "seed = -1: expected an integer from 0 to 18446744073709551615"),
    (["--seed", str(2**64)], "seed = 18446744073709551616: expected an integer from 0"),
    (["--steps", "0"], "steps = 0: expected an integer from 1 up"),
    (["--teacache", "nan"], "TeaCache threshold = nan is not a finite number"),
    (["--teacache", "inf"], "TeaCache threshold = inf is not a finite number"),
])
def test_bad_numbers_are_refused_by_name_before_any_file_is_read(tmp_path, models, caplog, weight_reads,
                                                                 monkeypatch, extra, message):
    import easyanimate_core.video as video

    media_reads = []
    monkeypatch.setattr(video, "read_video", lambda *a, **k: media_reads.append(a))
    code = _generate(tmp_path, "--model", str(models["inp"]), "--input-video", "input.mp4", *extra)
    assert code == 2
    assert message in caplog.text
    assert weight_reads == [] and media_reads == []
    assert "Traceback" not in caplog.text


@pytest.mark.parametrize("seed", [0, 2**64 - 1])
def test_the_ends_of_the_seed_range_are_accepted(seed):
    from easyanimate_core.generation import GenerationRequest

    assert GenerationRequest(width=48, height=32, frames=5, seed=seed).checked().seed == seed


# --------------------------------------------------------------------------------------------- absurd sizes
@pytest.mark.parametrize("extra, message", [
    (["--width", "100000"], r"100000x32 with 5 frames would need at least [\d,.]+ GiB .*a side over 16384 pixels"),
    (["--height", "100000", "--width", "100000"], r"100000x100000 with 5 frames would need at least [\d,]+\.\d GiB"),
    (["--width", "16384", "--height", "16384", "--frames", "49"],
     r"16384x16384 with 49 frames would need at least [\d,.]+ GiB .*more than this machine's [\d.]+ GiB"),
    (["--width", "1024", "--height", "1024", "--frames", "400001"],
     r"1024x1024 with 400001 frames would need .*more than this machine's"),
])
def test_absurd_sizes_are_refused_with_the_memory_they_would_need(tmp_path, models, caplog, weight_reads, extra,
                                                                  message):
    import re

    code = _generate(tmp_path, "--model", str(models["t2v"]), *extra)
    assert code == 2
    assert re.search(message, caplog.text), caplog.text
    assert "decoded video in float32" in caplog.text and "pick a size and frame count" in caplog.text
    assert weight_reads == []


def test_the_memory_estimate_grows_with_the_video_and_the_trained_sizes_pass():
    from easyanimate_core.checks import check_workload, workload_bytes

    small, large = sum(workload_bytes(672, 384, 49)), sum(workload_bytes(1344, 768, 49))
    assert 3.5 * small < large < 4.5 * small
    for width, height, frames in ((672, 384, 49), (1024, 1024, 49), (512, 512, 1)):
        check_workload(width, height, frames)
