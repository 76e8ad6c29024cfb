"""The nodes' resize_mode reaches the core, and EasyAnimate Size From Image, inside the real ComfyUI modules
(tests/comfyui_env.py)."""

from __future__ import annotations

import pytest
import torch
from conftest import EXACT, load_demo as _load, load_pack, run_node as _run

pack = load_pack()
NODES = pack.NODE_CLASS_MAPPINGS
SIZE = dict(width=48, height=32, frames=5)
MODES = ("crop", "pad", "stretch")


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    from easyanimate_core.demo import write_demo_model

    root = tmp_path_factory.mktemp("models")
    for variant in ("inp", "control"):
        write_demo_model(root / f"demo-{variant}", variant=variant)
    return root


def _square(frames=1, seed=0):
    return torch.rand(frames, 48, 48, 3, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name, key, inputs", [
    ("demo-inp", "easyanimate_inpaint_latents", {"start_image": _square(), "end_image": _square(seed=1)}),
    ("demo-control", "easyanimate_control_latents", {"control_video": _square(5), "reference_image": _square()}),
])
def test_conditioning_node_resize_mode_reaches_the_core(comfyui, name, key, inputs):
    from easyanimate_core.generation import GenerationRequest, prepare_inputs
    from easyanimate_pack.nodes._native import component

    model, text_encoder, vae, _ = _load(name)
    positive, negative = _run("EasyAnimateTextEncode", text_encoder=text_encoder, prompt="a cat", negative_prompt="")
    config = model.model.diffusion_model.config
    got = {}
    for mode in (*MODES, None):
        extra = {} if mode is None else {"resize_mode": mode}
        cond_positive, cond_negative, _ = _run("EasyAnimateConditioning", model=model, positive=positive,
                                               negative=negative, vae=vae, seed=3, **SIZE, **inputs, **extra)
        got[mode] = cond_positive[0][1][key]
        assert torch.equal(got[mode], cond_negative[0][1][key])
    assert torch.equal(got[None], got["crop"])  # a workflow saved before the widget existed gets crop
    assert not torch.equal(got["crop"], got["pad"]) and not torch.equal(got["crop"], got["stretch"])
    assert not torch.equal(got["pad"], got["stretch"])
    request = GenerationRequest(**SIZE, seed=3, start_images=inputs.get("start_image"),
                                end_images=inputs.get("end_image"), control_video=inputs.get("control_video"),
                                reference_image=inputs.get("reference_image"), resize="pad")
    prepared = prepare_inputs(config, component(vae), request)
    expected = prepared.conditioning.inpaint_latents if name == "demo-inp" else prepared.conditioning.control_latents
    torch.testing.assert_close(got["pad"], expected, rtol=0, atol=0)


def test_sampler_resize_mode_equals_the_conditioning_node_path(comfyui):
    import comfy_extras.nodes_custom_sampler as custom

    model, text_encoder, vae, _ = _load("demo-inp")
    positive, negative = _run("EasyAnimateTextEncode", text_encoder=text_encoder, prompt="a cat", negative_prompt="")
    image = _square()
    samples = {}
    for mode in ("crop", "pad", None):
        extra = {} if mode is None else {"resize_mode": mode}
        (out,) = _run("EasyAnimateSampler", model=model, vae=vae, positive=positive, negative=negative, steps=2,
                      guidance=6.0, seed=7, denoise_strength=1.0, start_image=image, **EXACT, **SIZE, **extra)
        samples[mode] = out["samples"]
    assert torch.equal(samples[None], samples["crop"]) and not torch.equal(samples["crop"], samples["pad"])
    cond_positive, cond_negative, latent = _run("EasyAnimateConditioning", model=model, positive=positive,
                                                negative=negative, vae=vae, seed=7, start_image=image,
                                                resize_mode="pad", **SIZE)
    (sigmas,) = _run("EasyAnimateScheduler", model=model, steps=2, denoise=1.0)
    (guider,) = _run(custom.CFGGuider, model=model, positive=cond_positive, negative=cond_negative, cfg=6.0)
    (chosen,) = _run(custom.KSamplerSelect, sampler_name="euler")
    (noise,) = _run(custom.RandomNoise, noise_seed=7)
    theirs, _ = _run(custom.SamplerCustomAdvanced, noise=noise, guider=guider, sampler=chosen, sigmas=sigmas,
                     latent_image=latent)
    error = ((theirs["samples"] - samples["pad"]).abs().max() / samples["pad"].abs().max()).item()
    assert error < 1e-5, error


def test_encode_node_resize_mode_reaches_the_core(comfyui):
    from easyanimate_core.conditioning import video_latents
    from easyanimate_pack.nodes._native import component

    _, _, vae, _ = _load("demo-inp")
    frames = torch.rand(5, 37, 60, 3, generator=torch.Generator().manual_seed(4))  # -> 56x32: crop, pad or squeeze
    got = {mode: _run("EasyAnimateEncode", vae=vae, frames=frames, resize_mode=mode)[0]["samples"] for mode in MODES}
    (default,) = _run("EasyAnimateEncode", vae=vae, frames=frames)
    assert torch.equal(default["samples"], got["crop"]) and got["crop"].shape == (1, 16, 2, 4, 7)
    assert not torch.equal(got["crop"], got["pad"]) and not torch.equal(got["crop"], got["stretch"])
    with torch.inference_mode():
        expected = video_latents(component(vae), frames, frames=5, width=56, height=32, resize="stretch")
    torch.testing.assert_close(got["stretch"], expected / component(vae).scaling_factor, rtol=0, atol=0)


@pytest.mark.parametrize("shape, base, size", [
    ((1, 1080, 1920, 3), "512", (672, 384)),
    ((1, 1080, 1920, 3), "768", (1008, 576)),
    ((1, 1080, 1920, 3), "1024", (1344, 768)),
    ((5, 1920, 1080, 3), "768", (576, 1008)),  # a portrait video: its frames' size
    ((1, 700, 700, 4), "960", (960, 960)),
    ((1, 480, 640, 3), "512", (576, 416)),
])
def test_size_from_image_node_gives_the_trained_size(shape, base, size):
    image = torch.zeros(1, 1, 1, shape[-1]).expand(*shape)
    width, height = _run("EasyAnimateSizeFromImage", image=image, base_resolution=base)
    assert (width, height) == size and type(width) is int and type(height) is int
    spec = NODES["EasyAnimateSizeFromImage"].INPUT_TYPES()["required"]["base_resolution"]
    assert spec[0] == ["512", "768", "960", "1024"] and spec[1]["default"] == "512"
