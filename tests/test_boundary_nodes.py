"""The boundary checks of issue 12 through the nodes, in the real ComfyUI modules: every bad input is refused by
name before a model moves or a step runs."""

from __future__ import annotations

import json
import math

import pytest
from conftest import load_pack

pack = load_pack()
NODES = pack.NODE_CLASS_MAPPINGS
EXACT = dict(teacache_threshold=0.0, teacache_start_steps=1, teacache_end_steps=1, cfg_skip_ratio=0.0)


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    from easyanimate_core.demo import write_demo_model

    root = tmp_path_factory.mktemp("models")
    for variant in ("t2v", "inp", "camera"):
        write_demo_model(root / f"demo-{variant}", variant=variant)
    for name, file, section, key, value in (
            ("bad-vae", "vae/config.json", None, "spatial_group_norm", "false"),
            ("bad-scheduler", "scheduler/scheduler_config.json", None, "use_dynamic_shifting", "false"),
            ("bad-text-encoder", "text_encoder/config.json", "text_config", "hidden_act", "nope")):
        path = write_demo_model(root / name, variant="t2v") / file
        config = json.loads(path.read_text())
        (config[section] if section else config)[key] = value
        path.write_text(json.dumps(config))
    return root


def _run(node_id, **inputs):
    node = NODES[node_id]()
    return getattr(node, node.FUNCTION)(**inputs)


@pytest.fixture()
def loaded(comfyui):
    model, text_encoder, vae, _ = _run("EasyAnimateModelLoader", model="demo-inp", precision="fp32",
                                       memory_mode="model_cpu_offload", blocks_on_gpu=-1, weight_dtype="default")
    positive, negative = _run("EasyAnimateTextEncode", text_encoder=text_encoder, prompt="a cat", negative_prompt="")
    return dict(model=model, vae=vae, positive=positive, negative=negative)


def _sample(loaded, **changes):
    inputs = dict(loaded, width=48, height=32, frames=5, steps=2, guidance=6.0, seed=1, denoise_strength=1.0, **EXACT)
    inputs.update(changes)
    return _run("EasyAnimateSampler", **inputs)


@pytest.mark.parametrize("changes, message", [
    (dict(guidance=math.nan), "guidance = nan is not a finite number"),
    (dict(guidance=math.inf), "guidance = inf is not a finite number"),
    (dict(denoise_strength=math.nan), "strength = nan is not a finite number"),
    (dict(seed=-5), "seed = -5: expected an integer from 0"),
    (dict(seed=2**64), "seed = 18446744073709551616"),
    (dict(cfg_skip_ratio=math.inf), "cfg_skip_ratio = inf is not a finite number"),
    (dict(teacache_threshold=math.nan), "TeaCache threshold = nan"),
    (dict(width=100000), "100000x32 with 5 frames would need at least"),
    (dict(width=16384, height=16384, frames=49), "16384x16384 with 49 frames would need at least"),
])
def test_the_sampler_refuses_bad_numbers_and_sizes_before_any_step(comfyui, loaded, changes, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        _sample(loaded, **changes)
    assert comfyui["progress"] == [] and comfyui["freed"] == []


@pytest.mark.parametrize("changes, message", [
    (dict(seed=-1), "seed = -1"),
    (dict(width=100000, height=100000), "100000x100000 with 5 frames would need at least"),
])
def test_the_conditioning_node_refuses_them_too(comfyui, loaded, changes, message):
    inputs = dict(model=loaded["model"], positive=loaded["positive"], negative=loaded["negative"], vae=loaded["vae"],
                  width=48, height=32, frames=5, seed=1)
    inputs.update(changes)
    with pytest.raises(ValueError, match=message):
        _run("EasyAnimateConditioning", **inputs)
    assert comfyui["freed"] == []


def _demo_lora(path, model, pattern=r".*attn1\.to_q", blocks=None):
    """A LoRA (official format) for the demo transformer's linears matching ``pattern``; ``blocks`` renumbers
    them as if the model had more blocks."""
    import re

    import torch

    from easyanimate_core.lora import LoraLayer, save_lora

    layers = {}
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Linear) and re.fullmatch(pattern, name):
            layers[name] = LoraLayer(torch.full((2, m.in_features), 0.01), torch.full((m.out_features, 2), 0.01), 2.0)
    if blocks is not None:
        first = next(iter(layers.values()))
        layers = {f"transformer_blocks.{i}.attn1.to_q": LoraLayer(first.down.clone(), first.up.clone(), first.alpha)
                  for i in range(blocks)}
    return save_lora(path, layers)


@pytest.mark.parametrize("strength", [math.nan, math.inf, -math.inf])
def test_the_lora_loader_refuses_a_strength_that_is_no_finite_number(comfyui, loaded, tmp_path, strength):
    path = _demo_lora(tmp_path / "style.safetensors", loaded["model"].model.diffusion_model)
    with pytest.raises(ValueError, match=f"LoRA strength = {strength}"):
        _run("EasyAnimateLoraLoaderFromPath", model=loaded["model"], lora_path=str(path), strength=strength)


def test_the_lora_loader_refuses_damaged_and_mismatched_files_by_cause(comfyui, loaded, tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    transformer = loaded["model"].model.diffusion_model
    path = _demo_lora(tmp_path / "nan.safetensors", transformer)
    state = load_file(path)
    key = next(k for k in state if k.endswith("lora_up.weight"))
    state[key] = torch.full_like(state[key], float("nan"))
    save_file(state, path)
    with pytest.raises(ValueError, match=f"tensor '{key}' holds .* NaN or infinite values"):
        _run("EasyAnimateLoraLoaderFromPath", model=loaded["model"], lora_path=str(path), strength=1.0)

    deeper = _demo_lora(tmp_path / "deeper.safetensors", transformer, blocks=3)
    with pytest.raises(ValueError, match="layers for blocks up to 2.*at least 3 blocks.*with 2 blocks"):
        _run("EasyAnimateLoraLoaderFromPath", model=loaded["model"], lora_path=str(deeper), strength=1.0)

    stem = "lora_unet__transformer_blocks_0_attn1_to_q"
    width = transformer.config.inner_dim
    save_file({f"{stem}.lora_down.weight": torch.zeros(4, width), f"{stem}.lora_up.weight": torch.zeros(width, 2)},
              tmp_path / "ranks.safetensors")
    with pytest.raises(ValueError, match="their ranks do not match"):
        _run("EasyAnimateLoraLoaderFromPath", model=loaded["model"], lora_path=str(tmp_path / "ranks.safetensors"),
             strength=1.0)


@pytest.mark.parametrize("path, message", [("", "the path is empty"), ("   ", "the path is empty"),
                                           ("{folder}", "is a folder"), ("{folder}/none.txt", "does not exist")])
def test_the_pose_file_node_refuses_an_empty_path_and_a_folder(comfyui, tmp_path, path, message):
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        _run("EasyAnimateCameraPoseFile", path=path.format(folder=tmp_path), frames=0)


def test_a_camera_path_longer_than_the_frames_is_resampled_by_the_sampler_not_cut(comfyui, caplog):
    model, text_encoder, vae, _ = _run("EasyAnimateModelLoader", model="demo-camera", precision="fp32",
                                       memory_mode="model_cpu_offload", blocks_on_gpu=-1, weight_dtype="default")
    positive, negative = _run("EasyAnimateTextEncode", text_encoder=text_encoder, prompt="a cat", negative_prompt="")
    (pan,) = _run("EasyAnimateCameraPreset", preset="Pan Up", frames=17, speed=1.0, fx=0.53, fy=0.95)
    (latent,) = _sample(dict(model=model, vae=vae, positive=positive, negative=negative), camera=pan)
    assert latent["samples"].shape[2] == 2
    assert "The camera path has 17 poses and the video 5 frames: resampled to 5" in caplog.text


@pytest.mark.parametrize("coordinates, message", [
    ('[{"x": 5000, "y": 10}]', "point 1: expected a point on the 672x384 canvas"),
    ('[{"x": 10, "y": -300}]', "point 1: expected a point on the 672x384 canvas"),
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ('["[\\"[]\\"]"]', "nested too deeply"),
])
def test_the_trajectory_node_refuses_points_off_the_canvas_and_absurd_nesting(comfyui, coordinates, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        _run("EasyAnimateTrajectory", trajectory="", width=672, height=384, frames=49, coordinates=coordinates)


@pytest.mark.parametrize("folder, message", [
    ("bad-vae", "spatial_group_norm' = 'false' in .*bad-vae/vae/config.json: expected true or false"),
    ("bad-scheduler", "use_dynamic_shifting = 'false' in .*bad-scheduler/scheduler/scheduler_config.json"),
    ("bad-text-encoder", "text encoder config .*bad-text-encoder/text_encoder/config.json is not a Qwen2-VL config"),
])
def test_the_loader_checks_every_config_before_reading_a_weight(comfyui, monkeypatch, folder, message):
    import importlib

    loading = importlib.import_module(f"{pack.__name__}.easyanimate_core.loading")
    reads = []
    real = loading.read_tensors
    monkeypatch.setattr(loading, "read_tensors", lambda *a, **k: reads.append(1) or real(*a, **k))
    with pytest.raises(ValueError, match=message):
        _run("EasyAnimateModelLoader", model=folder, precision="fp32", memory_mode="model_cpu_offload",
             blocks_on_gpu=-1, weight_dtype="default")
    assert reads == []


def test_the_conditioning_node_refuses_a_mode_the_model_cannot_do_before_the_vae_moves(comfyui, loaded,
                                                                                       monkeypatch):
    import importlib

    import torch

    native = importlib.import_module(f"{pack.__name__}.nodes._native")
    moved = []
    monkeypatch.setattr(native, "load_on_device", lambda *a, **k: moved.append(a))
    with pytest.raises(ValueError, match="control needs a Control model"):
        _run("EasyAnimateConditioning", model=loaded["model"], positive=loaded["positive"],
             negative=loaded["negative"], vae=loaded["vae"], width=48, height=32, frames=5, seed=1,
             control_video=torch.rand(5, 32, 48, 3))
    assert moved == []


def test_comfyuis_own_lora_loader_gets_the_same_checks_on_an_easyanimate_model(comfyui, loaded):
    import nodes
    import torch
    from safetensors.torch import load_file, save_file

    transformer = loaded["model"].model.diffusion_model
    _demo_lora(comfyui["loras"] / "deeper.safetensors", transformer, blocks=3)
    good = _demo_lora(comfyui["loras"] / "good.safetensors", transformer)
    state = load_file(good)
    key = next(k for k in state if k.endswith("lora_down.weight"))
    state[key] = torch.full_like(state[key], float("inf"))
    save_file(state, comfyui["loras"] / "inf.safetensors")

    def core(name, strength=1.0):
        return nodes.LoraLoaderModelOnly().load_lora_model_only(loaded["model"], name, strength)

    with pytest.raises(ValueError, match="layers for blocks up to 2.*at least 3 blocks.*with 2 blocks"):
        core("deeper.safetensors")
    with pytest.raises(ValueError, match=f"tensor '{key}' holds .* NaN or infinite values"):
        core("inf.safetensors")
    with pytest.raises(ValueError, match="strength_model = nan is not a finite number"):
        core("good.safetensors", math.nan)
    (patched,) = core("good.safetensors")
    assert len(patched.patches) == 2
