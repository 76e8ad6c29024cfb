"""Every mode the V5 family supports, end to end through the command line on tiny V5 demo models (Bert + mT5, DDIM
from the folder's scheduler config): t2v, i2v (start and end frame), v2v with strength, and control video (V5
Control: control latents only, no reference slot). Trajectory and camera are V5.1-only and refused with the reason,
before any weight is read."""

from __future__ import annotations

import pytest
import torch

from easyanimate_core.__main__ import main
from easyanimate_core.demo import write_demo_model
from easyanimate_core.video import read_video, write_mp4, write_png

SMALL = ["--frames", "5", "--width", "48", "--height", "32", "--steps", "2", "--prompt", "a red ball"]


@pytest.fixture(scope="module")
def v5(tmp_path_factory):
    root = tmp_path_factory.mktemp("v5")
    models = {variant: write_demo_model(root / variant, variant=variant, version="5")
              for variant in ("t2v", "inp", "control")}
    gen = torch.Generator().manual_seed(0)
    models["image"] = write_png(root / "start.png", torch.rand(32, 48, 3, generator=gen))
    models["video"] = write_mp4(root / "input.mp4", torch.rand(7, 32, 48, 3, generator=gen))
    return models


@pytest.mark.parametrize("variant, extra, sampler", [
    ("t2v", [], "DDIM"),
    ("inp", ["--start-image", "{image}", "--end-image", "{image}"], "Euler A"),
    ("inp", ["--input-video", "{video}", "--strength", "0.6"], "DPM++"),
    ("control", ["--control-video", "{video}"], "Euler"),
])
def test_every_v5_mode_writes_a_video(tmp_path, v5, variant, extra, sampler, capsys):
    output = tmp_path / "clip.mp4"
    args = ["generate", *SMALL, "--model", str(v5[variant]), "--sampler", sampler, "--output", str(output)]
    assert main(args + [a.format(**v5) for a in extra]) == 0, capsys.readouterr()
    assert read_video(output).shape == (5, 32, 48, 3)


@pytest.mark.parametrize("extra, message", [
    (["--control-video", "{video}", "--reference-image", "{image}"], "a V5 Control model has no reference-image"),
    (["--trajectory", "{track}", "--reference-image", "{image}"], "trajectory control is an EasyAnimate V5.1 feature"),
    (["--camera", "Pan Up"], "camera control is an EasyAnimate V5.1 feature"),
])
def test_v5_control_refuses_what_it_cannot_take_by_name(tmp_path, v5, extra, message, caplog, monkeypatch):
    from easyanimate_core import loading

    track = tmp_path / "track.json"
    track.write_text('{"version": 1, "tracks": [{"points": [[0.1, 0.2], [0.9, 0.3]]}]}')
    read = []
    monkeypatch.setattr(loading, "read_tensors", lambda *a, **k: read.append(a) or pytest.fail("weights read"))
    args = ["generate", *SMALL, "--model", str(v5["control"]), "--output", str(tmp_path / "x.mp4")]
    code = main(args + [a.format(track=track, **v5) for a in extra])
    assert code == 2 and message in caplog.text
    assert not (tmp_path / "x.mp4").exists()
