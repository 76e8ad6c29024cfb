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
