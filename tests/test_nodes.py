"""The nodes through ComfyUI's V1 contract: declarations, a full graph run, and ComfyUI's hooks faked."""

from __future__ import annotations

import inspect
import json
import sys

import pytest
import torch
from conftest import load_pack
from fake_comfy import Interrupted as _Interrupted
from fake_comfy import install_fake_comfy

pack = load_pack()
NODES = pack.NODE_CLASS_MAPPINGS


@pytest.mark.parametrize("node_id", sorted(NODES))
def test_v1_contract(node_id):
    cls = NODES[node_id]
    assert node_id.startswith("EasyAnimate") and node_id in pack.NODE_DISPLAY_NAME_MAPPINGS
    spec = cls.INPUT_TYPES()
    assert set(spec) <= {"required", "optional", "hidden"}
    required, optional = spec.get("required", {}), spec.get("optional", {})
    for name, declaration in {**required, **optional}.items():
        assert isinstance(declaration, tuple) and 1 <= len(declaration) <= 2, name
        kind = declaration[0]
        assert isinstance(kind, (str, list)), f"{name}: a combo must be a list"
        if isinstance(kind, list):
            assert kind and all(isinstance(option, str) for option in kind), f"{name}: empty combo"
        assert declaration[1].get("tooltip"), f"{node_id}.{name} has no tooltip"
        if isinstance(kind, str) and kind in ("INT", "FLOAT") and "default" in declaration[1]:
            options = declaration[1]
            assert options.get("min", -float("inf")) <= options["default"] <= options.get("max", float("inf"))
    function = getattr(cls, cls.FUNCTION)
    params = inspect.signature(function).parameters
    names = [p for p in params if p != "self"]
    has_var_kw = any(p.kind is p.VAR_KEYWORD for p in params.values())
    assert [n for n in names if params[n].kind is not params[n].VAR_KEYWORD][: len(required)] == list(required)
    for name in optional:
        assert (name in params and params[name].default is None) or has_var_kw, f"{node_id}: optional {name}"
    assert len(cls.RETURN_TYPES) == len(cls.RETURN_NAMES) == len(cls.OUTPUT_TOOLTIPS)
    assert cls.CATEGORY.startswith("EasyAnimate") and cls.DESCRIPTION


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    from easyanimate_core.demo import write_demo_model

    root = tmp_path_factory.mktemp("models")
    for variant in ("inp", "control", "camera"):
        write_demo_model(root / f"demo-{variant}", variant=variant)
    return root


@pytest.fixture()
def no_comfy(monkeypatch, models_dir):
    monkeypatch.setenv("EASYANIMATE_MODELS_DIR", str(models_dir))
    for name in ("comfy", "comfy.utils", "comfy.model_management", "folder_paths"):
        monkeypatch.delitem(sys.modules, name, raising=False)


def _run(node_id, **inputs):
    node = NODES[node_id]()
    return getattr(node, node.FUNCTION)(**inputs)


def _graph(model_name, mode_inputs=None, steps=2, frames=5, seed=1):
    model, text_encoder, vae, info = _run("EasyAnimateModelLoader", model=model_name, precision="fp32",
                                          memory_mode="model_cpu_offload", blocks_on_gpu=0)
    (conditioning,) = _run("EasyAnimateTextEncode", text_encoder=text_encoder, prompt="a cat", negative_prompt="")
    (latent,) = _run("EasyAnimateSampler", model=model, vae=vae, conditioning=conditioning, width=48, height=32,
                     frames=frames, steps=steps, guidance=6.0, seed=seed, denoise_strength=1.0, **(mode_inputs or {}))
    (images,) = _run("EasyAnimateDecode", vae=vae, samples=latent, tile_size=0)
    return model, vae, info, latent, images


def test_loader_lists_folders_and_reports_the_variant(no_comfy):
    combo = NODES["EasyAnimateModelLoader"].INPUT_TYPES()["required"]["model"][0]
    assert combo == ["demo-camera", "demo-control", "demo-inp"]
    with pytest.raises(FileNotFoundError, match="Model folder 'nope' not found in .*Put the model folder"):
        _run("EasyAnimateModelLoader", model="nope", precision="fp32", memory_mode="full", blocks_on_gpu=0)


def test_text_to_video_and_image_to_video_graphs_run_without_comfyui(no_comfy):
    _, _, info, latent, images = _graph("demo-inp")
    assert "InP" in info
    assert latent["samples"].shape == (1, 16, 2, 4, 6)
    assert images.shape == (5, 32, 48, 3) and 0 <= images.min() and images.max() <= 1
    start = torch.rand(1, 32, 48, 3)
    _, _, _, i2v, _ = _graph("demo-inp", {"start_image": start})
    assert not torch.equal(i2v["samples"], latent["samples"])


def test_camera_and_trajectory_graphs(no_comfy):
    (pan,) = _run("EasyAnimateCameraPreset", preset="Pan Up", frames=5, speed=1.0, fx=0.53, fy=0.95)
    (left,) = _run("EasyAnimateCameraPreset", preset="Pan Left", frames=5, speed=1.0, fx=0.53, fy=0.95)
    (diagonal,) = _run("EasyAnimateCameraCombine", camera_1=pan, camera_2=left)
    (joined,) = _run("EasyAnimateCameraJoin", first=pan, second=left, frames=0)
    assert len(diagonal) == 5 and len(joined) == 10
    reference = torch.rand(1, 32, 48, 3)
    _, _, _, latent, _ = _graph("demo-camera", {"camera": diagonal, "reference_image": reference})
    assert latent["samples"].shape == (1, 16, 2, 4, 6)
    drawing = json.dumps({"version": 1, "tracks": [{"points": [[0.1, 0.1], [0.9, 0.9]]}]})
    trajectory, video = _run("EasyAnimateTrajectory", trajectory=drawing, width=48, height=32, frames=5)
    assert video.shape == (5, 32, 48, 3)
    _graph("demo-control", {"trajectory": trajectory, "reference_image": reference})
    with pytest.raises(ValueError, match="draw at least one track"):
        _run("EasyAnimateTrajectory", trajectory='{"version": 1, "tracks": []}', width=48, height=32, frames=5)


def test_a_mode_the_model_cannot_do_is_refused_before_any_work(no_comfy):
    (pan,) = _run("EasyAnimateCameraPreset", preset="Pan Up", frames=5, speed=1.0, fx=0.53, fy=0.95)
    with pytest.raises(ValueError, match="camera needs a Control-Camera model"):
        _graph("demo-control", {"camera": pan})


@pytest.fixture()
def fake_comfy(monkeypatch, models_dir, tmp_path):
    """Small stand-ins for the ComfyUI modules _comfy.py uses, recording what the nodes do with them."""
    record = {"progress": [], "freed": [], "interrupt_at": None, "checks": 0}

    def check():
        record["checks"] += 1
        if record["interrupt_at"] is not None and record["checks"] >= record["interrupt_at"]:
            raise _Interrupted("Processing interrupted")

    paths = {"EasyAnimate": [str(models_dir)], "loras": [str(tmp_path / "loras")]}
    install_fake_comfy(
        monkeypatch, on_progress=lambda *update: record["progress"].append(update), on_check=check,
        freed=record["freed"], models_dir=str(tmp_path), get_folder_paths=lambda name: list(paths[name]),
        add_model_folder_path=lambda name, path, is_default=False: paths.setdefault(name, []).append(path),
        get_filename_list=lambda name: sorted(p.name for p in (tmp_path / name).glob("*.safetensors")),
        get_full_path=lambda name, file: str(tmp_path / name / file))
    (tmp_path / "loras").mkdir()
    return record


def test_progress_is_reported_with_previews(fake_comfy):
    _graph("demo-inp", steps=3)
    sampler_updates = [p for p in fake_comfy["progress"] if p[1] == 3]
    assert sampler_updates == [(1, 3, True), (2, 3, True), (3, 3, True)]
    assert any(p[1] == 2 for p in fake_comfy["progress"])  # decode: one update per latent frame


def test_an_interrupt_stops_the_run_and_leaves_the_model_usable_and_unchanged(fake_comfy, tmp_path):
    from easyanimate_core.lora import LoraLayer, save_lora

    model, text_encoder, vae, _ = _run("EasyAnimateModelLoader", model="demo-inp", precision="fp32",
                                       memory_mode="model_cpu_offload", blocks_on_gpu=0)
    layers = {"proj_out": LoraLayer(torch.randn(2, model.transformer.config.inner_dim), torch.randn(64, 2), 2.0)}
    save_lora(tmp_path / "loras" / "style.safetensors", layers)
    assert NODES["EasyAnimateLoraLoader"].INPUT_TYPES()["required"]["lora_name"][0] == ["style.safetensors"]
    (with_lora,) = _run("EasyAnimateLoraLoader", model=model, lora_name="style.safetensors", strength=1.0)
    assert model.loras == () and len(with_lora.loras) == 1
    (conditioning,) = _run("EasyAnimateTextEncode", text_encoder=text_encoder, prompt="a cat", negative_prompt="")
    before = {k: v.clone() for k, v in model.transformer.state_dict().items()}
    args = dict(vae=vae, conditioning=conditioning, width=48, height=32, frames=5, steps=4, guidance=6.0, seed=1,
                denoise_strength=1.0)
    fake_comfy["interrupt_at"] = fake_comfy["checks"] + 2
    with pytest.raises(_Interrupted):
        _run("EasyAnimateSampler", model=with_lora, **args)
    assert [p[0] for p in fake_comfy["progress"] if p[1] == 4] == [1, 2]
    assert all(torch.equal(before[k], v) for k, v in model.transformer.state_dict().items())
    assert not any(m._forward_hooks for m in model.transformer.modules())
    assert {p.device.type for p in model.transformer.parameters()} == {"cpu"}
    fake_comfy["interrupt_at"] = None
    (plain,) = _run("EasyAnimateSampler", model=model, **args)
    (styled,) = _run("EasyAnimateSampler", model=with_lora, **args)
    (again,) = _run("EasyAnimateSampler", model=model, **args)
    assert torch.equal(plain["samples"], again["samples"])
    assert not torch.equal(plain["samples"], styled["samples"])


def test_decode_refuses_an_image_model_latent(no_comfy):
    _, _, vae, _ = _run("EasyAnimateModelLoader", model="demo-inp", precision="fp32", memory_mode="full",
                        blocks_on_gpu=0)
    with pytest.raises(ValueError, match=r"\(1, 4, 64, 64\).*EasyAnimate video latents"):
        _run("EasyAnimateDecode", vae=vae, samples={"samples": torch.zeros(1, 4, 64, 64)}, tile_size=0)
