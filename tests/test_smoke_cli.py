"""The README's main-job command on the built-in demo model, through the real loaders."""

from __future__ import annotations

import cv2
import pytest

from easyanimate_core import load_scheduler, load_transformer, load_vae
from easyanimate_core.__main__ import main
from easyanimate_core.demo import write_demo_model


@pytest.mark.parametrize("variant", ["t2v", "inp", "control", "camera"])
def test_demo_model_folder_loads_as_its_variant(tmp_path, variant):
    folder = write_demo_model(tmp_path / variant, variant=variant)
    transformer = load_transformer(folder)
    assert transformer.config.variant == {"camera": "control_camera"}.get(variant, variant)
    assert load_vae(folder).scaling_factor == pytest.approx(0.7125)
    assert len(load_scheduler(folder).schedule(3)) == 3


def test_smoke_command_writes_a_frame(tmp_path, capsys, caplog):
    output = tmp_path / "frame.png"
    assert main(["smoke", "--steps", "2", "--frames", "5", "--width", "48", "--height", "32",
                 "--output", str(output)]) == 0
    image = cv2.imread(str(output))
    assert image.shape == (32, 48, 3)
    assert image.std() > 0  # a decoded frame, not a constant fill
    assert "video (1, 3, 5, 32, 48)" in capsys.readouterr().out
    assert "DEMO model with RANDOM weights" in caplog.text


def test_smoke_command_refuses_a_bad_frame_count(capsys):
    with pytest.raises(SystemExit):
        main(["smoke", "--frames", "8"])
    assert "frames = 8: expected 4k+1" in capsys.readouterr().err
