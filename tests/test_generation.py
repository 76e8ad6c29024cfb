"""Every mode end to end on the demo models, through the command line and the real loaders."""

from __future__ import annotations

import pytest
import torch

from easyanimate_core.__main__ import main
from easyanimate_core.generation import GenerationRequest, sample_latents
from easyanimate_core.loading import load_scheduler, load_transformer, load_vae
from easyanimate_core.video import read_video

SMALL = ["--frames", "5", "--width", "48", "--height", "32", "--steps", "2", "--prompt", "a red ball"]


CASES = {
    "t2v": ("t2v", []),
    "i2v": ("inp", ["--start-image", "{image}", "--end-image", "{image}"]),
    "v2v": ("inp", ["--input-video", "{video}", "--strength", "0.6"]),
    "control": ("control", ["--control-video", "{video}", "--reference-image", "{image}"]),
    "trajectory": ("control", ["--trajectory", "{track}", "--reference-image", "{image}"]),
    "camera": ("camera", ["--camera", "Pan Up+Pan Left", "--reference-image", "{image}"]),
}


@pytest.mark.parametrize("mode", sorted(CASES))
def test_every_mode_writes_an_mp4_and_a_png(tmp_path, models, media, mode, capsys):
    variant, extra = CASES[mode]
    output = tmp_path / f"{mode}.mp4"
    args = ["generate", *SMALL, "--model", str(models[variant]), "--output", str(output)]
    assert main(args + [a.format(**media) for a in extra]) == 0
    frames = read_video(output)
    assert frames.shape == (5, 32, 48, 3)
    assert output.with_suffix(".png").is_file()
    assert f"{mode}: 5 frames 48x32" in capsys.readouterr().out


def test_without_a_model_the_demo_model_is_built_and_announced(tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("EASYANIMATE_MODELS_DIR", raising=False)
    assert main(["generate", *SMALL, "--output", str(tmp_path / "demo.mp4")]) == 0
    assert "DEMO model (t2v) with RANDOM weights" in caplog.text


def test_models_dir_lookup_picks_a_variant_that_can_do_the_mode(tmp_path, models, media, monkeypatch, capsys):
    monkeypatch.setenv("EASYANIMATE_MODELS_DIR", str(models["t2v"].parent))
    assert main(["generate", *SMALL, "--start-image", media["image"], "--output", str(tmp_path / "a.mp4")]) == 0
    assert "demo-inp" in capsys.readouterr().out


def test_a_mode_the_model_cannot_do_is_refused_before_any_work(tmp_path, models, media, caplog):
    code = main(["generate", *SMALL, "--model", str(models["control"]), "--camera", "Pan Up",
                 "--output", str(tmp_path / "x.mp4")])
    assert code == 2
    assert "camera needs a Control-Camera model" in caplog.text
    assert not (tmp_path / "x.mp4").exists()


@pytest.mark.parametrize(
    "extra, message",
    [(["--frames", "8"], "frames = 8: the VAE needs 4k\\+1 frames; use 5 or 9"),
     (["--width", "50"], "size 50x32: .* multiples of 16; use 48x32"),
     (["--input-video", "{video}", "--control-video", "{video}"], "several modes"),
     (["--strength", "0.5"], "strength = 0.5 only applies to video-to-video")],
)
def test_bad_requests_get_a_clear_error(tmp_path, models, media, caplog, extra, message):
    import re

    code = main(["generate", *SMALL, "--model", str(models["control"]), "--output", str(tmp_path / "x.mp4")]
                + [a.format(**media) for a in extra])
    assert code == 2
    assert re.search(message, caplog.text)


def test_rounding_only_when_asked(tmp_path, models, capsys):
    assert main(["generate", *SMALL, "--model", str(models["t2v"]), "--frames", "8", "--width", "50", "--round",
                 "--output", str(tmp_path / "r.mp4")]) == 0
    assert "t2v: 5 frames 48x32" in capsys.readouterr().out


def test_same_seed_same_latents_and_another_seed_differs(models):
    folder = models["t2v"]
    transformer, vae, scheduler = load_transformer(folder, dtype=torch.float32), load_vae(folder), load_scheduler(folder)
    vae = vae.float()
    text = torch.randn(1, 8, transformer.config.text_embed_dim)
    request = GenerationRequest(width=48, height=32, frames=5, steps=2, guidance=1.0, seed=1)
    a = sample_latents(transformer, vae, scheduler, request, text)
    b = sample_latents(transformer, vae, scheduler, request, text)
    c = sample_latents(transformer, vae, scheduler, GenerationRequest(width=48, height=32, frames=5, steps=2,
                                                                      guidance=1.0, seed=2), text)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_make_demo_model_writes_a_complete_folder(tmp_path):
    assert main(["make-demo-model", str(tmp_path / "m"), "--variant", "camera"]) == 0
    names = sorted(p.name for p in (tmp_path / "m").iterdir())
    assert names == ["model_index.json", "scheduler", "text_encoder", "tokenizer", "transformer", "vae"]
    assert load_transformer(tmp_path / "m").config.variant == "control_camera"


@pytest.mark.parametrize("mode", ["sequential_cpu_offload", "block_swap", "model_cpu_offload_and_qfloat8"])
def test_memory_modes_from_the_command_line(tmp_path, models, mode, capsys):
    output = tmp_path / "m.mp4"
    assert main(["generate", *SMALL, "--model", str(models["t2v"]), "--memory-mode", mode, "--blocks-on-gpu", "1",
                 "--output", str(output)]) == 0
    assert read_video(output).shape == (5, 32, 48, 3)


def test_blocks_on_gpu_takes_a_count_or_auto(tmp_path, models, capsys):
    output = tmp_path / "auto.mp4"
    assert main(["generate", *SMALL, "--model", str(models["t2v"]), "--memory-mode", "block_swap", "--blocks-on-gpu",
                 "auto", "--output", str(output)]) == 0
    assert read_video(output).shape == (5, 32, 48, 3)
    with pytest.raises(SystemExit):
        main(["generate", *SMALL, "--blocks-on-gpu", "-2"])
    assert "expected a number of blocks (0 or more) or 'auto'" in capsys.readouterr().err
